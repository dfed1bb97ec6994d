"""What a session records besides its entities: the volume it is about (by path and content hash, never by copy),
the targets and judgments of each round, and the user's edits between rounds; with their JSON forms.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..volume.core import Geometry, Volume
from .entity import Color, Entity
from .judgment import Judgment

# distinct colours for a second entity of a type whose terminology colour is taken (Slicer's generic palette)
PALETTE: tuple[Color, ...] = (
    (241, 214, 145),
    (177, 122, 101),
    (111, 184, 210),
    (216, 101, 79),
    (221, 130, 101),
    (144, 238, 144),
    (192, 104, 88),
    (220, 245, 20),
    (78, 63, 0),
    (255, 250, 220),
    (230, 220, 70),
    (200, 200, 235),
)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class VolumeRecord:
    """Which volume a session belongs to: where it was read from, and the hash that identifies its content."""

    path: str
    content_hash: str
    shape: tuple[int, int, int]
    geometry: Geometry
    modality: str = ""
    # The source series' DICOM identity ("" when unknown or not DICOM): export checks that a DICOM-SEG or SR made
    # from this session references the series the masks were drawn on, not merely one with the same voxels.
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    frame_of_reference_uid: str = ""

    @staticmethod
    def of(volume: Volume, path: str | Path | None = None) -> VolumeRecord:
        where = str(path) if path and "://" in str(path) else str(Path(path).resolve()) if path else volume.source.path
        dicom = volume.source.dicom
        return VolumeRecord(
            where,
            volume.content_hash(),
            volume.shape,
            volume.geometry,
            volume.modality,
            study_instance_uid=dicom.study_instance_uid if dicom else "",
            series_instance_uid=dicom.series_instance_uid if dicom else "",
            frame_of_reference_uid=dicom.frame_of_reference_uid if dicom else "",
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "content_sha256": self.content_hash,
            "shape_kji": list(self.shape),
            "origin_lps_mm": list(self.geometry.origin),
            "spacing_mm": list(self.geometry.spacing),
            "direction": [list(r) for r in self.geometry.direction],
            "modality": self.modality,
            "dicom": self._dicom_dict(),
        }

    def _dicom_dict(self) -> dict[str, Any] | None:
        uids = {
            "study_instance_uid": self.study_instance_uid or None,
            "series_instance_uid": self.series_instance_uid or None,
            "frame_of_reference_uid": self.frame_of_reference_uid or None,
        }
        return uids if any(uids.values()) else None

    @staticmethod
    def from_dict(d: dict[str, Any]) -> VolumeRecord:
        dicom = d.get("dicom") or {}
        return VolumeRecord(
            path=str(d["path"]),
            content_hash=str(d["content_sha256"]),
            shape=tuple(int(x) for x in d["shape_kji"]),  # type: ignore[arg-type]  # to_dict writes a 3-D shape; not re-checked on load
            geometry=Geometry.from_arrays(d["origin_lps_mm"], d["spacing_mm"], d["direction"]),
            modality=str(d.get("modality", "")),
            study_instance_uid=str(dicom.get("study_instance_uid") or ""),
            series_instance_uid=str(dicom.get("series_instance_uid") or ""),
            frame_of_reference_uid=str(dicom.get("frame_of_reference_uid") or ""),
        )


@dataclass
class TargetRecord:
    """One target of a round: what was asked for, what it referred to, every judgment, and what came of it."""

    label: str
    prompt: dict[str, Any]
    ref: str | None = None  # resolved entity id
    ref_text: str | None = None  # as the reasoner wrote it
    relation: str | None = None
    redo: str | None = None
    status: str = "pending"  # accepted | uncertain | failed | clarification
    entity_id: str | None = None
    judgments: list[Judgment] = field(default_factory=list)
    error: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    work: dict[str, int] = field(default_factory=dict)  # segmentation.base.TargetWork.to_dict(); {} when unknown

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "prompt": self.prompt,
            "ref": self.ref,
            "ref_text": self.ref_text,
            "relation": self.relation,
            "redo": self.redo,
            "status": self.status,
            "entity_id": self.entity_id,
            "judgments": [j.to_dict() for j in self.judgments],
            "error": self.error,
            "timings": self.timings,
            "work": self.work,
        }

    @staticmethod
    def from_dict(d: dict[str, Any]) -> TargetRecord:
        return TargetRecord(
            label=d["label"],
            prompt=d["prompt"],
            ref=d.get("ref"),
            ref_text=d.get("ref_text"),
            relation=d.get("relation"),
            redo=d.get("redo"),
            status=d["status"],
            entity_id=d.get("entity_id"),
            judgments=[Judgment.from_dict(j) for j in d.get("judgments", [])],
            error=d.get("error", ""),
            timings=dict(d.get("timings", {})),
            work=dict(d.get("work") or {}),
        )


@dataclass
class Round:
    """One question and its answer. ``superseded`` holds entity versions this round replaced (for undo)."""

    index: int
    question: str
    reasoning: str = ""
    targets: list[TargetRecord] = field(default_factory=list)
    references: list[dict[str, Any]] = field(default_factory=list)
    clarification: dict[str, Any] | None = None
    created: list[str] = field(default_factory=list)
    superseded: list[Entity] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    started: str = ""
    finished: str = ""
    # role (segmenter, reasoner) -> identity used this round
    models: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def judgments(self) -> list[Judgment]:
        return [j for t in self.targets for j in t.judgments]


@dataclass
class EditRecord:
    """A user action between rounds."""

    kind: str  # mask | rename | recolor | review | delete
    entity_id: str
    after_round: int
    time: str
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "entity_id": self.entity_id,
            "after_round": self.after_round,
            "time": self.time,
            "detail": self.detail,
        }

    @staticmethod
    def from_dict(d: dict[str, Any]) -> EditRecord:
        return EditRecord(d["kind"], d["entity_id"], int(d["after_round"]), d["time"], dict(d.get("detail", {})))
