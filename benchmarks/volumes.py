"""Benchmark: the 3D mask a clinician takes home, measured as the field measures it (simulated user, real cases).

Runs ``medseg-reasoning eval --mode interactive`` (``evaluation.runner.run_eval``, the same code path and records:
one box from the reference on its largest slice, then up to 5 corrections where the 3D error is largest,
``evaluation.interactive``) on the cases of ``evaluation.volume_cases`` (the real abdominal CT at full resolution and
resampled to 3 mm, the MNI152 template at 2 mm oblique and flipped, at 4 mm, and at 3 mm), for each *variant* of the
propagation settings in the same run (each variant's eval folder is kept under ``--work``):

- ``previous``: the propagation as it was before this benchmark existed (no zoom on the key slice, no tissue cut;
  only its "ended" rule is today's, relative to the previous slice's area);
- ``current``: the defaults (``PropagationConfig()``: skip-and-interpolate on, every 3rd slice segmented where the
  masks agree);
- ``full``: the defaults slice by slice (``skip=1``), the baseline of skip-and-interpolate.

Per structure: key-slice 2D Dice, initial and final 3D Dice, NSD (2 mm), DSC_AUC and NSD_AUC, encoder calls and
wall time; means per group (CT organs and vessels; brain; CT tracked: bones, muscles, ribs). Speed: the whole brain
of the 4 mm MNI series with and without skip-and-interpolate against one encoder call measured in the same run;
a second segmentation of the same structure from a fresh process-like segmenter reading the disk store (encoder
calls counted). Writes ``--json``.

    .venv/bin/python benchmarks/volumes.py [--cases ct,mni-4mm] [--variants previous,current] [--corrections 5]
    .venv/bin/python benchmarks/volumes.py --quick   # two small crops, 2 corrections: checks that all runs

``--quick`` (what ``benchmarks/run.py --quick`` passes) runs the two small crops of ``volume_cases.SMALL_CASE_NAMES``
with the ``current`` and ``full`` variants, 2 corrections, and the speed check on 8 whole slices of the CT through
the spleen: a minute or two, for checking that everything runs, never for figures to quote.
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

from MedSegReasoning.evaluation.layouts import Dataset, open_dataset, read_folder  # noqa: E402
from MedSegReasoning.evaluation.report import lowered_by_a_correction  # noqa: E402
from MedSegReasoning.evaluation.runner import EvalOptions, run_eval  # noqa: E402
from MedSegReasoning.evaluation.volume_cases import (  # noqa: E402
    CASE_NAMES,
    SLAB_CASE_NAME,
    SMALL_CASE_NAMES,
    build_cases,
)
from MedSegReasoning.propagation import DEFAULT_PROPAGATION, PropagationConfig  # noqa: E402
from MedSegReasoning.segmentation.factory import create_segmenter  # noqa: E402
from MedSegReasoning.volume import default_window, render_slice  # noqa: E402

SHARED_CT = ROOT.parent / "shared" / "data" / "ct-abdomen-dicom"
VARIANTS: dict[str, PropagationConfig] = {
    "previous": replace(DEFAULT_PROPAGATION, key_zoom_below_px=0.0, zoom_below_px=0.0, tissue_quantile=None, skip=1),
    "current": DEFAULT_PROPAGATION,
    "full": replace(DEFAULT_PROPAGATION, skip=1),
}
SPEED_STRUCTURE = "mni-4mm/whole brain"
QUICK_SPEED_STRUCTURE = f"{SLAB_CASE_NAME}/spleen"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=None, help=f"comma-separated, default {','.join(CASE_NAMES)}")
    parser.add_argument("--variants", default=None, help=f"comma-separated of {','.join(VARIANTS)}")
    parser.add_argument("--corrections", type=int, default=None, help="after the first box (default 5)")
    parser.add_argument("--tracked", action="store_true", help="also the CT's bones, muscles and ribs")
    parser.add_argument("--quick", action="store_true", help="two small crops, 2 corrections: checks that all runs")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "_output" / "volume-cases")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "_output" / "volumes.json")
    args = parser.parse_args()
    names = _names(args.cases, SMALL_CASE_NAMES if args.quick else CASE_NAMES)
    variants = _names(args.variants, ("current", "full") if args.quick else ("previous", "current"))
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}: choose from {', '.join(VARIANTS)}")
    corrections = args.corrections if args.corrections is not None else (2 if args.quick else 5)
    shared = SHARED_CT if (SHARED_CT / "dicom").is_dir() else None
    dataset = build_cases(args.work, shared, names)
    speed_case = _speed_case(dataset, args.work, shared, args.quick)
    encoder_s = _encoder_seconds(create_segmenter("litemedsam", cache_bytes=0), dataset)
    rows = _interactive_rows(dataset, args.work, variants, corrections, args.tracked)
    speed = _speed(*speed_case, encoder_s) if speed_case else None
    report = {
        "machine": {"platform": platform.platform(), "processor": platform.processor()},
        "quick": args.quick,
        "encoder_s": encoder_s,
        "corrections": corrections,
        "rows": rows,
        "summary": summarise(rows, variants),
        "speed": speed,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    print_summary(report)
    return 0


def _names(text: str | None, default: tuple[str, ...]) -> tuple[str, ...]:
    return default if text is None else tuple(n.strip() for n in text.split(",") if n.strip())


def _speed_case(dataset: Path, work: Path, shared: Path | None, quick: bool) -> tuple[Path, str] | None:
    """The dataset and structure the speed check segments: the 4 mm whole brain (when ``mni-4mm`` runs), or in a quick
    run 8 whole slices of the CT through the spleen (``volume_cases.SLAB_CASE_NAME``, built apart from the
    interactive cases); None when neither is there."""
    if quick:
        return (build_cases(work / "speed", shared, (SLAB_CASE_NAME,)), QUICK_SPEED_STRUCTURE) if shared else None
    return (dataset, SPEED_STRUCTURE) if any(u.id == SPEED_STRUCTURE for u in read_folder(dataset)) else None


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


def _interactive_rows(dataset: Path, work: Path, variants: list[str], corrections: int, tracked: bool) -> list[dict]:
    """One ``eval --mode interactive`` run per variant (``run_eval``: the records ``eval`` writes), as rows. Each
    variant gets a segmenter of its own with an empty embedding cache, so its encoder calls are its own and not what
    an earlier variant left in memory."""
    full = open_dataset(dataset, "folder")
    units = [u for u in full.units if tracked or u.category != "tracked"]
    groups = {u.id: _group(u) for u in units}
    rows = []
    for variant in variants:
        options = EvalOptions(
            out=work / "eval" / variant,
            mode="interactive",
            corrections=corrections,
            propagation=VARIANTS[variant],
            progress=False,
            title=f"volumes benchmark: interactive, {variant}",
        )
        segmenter = create_segmenter("litemedsam", cache_bytes=3 * 2**30)
        t0 = time.perf_counter()
        run_eval(Dataset(full.path, full.layout, units), options, segmenter=segmenter)
        print(f"== {variant}: {len(units)} structures in {time.perf_counter() - t0:.0f} s", flush=True)
        for record in _records(options.out):
            record.pop("interactions", None)
            record["encoder_calls"] = record.get("encoder_calls") or 0  # a failed structure has none recorded
            rows.append({"id": record["sample"], "group": groups[record["sample"]], "variant": variant, **record})
            print(
                f"{record['sample']:42} {variant:9} key {record['key_slice_dice']:.3f} 3D "
                f"{record['initial_dice']:.3f} -> {record['final_dice']:.3f} auc {record['dsc_auc']:.2f} "
                f"enc {record['encoder_calls'] or 0:3d} {record['latency_s']:5.1f}s"
                + (f"  FAILED: {record['error']}" if record["error"] else ""),
                flush=True,
            )
    return rows


def _records(out: Path) -> list[dict]:
    from MedSegReasoning.evaluation.runner import SAMPLES_FILE, read_existing

    return read_existing(out / SAMPLES_FILE)


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
        entry["lowered_by_a_correction"] = [r["id"] for r in goal_rows if lowered_by_a_correction(r)]
        entry["failed"] = {r["id"]: r["error"] for r in mine if r.get("error")}
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


def _speed(dataset: Path, structure: str, encoder_s: float) -> dict:
    """One structure (the 4 mm whole brain): full propagation against skip-and-interpolate, each from an empty
    memory cache and an empty store, and a second run reading the store."""
    from MedSegReasoning.dialogue import segment_candidate
    from MedSegReasoning.evaluation.metrics import dice
    from MedSegReasoning.evaluation.runner import truth_prompt

    unit = next(u for u in read_folder(dataset) if u.id == structure)
    case = unit.load()
    truth = case.turns[0].truth
    window = default_window(case.volume)
    prompt = truth_prompt(truth)
    out: dict = {}
    masks: dict[str, np.ndarray] = {}
    for name, config in (("full", replace(DEFAULT_PROPAGATION, skip=1)), ("skip", DEFAULT_PROPAGATION)):
        with tempfile.TemporaryDirectory(prefix="medseg-store-") as fresh:
            segmenter = create_segmenter("litemedsam", embedding_store=fresh)
            t0 = time.perf_counter()
            candidate = segment_candidate(case.volume, segmenter, window, prompt, True, "speed", config)
            seconds = time.perf_counter() - t0
            mask = candidate.mask.to_dense(case.volume.shape)
            masks[name] = mask
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
    out["structure"] = structure
    out["skip_vs_full_dice"] = dice(masks["skip"], masks["full"])
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
        for name in ("full", "skip"):
            x = s[name]
            print(
                f"{s['structure']} {name:5}: {x['encoder_calls']} encoder calls, {x['seconds']:.1f} s "
                f"({x['seconds'] / enc:.1f}x one encoder call), Dice {x['dice']:.3f}; second run "
                f"{x['second_run_encoder_calls']} encoder calls, {x['second_run_store_hits']} store hits"
            )


if __name__ == "__main__":
    sys.exit(main())
