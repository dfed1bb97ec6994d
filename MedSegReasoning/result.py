"""``result.json``: the versioned, documented record of one ``ask`` (see docs/result-schema.md).

It is written for people and programs that were not there: which input (by path and DICOM UIDs), which
prompt, which weights, what came out (per target: value in the mask, voxels, mL, key slice, the segmenter's
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
from .segmentation.base import ModelIdentity
from .volume.core import Volume
from .volume.windowing import Window

SCHEMA = "medseg-reasoning/result"
SCHEMA_VERSION = 1


def build_result(
    volume: Volume,
    *,
    question: str | None,
    targets: Sequence[TargetResult],
    window: Window,
    segmenter: ModelIdentity,
    timings: dict[str, float],
    outputs: dict[str, str | None],
    propagate: bool,
    warnings: Sequence[str] = (),
) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "input": _input_record(volume),
        "question": question,
        "propagate": propagate,
        "window": {"name": window.name, "level": window.level, "width": window.width},
        "targets": [_target_record(volume, t) for t in targets],
        "timings_s": {k: round(v, 4) for k, v in timings.items()},
        "versions": {
            "medseg_reasoning": __version__,
            "python": platform.python_version(),
            "segmenter": {"name": segmenter.name, "weights": segmenter.weights, "sha256": segmenter.sha256, **segmenter.extra},
        },
        "outputs": outputs,
        "warnings": list(warnings),
    }


def _input_record(volume: Volume) -> dict[str, Any]:
    g = volume.geometry
    record: dict[str, Any] = {
        "path": str(Path(volume.source.path).resolve()) if volume.source.path else None,
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


def _target_record(volume: Volume, target: TargetResult) -> dict[str, Any]:
    record: dict[str, Any] = {
        "value": target.value,
        "label": target.label,
        "prompt": target.prompt.to_dict(),
        "voxels": target.voxels,
        "volume_ml": round(target.voxels * volume.voxel_volume_ml, 3),
        "key_slice": target.prompt.k,
        "score": round(float(target.score), 4),
        "slice_range": None,
        "propagation": None,
    }
    prop = target.propagation
    ks = target.mask.any(axis=(1, 2)).nonzero()[0]
    if ks.size:
        record["slice_range"] = [int(ks[0]), int(ks[-1])]
    if prop is not None:
        record["propagation"] = {
            "visited_slices": prop.visited_slices,
            "stopped": prop.stop_reasons,
        }
    return record


def write_result(path: Path, result: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(result, indent=2, allow_nan=False) + "\n")
