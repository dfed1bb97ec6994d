"""Multi-round dialogue: entities that outlive their round, references to them, judgment, findings, saved sessions.

Pure numpy/scipy (no torch): the server and the Slicer side can import it. The reasoner plugs in through
``rounds.Planner`` / ``rounds.RoundPlan``; the segmenter through the ``Segmenter`` protocol.
"""

from __future__ import annotations

from .correction_loop import Outcome, judge_and_correct
from .entity import REVIEW_STATES, Entity
from .findings import Measurements, findings_text, measure
from .judgment import Candidate, Check, Expectation, Judgment, JudgmentConfig, judge
from .records import EditRecord, Round, TargetRecord, VolumeRecord
from .references import Clarification, Resolution, find_references, infer_relation, resolve_reference
from .restore import load_session, open_session
from .rounds import RoundConfig, RoundPlan, TargetSpec, plan_from_answer, run_round, segment_candidate
from .session import Session
from .spatial import SpatialRelation, spatial_relation
from .store import save_session

__all__ = [
    "REVIEW_STATES",
    "Candidate",
    "Check",
    "Clarification",
    "EditRecord",
    "Entity",
    "Expectation",
    "Judgment",
    "JudgmentConfig",
    "Measurements",
    "Outcome",
    "Resolution",
    "Round",
    "RoundConfig",
    "RoundPlan",
    "Session",
    "SpatialRelation",
    "TargetRecord",
    "TargetSpec",
    "VolumeRecord",
    "find_references",
    "findings_text",
    "infer_relation",
    "judge",
    "judge_and_correct",
    "load_session",
    "measure",
    "open_session",
    "plan_from_answer",
    "resolve_reference",
    "run_round",
    "save_session",
    "segment_candidate",
    "spatial_relation",
]
