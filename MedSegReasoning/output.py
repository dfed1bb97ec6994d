"""The files an ``ask`` leaves in ``--out``: label map, DICOM-SEG, overview.png and result.json, written as one set.

All of them are staged and moved into place together (``atomic.staged_outputs``), so a failure never leaves a
half-written file or a mix of old and new results. A DICOM source that a SEG cannot reference (blank study or
series UIDs) costs only the SEG: the label map and result.json are still written, with a warning saying why.
The overview picture is a convenience: if drawing it fails, the run logs and records a warning and writes the rest.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import PROG, __version__
from .wire.errors import InputError

log = logging.getLogger(__name__)

OUTPUT_FILES = ("mask.nii.gz", "seg.dcm", "overview.png", "result.json")  # what an ask may write into --out


def write_ask_outputs(
    volume,
    segments: Sequence,
    records: Sequence[dict[str, Any]],
    options,
    window,
    identity,
    timings: dict[str, float],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``mask.nii.gz`` (value n = segment n; where segments overlap the later one wins: the SEG keeps
    both), ``seg.dcm`` for DICOM input, ``overview.png`` and ``result.json`` into ``options.out``; returns the
    result record."""
    from .atomic import staged_outputs
    from .export.dicom_seg import (
        AlgorithmInfo,
        SourceNotReferenceableError,
        read_source_headers_with_uids,
        write_dicom_seg,
    )
    from .result import build_result, write_result
    from .volume.itk_io import write_label_image

    t0 = time.perf_counter()
    labelmap = np.zeros(volume.shape, dtype=np.uint8)
    for spec in segments:
        labelmap[spec.mask] = spec.number
    outputs: dict[str, str | None] = {"mask": "mask.nii.gz", "seg": None, "overview": None, "result": "result.json"}
    from .volume.finite import non_finite_warning

    warnings: list[str] = [w for w in (non_finite_warning(volume),) if w]
    with staged_outputs(options.out) as staging:
        write_label_image(staging / "mask.nii.gz", labelmap, volume.geometry)
        if volume.source.dicom is not None and segments:
            algorithm = AlgorithmInfo(identity.name, f"{__version__} weights sha256:{identity.sha256[:12]}")
            try:
                headers, assigned = read_source_headers_with_uids(volume, getattr(options, "assign_uids", False))
                if assigned is not None and assigned.assigned:  # recorded, so the user can find them again
                    extra = {**(extra or {}), "assigned_uids": assigned.to_dict()}
                write_dicom_seg(volume, segments, staging / "seg.dcm", algorithm, source=headers)
                outputs["seg"] = "seg.dcm"
            except SourceNotReferenceableError as exc:  # the mask is still good: keep it, say why no SEG
                warnings.append(f"no seg.dcm: {exc}")
        if _write_overview(staging / "overview.png", volume, segments, records, window, warnings):
            outputs["overview"] = "overview.png"
        timings["export_s"] = time.perf_counter() - t0
        result = build_result(
            volume,
            question=options.question,
            targets=records,
            window=window,
            segmenter=identity,
            timings=timings,
            outputs=outputs,
            propagate=options.propagate,
            warnings=warnings,
            extra=extra,
        )
        write_result(staging / "result.json", result)
    return result


def _write_overview(path, volume, segments: Sequence, records: Sequence[dict[str, Any]], window, warnings) -> bool:
    """Draw ``overview.png``; a failure is only a warning, because the masks and result.json matter more."""
    try:
        from .overview import OverviewTarget, render_overview

        targets = [OverviewTarget(spec.label, spec.mask, spec.color) for spec in segments]
        key_slice = records[0].get("key_slice") if records else None
        render_overview(volume, window, targets, key_slice).save(path, format="PNG")
        return True
    except Exception as exc:  # any drawing problem: the masks and result.json must still be written
        path.unlink(missing_ok=True)
        log.warning("no overview.png: %s", exc)
        log.debug("overview.png failed", exc_info=True)
        warnings.append(f"no overview.png: {exc}")
        return False


def print_summary(result: dict, out: Path) -> None:
    """What a user reads after ``ask``: per target its size and extent, why propagation stopped, findings."""
    for t in result["targets"]:
        rng = t["slice_range"] or ["-", "-"]
        name = f"{t['entity_id']} {t['label']}" if t.get("entity_id") else t["label"]
        score = f", score {t['score']:.2f}" if t.get("score") is not None else ""
        print(
            f"{name}: {t['voxels']} voxels, {t['volume_ml']:.1f} mL, slices {rng[0]}-{rng[1]}, "
            f"key slice {t['key_slice']}{score}"
        )
        if t.get("findings"):
            print(f"  {t['findings']}")
        if t["propagation"]:
            for direction, why in t["propagation"]["stopped"].items():
                print(f"  propagation {direction} stopped{' at' if why.startswith('slice ') else ':'} {why}")
    written = [name for name in result["outputs"].values() if name]
    print(f"wrote {', '.join(written)} to {out}")
    if result.get("assigned_uids"):
        from .export.assigned_uids import describe_record

        print(f"  {describe_record(result['assigned_uids'])}; seg.dcm references them (result.json: assigned_uids)")
    for warning in result["warnings"]:
        print(f"{PROG}: warning: {warning}", file=sys.stderr)


def prepare_out_dir(out: Path, force: bool) -> None:
    """Refuse to mix results into a non-empty folder unless asked to (nothing is deleted either way)."""
    from .atomic import STAGING_PREFIX

    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file: give a folder.")
    # a hidden staging folder is the leftover of a run that was killed mid-write: never a result, never in the way
    if out.is_dir() and any(not p.name.startswith(STAGING_PREFIX) for p in out.iterdir()) and not force:
        raise InputError(
            f"the output folder {out} is not empty: choose another --out, or add --force to write into it."
        )
    for name in OUTPUT_FILES:  # checked now, so a model never runs for outputs that could not be put in place
        if (out / name).is_dir() and not (out / name).is_symlink():
            raise InputError(
                f"{out} holds a folder named {name} where this run writes a file: move or rename that folder, "
                "or choose another --out."
            )
    out.mkdir(parents=True, exist_ok=True)
