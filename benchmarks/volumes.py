"""Benchmark: the 3D mask a clinician takes home, measured as the field measures it (simulated user, real cases).

Runs ``eval``'s interactive protocol (``MedSegReasoning.evaluation.interactive``: one box from the reference on
its largest slice, then up to 5 corrections where the 3D error is largest) on the cases of
``evaluation.volume_cases`` (the real abdominal CT at full resolution and resampled to 3 mm, the MNI152 template at
2 mm oblique and flipped, at 4 mm, and at 3 mm), for each *variant* of the propagation settings in the same run:

- ``previous``: the propagation as it was before this benchmark existed (no zoom on the key slice);
- ``current``: the defaults (``PropagationConfig()``);
- ``skip2``: the defaults with skip-and-interpolate (every 2nd slice encoded where neighbours agree).

Per structure: key-slice 2D Dice, initial and final 3D Dice, NSD (2 mm), DSC_AUC and NSD_AUC, encoder calls and
wall time; means per group (CT organs and vessels; brain; CT tracked: bones, muscles, ribs). Speed: the whole brain
of the 4 mm MNI series with and without skip-and-interpolate against one encoder call measured in the same run;
a second segmentation of the same structure from a fresh process-like segmenter reading the disk store (encoder
calls counted). Writes ``--json``.

    .venv/bin/python benchmarks/volumes.py [--cases ct,mni-4mm] [--variants previous,current] [--corrections 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from MedSegReasoning.evaluation.interactive import run_interactive  # noqa: E402
from MedSegReasoning.evaluation.layouts import read_folder  # noqa: E402
from MedSegReasoning.evaluation.volume_cases import CASE_NAMES, build_cases  # noqa: E402
from MedSegReasoning.propagation import DEFAULT_PROPAGATION, PropagationConfig  # noqa: E402
from MedSegReasoning.segmentation.factory import create_segmenter  # noqa: E402
from MedSegReasoning.volume import default_window, render_slice  # noqa: E402

SHARED_CT = ROOT.parent / "shared" / "data" / "ct-abdomen-dicom"
VARIANTS: dict[str, PropagationConfig] = {
    "previous": replace(DEFAULT_PROPAGATION, key_zoom_below_px=0.0, zoom_below_px=0.0),
    "current": DEFAULT_PROPAGATION,
    "skip2": replace(DEFAULT_PROPAGATION, skip=2),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASE_NAMES))
    parser.add_argument("--variants", default="previous,current")
    parser.add_argument("--corrections", type=int, default=5)
    parser.add_argument("--tracked", action="store_true", help="also the CT's bones, muscles and ribs")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "_output" / "volume-cases")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "_output" / "volumes.json")
    args = parser.parse_args()
    names = tuple(n for n in args.cases.split(",") if n)
    dataset = build_cases(args.work, SHARED_CT if (SHARED_CT / "dicom").is_dir() else None, names)
    variants = [v for v in args.variants.split(",") if v]
    with tempfile.TemporaryDirectory(prefix="medseg-store-") as store:
        segmenter = create_segmenter("litemedsam", embedding_store=store, cache_bytes=3 * 2**30)
        encoder_s = _encoder_seconds(segmenter, dataset)
        rows = _interactive_rows(segmenter, dataset, variants, args.corrections, args.tracked)
        speed = _speed(dataset, store, encoder_s) if "mni-4mm" in names else None
    report = {
        "machine": {"platform": platform.platform(), "processor": platform.processor()},
        "encoder_s": encoder_s,
        "corrections": args.corrections,
        "rows": rows,
        "summary": summarise(rows, variants),
        "speed": speed,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    print_summary(report)
    return 0


def _encoder_seconds(segmenter, dataset: Path) -> float:
    """One uncached encoder call on this machine now (median of 3): the unit the speed goals are stated in."""
    unit = next(iter(read_folder(dataset)))
    volume = unit.load().volume
    window = default_window(volume)
    times = []
    for k in range(3):
        t0 = time.perf_counter()
        segmenter.set_image(render_slice(volume, k % volume.shape[0], window), cache_key=None)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _interactive_rows(segmenter, dataset: Path, variants: list[str], corrections: int, tracked: bool) -> list[dict]:
    rows = []
    for unit in read_folder(dataset):
        if unit.category == "tracked" and not tracked:
            continue
        case = unit.load()
        truth = case.turns[0].truth
        window = default_window(case.volume)
        for variant in variants:
            t0 = time.perf_counter()
            result = run_interactive(
                case.volume, segmenter, window, truth, corrections=corrections, config=VARIANTS[variant]
            )
            record = result.to_dict(corrections)
            record.pop("interactions")
            rows.append({"id": unit.id, "group": _group(unit), "variant": variant, **record})
            print(
                f"{unit.id:42} {variant:9} key {record['key_slice_dice']:.3f} 3D {record['initial_dice']:.3f} -> "
                f"{record['final_dice']:.3f} auc {record['dsc_auc']:.2f} enc {record['encoder_calls']:3d} "
                f"{time.perf_counter() - t0:5.1f}s",
                flush=True,
            )
    return rows


def _group(unit) -> str:
    if unit.category == "tracked":
        return "ct-tracked"
    return "brain" if unit.id.startswith("mni") else "ct-goal"


def summarise(rows: list[dict], variants: list[str]) -> dict:
    """Means per variant and group, and the goals' checks (key-slice ratios, corrections that lowered Dice)."""
    out: dict[str, dict] = {}
    for variant in variants:
        mine = [r for r in rows if r["variant"] == variant]
        entry: dict[str, object] = {}
        for group in ("ct-goal", "brain", "ct-tracked"):
            sel = [r for r in mine if r["group"] == group]
            if sel:
                entry[group] = {
                    k: float(np.mean([r[k] for r in sel]))
                    for k in ("key_slice_dice", "initial_dice", "final_dice", "dsc_auc", "nsd_auc", "encoder_calls")
                } | {"n": len(sel)}
        goal_rows = [r for r in mine if r["group"] in ("ct-goal", "brain")]
        full_res = [r for r in goal_rows if not r["id"].startswith(("ct-3mm", "mni-3mm"))]
        entry["lowered_by_a_correction"] = [
            r["id"] for r in goal_rows if any(b < a - 1e-9 for a, b in zip(r["dice_curve"], r["dice_curve"][1:], strict=False))
        ]
        entry["ct_3d_over_key"] = {
            r["id"]: r["initial_dice"] / r["key_slice_dice"] if r["key_slice_dice"] else None
            for r in mine
            if r["group"] == "ct-goal"
        }
        entry["key_good_3d_below_0.7"] = [
            r["id"] for r in full_res if r["key_slice_dice"] >= 0.85 and r["initial_dice"] < 0.70
        ]
        entry["low_resolution_key_gap"] = _low_res_gaps(mine)
        out[variant] = entry
    return out


def _low_res_gaps(rows: list[dict]) -> dict[str, float]:
    """Key-slice 2D Dice at full resolution minus at low resolution, per structure (goal: <= 0.05)."""
    from MedSegReasoning.evaluation.volume_cases import LOW_RESOLUTION_PAIRS

    by_id = {r["id"]: r for r in rows}
    gaps = {}
    for low, full in LOW_RESOLUTION_PAIRS.items():
        for r in rows:
            if r["id"].startswith(low + "/"):
                other = by_id.get(full + "/" + r["id"].split("/", 1)[1])
                if other is not None:
                    gaps[r["id"]] = other["key_slice_dice"] - r["key_slice_dice"]
    return gaps


def _speed(dataset: Path, store: str, encoder_s: float) -> dict:
    """Whole brain of the 4 mm series: full propagation against skip-and-interpolate, each from an empty memory
    cache and an empty store, and a second run reading the store."""
    from MedSegReasoning.dialogue import segment_candidate
    from MedSegReasoning.evaluation.metrics import dice
    from MedSegReasoning.evaluation.runner import truth_prompt

    unit = next(u for u in read_folder(dataset) if u.id == "mni-4mm/whole brain")
    case = unit.load()
    truth = case.turns[0].truth
    window = default_window(case.volume)
    prompt = truth_prompt(truth)
    out: dict[str, dict] = {}
    for name, config in (("full", DEFAULT_PROPAGATION), ("skip2", replace(DEFAULT_PROPAGATION, skip=2))):
        with tempfile.TemporaryDirectory(prefix="medseg-store-") as fresh:
            segmenter = create_segmenter("litemedsam", embedding_store=fresh)
            t0 = time.perf_counter()
            candidate = segment_candidate(case.volume, segmenter, window, prompt, True, "speed", config)
            seconds = time.perf_counter() - t0
            mask = candidate.mask.to_dense(case.volume.shape)
            out[name] = {
                "seconds": seconds,
                "encoder_calls": segmenter.stats.encoder_calls,
                "dice": dice(mask, truth),
                "slices": int(mask.any(axis=(1, 2)).sum()),
            }
            again = create_segmenter("litemedsam", embedding_store=fresh)
            t0 = time.perf_counter()
            segment_candidate(case.volume, again, window, prompt, True, "speed", config)
            out[name]["second_run_seconds"] = time.perf_counter() - t0
            out[name]["second_run_encoder_calls"] = again.stats.encoder_calls
            out[name]["second_run_store_hits"] = again.stats.store_hits
    out["encoder_s"] = {"seconds": encoder_s}
    return out


def print_summary(report: dict) -> None:
    for variant, entry in report["summary"].items():
        for group in ("ct-goal", "brain", "ct-tracked"):
            if group in entry:
                g = entry[group]
                print(
                    f"{variant:9} {group:10} n={g['n']:2d} key {g['key_slice_dice']:.3f} initial {g['initial_dice']:.3f} "
                    f"final {g['final_dice']:.3f} DSC_AUC {g['dsc_auc']:.2f} NSD_AUC {g['nsd_auc']:.2f}"
                )
        print(f"{variant:9} lowered by a correction: {entry['lowered_by_a_correction']}")
    if report["speed"]:
        s = report["speed"]
        enc = report["encoder_s"]
        for name in ("full", "skip2"):
            x = s[name]
            print(
                f"whole brain 4 mm {name:5}: {x['encoder_calls']} encoder calls, {x['seconds']:.1f} s "
                f"({x['seconds'] / enc:.1f}x one encoder call), Dice {x['dice']:.3f}; second run "
                f"{x['second_run_encoder_calls']} encoder calls, {x['second_run_store_hits']} store hits"
            )


if __name__ == "__main__":
    sys.exit(main())
