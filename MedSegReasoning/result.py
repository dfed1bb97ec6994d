"""``result.json``: the versioned, documented record of one ``ask`` (see docs/result-schema.md).

It is written for people and programs that were not there: which input (by path and DICOM UIDs), which
prompt, which weights, what came out (per target: value in the mask, voxels, mL, key slice and key plane, the segmenter's
score, where and why propagation stopped) and how long each stage took. Bump ``SCHEMA_VERSION`` on any
change that breaks a reader, and document it.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .atomic import write_text_atomic
from .pipeline import TargetResult
from .segmentation.base import ModelIdentity, TargetWork
from .volume.core import Volume
from .volume.windowing import Window

SCHEMA = "medseg-reasoning/result"
SCHEMA_VERSION = 1


def build_result(
    volume: Volume,
    *,
    question: str | None,
    targets: Sequence[dict[str, Any]],
    window: Window,
    segmenter: ModelIdentity,
    timings: dict[str, float],
    outputs: dict[str, str | None],
    propagate: bool,
    warnings: Sequence[str] = (),
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The whole record; ``targets`` come from ``target_record`` or ``entity_target_record``; ``extra`` adds the
    optional sections (round, reasoner, answers, session) of a reasoner or session run."""
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "input": _input_record(volume),
        "question": question,
        "propagate": propagate,
        "window": {"name": window.name, "level": window.level, "width": window.width},
        "targets": list(targets),
        "timings_s": {k: round(v, 4) for k, v in timings.items()},
        "versions": {
            "medseg_reasoning": __version__,
            "python": platform.python_version(),
            "segmenter": {
                "name": segmenter.name,
                "weights": segmenter.weights,
                "sha256": segmenter.sha256,
                **segmenter.extra,
            },
        },
        "outputs": outputs,
        "warnings": list(warnings),
        **(extra or {}),
    }


def _input_record(volume: Volume) -> dict[str, Any]:
    g = volume.geometry
    record: dict[str, Any] = {
        "path": resolved_source_path(volume.source.path),
        "kind": volume.source.kind,
        "modality": volume.modality or None,
        "shape_ijk": list(volume.size_ijk),
        "spacing_mm": list(g.spacing),
        "origin_lps_mm": list(g.origin),
        "direction": [list(row) for row in g.direction],
        "content_sha256": volume.content_hash(),
        "study_instance_uid": None,
        "series_instance_uid": None,
        "frame_of_reference_uid": None,
    }
    if volume.source.dicom is not None:
        d = volume.source.dicom
        record.update(
            study_instance_uid=d.study_instance_uid,
            series_instance_uid=d.series_instance_uid,
            frame_of_reference_uid=d.frame_of_reference_uid,
        )
    return record


def resolved_source_path(path: str | None) -> str | None:
    """An absolute local path, or a URL (DICOMweb input) kept as it is."""
    if not path:
        return None
    return path if "://" in path else str(Path(path).resolve())


def target_record(volume: Volume, target: TargetResult) -> dict[str, Any]:
    """A target of the explicit-prompt path (``pipeline.segment_target``).

    ``key_slice`` is axial for every prompt (v1 readers take it so); ``key_plane`` says on which plane the prompt
    was placed (a coronal or sagittal key slice of the reasoner or the user).
    """
    record: dict[str, Any] = {
        "value": target.value,
        "label": target.label,
        "prompt": target.prompt.to_dict(),
        "voxels": target.voxels,
        "volume_ml": round(target.voxels * volume.voxel_volume_ml, 3),
        "key_slice": target.key_slice,
        "key_plane": {"orientation": target.prompt.orientation, "slice": target.prompt.k},
        "score": round(float(target.score), 4),
        "slice_range": None,
        "propagation": None,
    }
    record.update(work_fields(target.work))
    prop = target.propagation
    record["slice_range"] = _slice_range(target.mask)
    if prop is not None:
        record["propagation"] = {
            "orientation": prop.orientation,  # visited_slices count along this orientation's normal
            "visited_slices": prop.visited_slices,
            "stopped": prop.stop_reasons,
        }
    return record


def entity_target_record(volume: Volume, value: int, entity, mask, rnd) -> dict[str, Any]:
    """A target of a dialogue round: the entity it became, with its code, findings and judgment."""
    from .dialogue.entity import key_plane_json

    record_of_round = next((t for t in rnd.targets if t.entity_id == entity.id), None)
    voxels = int(mask.sum())
    return {
        "value": value,
        "label": entity.label,
        "entity_id": entity.id,
        "prompt": record_of_round.prompt if record_of_round else None,
        "voxels": voxels,
        "volume_ml": round(voxels * volume.voxel_volume_ml, 3),
        "key_slice": entity.key_slice,
        "key_plane": key_plane_json(entity.key_plane),
        "score": round(float(entity.score), 4) if entity.score is not None else None,
        "slice_range": _slice_range(mask),
        "status": record_of_round.status if record_of_round else None,
        "terminology": entity.terminology.to_dict(),
        "findings": entity.findings,
        "uncertainty": list(entity.uncertainty),
        "ref": entity.ref,
        "relation": entity.relation,
        "propagation": None,
        **work_fields(TargetWork.from_dict(record_of_round.work) if record_of_round else None),
    }


WORK_FIELDS = ("encoder_calls", "embedding_cache_hits", "segmented_slices", "interpolated_slices")


def work_fields(work: TargetWork | None) -> dict[str, int | None]:
    """A target's segmenter counts (``segmentation.base.TargetWork``) as result.json fields; null where unknown."""
    return dict(work.to_dict()) if work is not None else dict.fromkeys(WORK_FIELDS)


def _slice_range(mask) -> list[int] | None:
    ks = mask.any(axis=(1, 2)).nonzero()[0]
    return [int(ks[0]), int(ks[-1])] if ks.size else None


def write_result(path: Path, result: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(result, indent=2, allow_nan=False) + "\n")
