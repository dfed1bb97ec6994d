"""What an export writes, whatever it came from: the volume's grid, one segment per structure, who made them.

A session folder and an ``ask`` result folder hold the same things in different shapes; ``sources.py`` turns
either into an ``ExportSet`` and every writer (SEG, SR, .seg.nrrd, NIfTI) reads only this. Segment numbers are
fixed here, once, so the SEG's segment n, the SR's referenced segment n, the label value n of the NIfTI and the
``.seg.nrrd`` are the same structure.

Measurements are recomputed from the mask and the geometry (``dialogue.findings.measure``), never copied from a
record, so what the SR reports is what the exported mask measures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .. import __version__
from ..terminology.codes import Code, CodedTerminology
from ..volume.core import Geometry, Volume
from .dicom_seg import DEFAULT_COLORS, TISSUE, AlgorithmInfo, SegmentSpec

Color = tuple[int, int, int]


@dataclass(frozen=True)
class ModelNames:
    """The models behind the masks: the reasoner that placed the prompts (None for a user's own prompts) and the
    segmenter that drew them. ``*_version`` is a revision or weights digest, when known."""

    reasoner: str | None = None
    segmenter: str | None = None
    reasoner_version: str = ""
    segmenter_version: str = ""

    @property
    def algorithm_name(self) -> str:
        """``MedSegReasoning (reasoner + segmenter)``: what a viewer shows as the algorithm."""
        parts = [p for p in (self.reasoner, self.segmenter) if p]
        return f"MedSegReasoning ({' + '.join(parts)})" if parts else "MedSegReasoning"

    @property
    def algorithm_version(self) -> str:
        parts = [__version__]
        if self.reasoner_version:
            parts.append(f"reasoner {self.reasoner_version}")
        if self.segmenter_version:
            parts.append(f"segmenter {self.segmenter_version}")
        return "; ".join(parts)

    def algorithm(self) -> AlgorithmInfo:
        """For the SEG: the name and version are cut to 64 characters there, so the full names go in parameters."""
        parameters = {"software": f"medseg-reasoning {__version__}"}
        if self.reasoner:
            parameters["reasoner"] = f"{self.reasoner} {self.reasoner_version}".strip()
        if self.segmenter:
            parameters["segmenter"] = f"{self.segmenter} {self.segmenter_version}".strip()
        return AlgorithmInfo(self.algorithm_name, self.algorithm_version, parameters)

    @property
    def observer_name(self) -> str:
        """The device observer of the SR: the reasoner where one placed the prompts, else the segmenter."""
        return self.reasoner or self.segmenter or "MedSegReasoning"


@dataclass(frozen=True)
class RoundText:
    """A dialogue round's question and the reasoner's reasoning, as the SR quotes them."""

    index: int
    question: str
    reasoning: str = ""


@dataclass(frozen=True)
class ExportSegment:
    """One structure: number (SEG segment, label value), entity id (SR tracking id), mask and description."""

    number: int
    entity_id: str
    name: str
    mask: np.ndarray  # bool [k, j, i] on ExportSet.shape
    terminology: CodedTerminology
    color: Color
    automatic: bool  # the reasoner placed the prompt and nobody edited the mask
    tracking_uid: str
    review: str = "proposed"
    edited: bool = False
    round: int | None = None
    findings: str = ""
    key_slice: int | None = None
    volume_ml: float = 0.0
    max_diameter_mm: float | None = None

    @property
    def confirmed(self) -> bool:
        return self.review == "confirmed"

    def seg_spec(self) -> SegmentSpec:
        t = self.terminology
        return SegmentSpec(
            number=self.number,
            label=self.name,
            mask=self.mask,
            category=Code.of(t.category) or TISSUE,
            type=Code.of(t.type) or TISSUE,
            semiautomatic=not self.automatic,
            color=self.color,
            modifier=Code.of(t.modifier),
            region=Code.of(t.region),
            region_modifier=Code.of(t.region_modifier) if t.region is not None else None,
            tracking_id=self.entity_id,
            tracking_uid=self.tracking_uid,
        )


@dataclass
class ExportSet:
    """Everything the writers need. ``volume`` is the re-read, checked source (None until DICOM output needs it)."""

    origin: str  # the session or result folder
    kind: str  # session | result
    source_path: str  # where the image came from (a folder, file or DICOMweb URL)
    shape: tuple[int, int, int]
    geometry: Geometry
    modality: str
    segments: tuple[ExportSegment, ...]
    models: ModelNames
    rounds: tuple[RoundText, ...] = ()
    left_out: tuple[str, ...] = ()  # entities not exported, and why (e.g. "E3 (rejected)")
    content_hash: str | None = None
    recorded_uids: dict[str, str] = field(default_factory=dict)
    volume: Volume | None = None

    @property
    def all_confirmed(self) -> bool:
        return bool(self.segments) and all(s.confirmed for s in self.segments)

    def seg_specs(self) -> list[SegmentSpec]:
        return [s.seg_spec() for s in self.segments]


def default_color(index: int) -> Color:
    return DEFAULT_COLORS[index % len(DEFAULT_COLORS)]


def layers(masks: Sequence[np.ndarray]) -> list[int]:
    """Layer of each mask so that masks sharing a layer never overlap (first fit, in order): Slicer's shared
    labelmaps, and the NIfTI files needed when segments overlap."""
    assigned: list[int] = []
    occupied: list[np.ndarray] = []
    for mask in masks:
        mask = np.asarray(mask, dtype=bool)
        for layer, taken in enumerate(occupied):
            if not (taken & mask).any():
                taken |= mask
                assigned.append(layer)
                break
        else:
            occupied.append(mask.copy())
            assigned.append(len(occupied) - 1)
    return assigned
