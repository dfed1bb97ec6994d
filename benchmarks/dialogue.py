"""Benchmark: a 10-round dialogue session on a 512x512x300 CT grid (0.8 x 0.8 x 1.5 mm), one entity per round.

Measures, per round: the entity's compact mask size (box crop at one bit per voxel), how much the session's
memory grew (tracemalloc, after the round; goal: no more than the crop plus small bookkeeping), the time to judge
the mask and write its findings, and the time to save the session after the round (goal: <= 50 ms with 10
entities). Then the time to load the saved session and its size on disk. Writes benchmarks/_output/dialogue.json.

Masks are organ-sized ellipsoids (liver 1.5 L down to a 2 mL lesion) built directly as crops: segmentation and
propagation have their own benchmarks; this one measures what the dialogue layer adds.

    .venv/bin/python benchmarks/dialogue.py [--json PATH]
"""

from __future__ import annotations

import gc
import json
import platform
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from timing import median_seconds  # noqa: E402

from MedSegReasoning.dialogue import Session, load_session  # noqa: E402
from MedSegReasoning.dialogue.judgment import Candidate, Expectation, judge  # noqa: E402
from MedSegReasoning.dialogue.records import VolumeRecord  # noqa: E402
from MedSegReasoning.pipeline import VoxelPrompt  # noqa: E402
from MedSegReasoning.terminology import default_terminology  # noqa: E402
from MedSegReasoning.volume.core import Geometry  # noqa: E402
from MedSegReasoning.wire.masks import CompactMask  # noqa: E402

SHAPE = (300, 512, 512)  # k, j, i
SPACING = (0.8, 0.8, 1.5)  # si, sj, sk
GEOMETRY = Geometry.from_arrays((-204.8, -204.8, -225.0), SPACING, np.eye(3))
# label, centre (k, j, i) in voxels, radii (k, j, i) in mm, the entity it refers to
STRUCTURES = [
    ("liver", (150, 230, 160), (60, 80, 75), None),
    ("spleen", (160, 260, 380), (40, 45, 27), None),
    ("left kidney", (120, 300, 360), (50, 30, 24), None),
    ("right kidney", (120, 300, 150), (50, 30, 24), None),
    ("pancreas", (140, 250, 260), (15, 25, 51), None),
    ("aorta", (150, 280, 270), (150, 12, 12), None),
    ("inferior vena cava", (150, 280, 225), (150, 13, 11), None),
    ("gallbladder", (150, 105, 160), (30, 18, 18), "E1"),
    ("lesion", (150, 230, 130), (13, 14, 13), "E1"),
    ("lesion", (175, 210, 190), (8, 8, 7.5), "E1"),
]


def ellipsoid(centre, radii_mm) -> CompactMask:
    """The ellipsoid's compact mask, built on its own box (never a full-volume array)."""
    radii = np.array(radii_mm) / np.array([SPACING[2], SPACING[1], SPACING[0]])
    lo = np.maximum(np.floor(np.array(centre) - radii).astype(int), 0)
    hi = np.minimum(np.ceil(np.array(centre) + radii).astype(int), np.array(SHAPE) - 1)
    kk, jj, ii = np.ogrid[lo[0] : hi[0] + 1, lo[1] : hi[1] + 1, lo[2] : hi[2] + 1]
    crop = ((kk - centre[0]) / radii[0]) ** 2 + ((jj - centre[1]) / radii[1]) ** 2 + (
        (ii - centre[2]) / radii[2]
    ) ** 2 <= 1
    return CompactMask.from_crop((*lo.tolist(), *hi.tolist()), crop).tight()


def run(folder: Path | None, track_memory: bool) -> list[dict]:
    term = default_terminology()
    record = VolumeRecord("synthetic-512x512x300", "0" * 64, SHAPE, GEOMETRY, "CT")
    session = Session(record, folder=folder, terminology=term)
    if track_memory:
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
    rows = []
    for n, (label, centre, radii, ref) in enumerate(STRUCTURES, start=1):
        t0 = time.perf_counter()
        mask = ellipsoid(centre, radii)
        t1 = time.perf_counter()
        rnd = session.begin_round(f"Round {n}: segment the {label}.")
        coded = term.match(label, use_embedding=False)
        expectation = Expectation(
            term.type_of(coded),
            coded.modifier.value if coded.modifier else None,
            reference=session.entity(ref).mask if ref else None,
            reference_id=ref,
        )
        candidate = Candidate(mask, 0.93, VoxelPrompt(centre[0], (0, 0, 1, 1)), True)
        judgment = judge(candidate, GEOMETRY, SHAPE, expectation)
        entity = session.add_entity(rnd, label, mask, key_slice=centre[0], terminology=coded, ref=ref, score=0.93)
        t2 = time.perf_counter()
        rnd.timings["total_s"] = t2 - t0
        t3 = time.perf_counter()
        session.finish_round(rnd)  # closes the round and saves the whole session
        t4 = time.perf_counter()
        row = {
            "round": n,
            "entity": entity.id,
            "label": label,
            "verdict": judgment.verdict,
            "volume_ml": round(entity.measurements.volume_ml, 1),
            "crop_voxels": int(np.prod(mask.crop_shape)),
            "mask_bytes": mask.nbytes,
            "build_mask_ms": round(1000 * (t1 - t0), 2),
            "judge_and_findings_ms": round(1000 * (t2 - t1), 2),
            "save_ms": round(1000 * (t4 - t3), 2) if folder else None,
        }
        if track_memory:
            del mask, candidate, judgment, entity
            gc.collect()
            row["session_memory_bytes"] = tracemalloc.get_traced_memory()[0] - base
        rows.append(row)
    if track_memory:
        tracemalloc.stop()
    return rows


def main() -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "_output" / "dialogue.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "session"
        timed = run(folder, track_memory=False)
        t0 = time.perf_counter()
        loaded = load_session(folder)
        load_ms = 1000 * (time.perf_counter() - t0)
        disk = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        json_bytes = (folder / "session.json").stat().st_size
        # Baseline for the save time: one plain write of as many bytes as the saved folder holds, same disk.
        payload = np.random.default_rng(0).integers(0, 256, disk, dtype=np.uint8).tobytes()
        raw_write_ms = 1000 * median_seconds(lambda: (Path(tmp) / "raw.bin").write_bytes(payload), 5, warmup=1)[0]
        assert len(loaded.entities) == len(STRUCTURES)
    memory = run(None, track_memory=True)

    print(f"{'rd':>2} {'entity':6} {'label':20} {'mL':>7} {'mask kB':>8} {'mem +kB':>8} {'judge ms':>9} {'save ms':>8}")
    previous = 0
    for t, m in zip(timed, memory, strict=True):
        grew = m["session_memory_bytes"] - previous
        previous = m["session_memory_bytes"]
        t["session_memory_growth_bytes"] = grew
        t["session_memory_bytes"] = m["session_memory_bytes"]
        print(
            f"{t['round']:>2} {t['entity']:6} {t['label']:20} {t['volume_ml']:>7.1f} {t['mask_bytes'] / 1024:>8.1f} "
            f"{grew / 1024:>8.1f} {t['judge_and_findings_ms']:>9.1f} {t['save_ms']:>8.2f}"
        )
    mask_total = sum(t["mask_bytes"] for t in timed)
    overhead = (memory[-1]["session_memory_bytes"] - mask_total) / len(STRUCTURES)
    saves = [t["save_ms"] for t in timed]
    dense_mb = int(np.prod(SHAPE)) / 1e6
    print(
        f"\nmasks: {mask_total / 1024:.0f} kB for {len(STRUCTURES)} entities (a dense bool mask would be {dense_mb:.1f} MB "
        f"each); session memory {memory[-1]['session_memory_bytes'] / 1024:.0f} kB = masks + {overhead / 1024:.1f} kB "
        f"per entity of bookkeeping"
    )
    print(
        f"save after each round: max {max(saves):.1f} ms, round 10 (10 entities) {saves[-1]:.1f} ms, goal <= 50 ms; "
        f"load {load_ms:.1f} ms; folder {disk / 1024:.0f} kB (session.json {json_bytes / 1024:.0f} kB)"
    )
    out = {
        "benchmark": "dialogue",
        "shape_kji": list(SHAPE),
        "spacing_mm": list(SPACING),
        "rounds": timed,
        "summary": {
            "mask_bytes_total": mask_total,
            "session_memory_bytes": memory[-1]["session_memory_bytes"],
            "bookkeeping_bytes_per_entity": round(overhead),
            "save_ms_max": max(saves),
            "save_ms_round_10": saves[-1],
            "save_goal_ms": 50,
            "load_ms": round(load_ms, 2),
            "raw_write_same_bytes_ms": round(raw_write_ms, 3),
            "folder_bytes": disk,
            "session_json_bytes": json_bytes,
        },
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpu": platform.processor()},
    }
    target = args.json
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {target}")
    return 0 if max(saves) <= 50 else 1


if __name__ == "__main__":
    sys.exit(main())
