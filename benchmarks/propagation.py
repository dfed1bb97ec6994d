"""Benchmark: 3D propagation with LiteMedSAM on the real abdominal CT.

Prints, per organ: slices visited vs slices in the volume, encoder calls (each visited slice must be encoded
once), propagation time per visited slice beside the encoder time per slice measured in the same run (the
ratio says how much propagation adds on top of encoding), 3D Dice against the reference labels, and the peak
resident memory of the process. Writes benchmarks/_output/propagation.json.

    .venv/bin/python benchmarks/propagation.py [--organs spleen,aorta,adrenal_gland_right] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "Testing"))

from support.ct_reference import reference_labels_on_ct_grid  # noqa: E402

from MedSegReasoning.pipeline import VoxelPrompt, segment_target  # noqa: E402
from MedSegReasoning.propagation import segment_slice  # noqa: E402
from MedSegReasoning.segmentation.base import Prompt2D  # noqa: E402
from MedSegReasoning.segmentation.factory import create_segmenter  # noqa: E402
from MedSegReasoning.volume import default_window, load_volume, render_slice  # noqa: E402

SHARED_CT = ROOT.parent / "shared" / "data" / "ct-abdomen-dicom"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--organs", default="spleen,aorta,adrenal_gland_right")
    parser.add_argument("--data", type=Path, default=SHARED_CT)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "_output" / "propagation.json")
    args = parser.parse_args()
    if not (args.data / "dicom").is_dir():
        print(f"real CT not found at {args.data}: nothing to measure", file=sys.stderr)
        return 2

    volume = load_volume(args.data / "dicom")
    labels = reference_labels_on_ct_grid(args.data, volume)
    names = {v: int(k) for k, v in json.loads((args.data / "labels.json").read_text()).items()}
    window = default_window(volume)
    segmenter = create_segmenter("litemedsam")

    # Encoder time per slice, uncached, measured in this run (3 slices that propagation below will not reuse).
    t0 = time.perf_counter()
    for k in (0, 1, 2):
        segmenter.set_image(render_slice(volume, k, window), cache_key=None)
    encoder_s = (time.perf_counter() - t0) / 3

    rows = []
    for organ in args.organs.split(","):
        truth = labels == names[organ]
        k = int(np.argmax(truth.sum(axis=(1, 2))))
        r, c = np.nonzero(truth[k])
        prompt = VoxelPrompt(k=k, box=(int(c.min()), int(r.min()), int(c.max()), int(r.max())))
        segmenter.cache.clear()
        before = segmenter.stats.encoder_calls
        t0 = time.perf_counter()
        result = segment_target(volume, segmenter, window, prompt)
        elapsed = time.perf_counter() - t0
        visited = len(result.propagation.visited_slices)
        encodes = segmenter.stats.encoder_calls - before
        dice = 2 * np.logical_and(result.mask, truth).sum() / (result.mask.sum() + truth.sum())
        # a second prompt on a visited slice: cached embedding, decoder only
        t1 = time.perf_counter()
        segment_slice(volume, segmenter, window, k, Prompt2D(box=tuple(float(v) for v in prompt.box)))
        cached_s = time.perf_counter() - t1
        rows.append(
            {
                "organ": organ,
                "slices_in_volume": volume.shape[0],
                "visited": visited,
                "encoder_calls": encodes,
                "encodes_per_visited": encodes / visited,
                "seconds": elapsed,
                "seconds_per_visited_slice": elapsed / visited,
                "ratio_to_encoder": elapsed / visited / encoder_s,
                "ratio_to_encoding_every_slice": elapsed / (encoder_s * volume.shape[0]),
                "dice_3d": float(dice),
                "stopped": result.propagation.stop_reasons,
                "cached_prompt_to_mask_s": cached_s,
            }
        )

    report = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "python": platform.python_version(),
        },
        "encoder_s_per_slice": encoder_s,
        "peak_rss_mb": peak_rss_mb(),
        "organs": rows,
    }
    print(f"encoder (uncached) per slice: {encoder_s:.3f} s   peak RSS: {report['peak_rss_mb']:.0f} MB")
    print(
        f"{'organ':24} {'visited':>8} {'encodes':>8} {'s/slice':>8} {'x enc':>6} {'x all':>6} {'Dice3D':>7} {'cached':>7}"
    )
    for r in rows:
        print(
            f"{r['organ']:24} {r['visited']:>5}/{r['slices_in_volume']:<2} {r['encoder_calls']:>8} "
            f"{r['seconds_per_visited_slice']:>8.3f} {r['ratio_to_encoder']:>6.2f} "
            f"{r['ratio_to_encoding_every_slice']:>6.2f} {r['dice_3d']:>7.3f} {r['cached_prompt_to_mask_s']:>7.3f}"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
