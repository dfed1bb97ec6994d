"""Batch benchmark: studies per minute of ``batch`` with 1 and 2 Ray workers, and in-process, against the same
studies through ``ask`` one by one (a child process per study: start-up and model load paid each time), in one run.

Run from the project root::

    .venv/bin/python benchmarks/batch.py [--studies 8] [--slices 24] [--keep DIR]

The studies are synthetic NIfTI volumes (a bright block of a different size in each; 256 x 256 pixels, --slices
slices) with a box each (a CSV manifest), segmented by the real LiteMedSAM; every figure is the whole command's wall
time, Ray start-up and model loads included, as a user would see it. Goal (issue #17): batch with its best worker
count >= 1.5x the ask loop. Prints a table and writes ``benchmarks/_output/batch.json``. This machine is shared:
quote the ratios of one run, not the absolute rates.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BOX_MARGIN = 6


def make_cohort(folder: Path, studies: int, slices: int) -> Path:
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    lines = ["input,box,label"]
    for n in range(studies):
        a = np.full((slices, 256, 256), -100, dtype=np.int16)
        size = 60 + 6 * n
        a[2 : slices - 2, 80 : 80 + size, 90 : 90 + size] = 200
        image = sitk.GetImageFromArray(a)
        image.SetSpacing((0.8, 0.8, 2.5))
        path = folder / f"study{n:03d}.nii.gz"
        sitk.WriteImage(image, str(path))
        box = f"{90 - BOX_MARGIN},{80 - BOX_MARGIN},{90 + size + BOX_MARGIN},{80 + size + BOX_MARGIN},{slices // 2}"
        lines.append(f'{path.name},"{box}",liver')
    manifest = folder / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "MedSegReasoning.cli", *args]


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=8)
    parser.add_argument("--slices", type=int, default=24)
    parser.add_argument("--keep", type=Path, default=None, help="keep the cohort and outputs here")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="medseg-bench-batch-"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    env["MEDSEG_EMBEDDING_STORE_MB"] = "0"  # no embedding reused between the runs on disk: each pays its encoder
    manifest = make_cohort(work / "cohort", args.studies, args.slices)
    rows = []
    try:
        t = 0.0
        for line in manifest.read_text().splitlines()[1:]:
            name, rest = line.split(",", 1)
            box = rest.rsplit(",", 1)[0].strip('"')
            out = work / "ask" / name
            t += timed(
                cli("ask", str(work / "cohort" / name), "--box", box, "--label", "liver", "--out", str(out)), env
            )
        rows.append(("ask loop (a process per study)", t))
        runs = [("batch --in-process", ["--in-process"])]
        runs += [(f"batch on Ray, {n} worker(s)", ["--workers", str(n)]) for n in (1, 2)]
        for label, extra in runs:
            out = work / label.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "")
            rows.append((label, timed(cli("batch", str(manifest), "--out", str(out), *extra), env)))
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    baseline = rows[0][1]
    figures = []
    print(f"{args.studies} studies of 256 x 256 x {args.slices}, real LiteMedSAM, {os.cpu_count()} cores")
    print(f"{'run':34} {'seconds':>8} {'studies/min':>12} {'vs ask loop':>12}")
    for label, seconds in rows:
        rate = args.studies / seconds * 60
        ratio = baseline / seconds
        figures.append({"run": label, "seconds": round(seconds, 2), "studies_per_min": round(rate, 2), "ratio": ratio})
        print(f"{label:34} {seconds:8.1f} {rate:12.1f} {ratio:11.2f}x")
    best = max(f["ratio"] for f in figures[1:])
    print(f"best batch / ask loop: {best:.2f}x (goal >= 1.5x: {'pass' if best >= 1.5 else 'FAIL'})")
    out = ROOT / "benchmarks" / "_output" / "batch.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    machine = {"cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    out.write_text(json.dumps({"machine": machine, "studies": args.studies, "figures": figures}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
