"""Export benchmark: a DICOM-SEG of 10 segments over a 512x512x300 CT series, and a 300-slice series read from
Orthanc over DICOMweb against the same files read from disk.

Run from the project root::

    .venv/bin/python benchmarks/export.py [--repeats 3] [--slices 300] [--keep DIR]

What it measures, in one process:

- writing the CT series once (``write_dicom_series``, not a goal: the fixture);
- ``write_dicom_seg`` with 10 non-overlapping ellipsoids (reading the 300 source headers, building, saving): as a
  label map SEG (``auto``, the export default without an SR) and as a binary SEG (the default with an SR), median
  of N runs each; once with 10 *overlapping* segments (binary, highdicom's per-segment frame stack: the slow path);
- a private Orthanc on loopback (``Testing/support/export.py``, ``Orthanc``; needs the Debian packages ``orthanc`` and
  ``orthanc-dicomweb``): STOW-RS of the series once, then N rounds of ``load_dicomweb_series`` (WADO-RS into a
  fresh folder, then the same DICOM reader) against ``load_volume`` on the original folder.

Goal: SEG with 10 segments <= 5 s. Prints a table and writes ``benchmarks/_output/export.json``. This machine is
shared: the medians are what to quote.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "Testing")]

from timing import median_seconds  # noqa: E402

GOALS = {"seg_10_segments_s": 5.0}


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def write_series(folder: Path, slices: int) -> float:
    from MedSegReasoning.volume import write_dicom_series
    from MedSegReasoning.volume.core import Geometry

    if folder.is_dir() and len(list(folder.iterdir())) == slices:
        return 0.0
    rng = np.random.default_rng(3)
    array = rng.integers(-1000, 1500, size=(slices, 512, 512), dtype=np.int16)
    geometry = Geometry.from_arrays((-180.0, -180.0, 0.0), (0.7, 0.7, 1.0), np.eye(3))
    seconds, _ = timed(lambda: write_dicom_series(array, geometry, folder, modality="CT", rng=rng))
    return seconds


def segment_specs(shape: tuple[int, int, int], overlapping: bool) -> list:
    """10 ellipsoids in a ring; ``overlapping`` makes each one reach into its neighbour."""
    from MedSegReasoning.export.dicom_seg import SegmentSpec

    nk, nj, ni = shape
    kk, jj, ii = np.ogrid[:nk, :nj, :ni]
    specs = []
    radius = 70 if overlapping else 40
    for n in range(10):
        angle = 2 * np.pi * n / 10
        cj, ci = nj / 2 + 150 * np.sin(angle), ni / 2 + 150 * np.cos(angle)
        ck = nk * (0.2 + 0.06 * n)
        mask = ((kk - ck) / (nk * 0.15)) ** 2 + ((jj - cj) / radius) ** 2 + ((ii - ci) / radius) ** 2 <= 1.0
        specs.append(SegmentSpec(number=n + 1, label=f"structure {n + 1}", mask=mask, semiautomatic=False))
    return specs


def bench_seg(volume, out: Path, repeats: int) -> dict:
    from MedSegReasoning.export.dicom_seg import AlgorithmInfo, first_overlap, write_dicom_seg

    algorithm = AlgorithmInfo("benchmark", "1")
    disjoint = segment_specs(volume.shape, overlapping=False)
    assert first_overlap(disjoint) is None
    results = {}
    for seg_type in ("auto", "binary"):
        median, runs = median_seconds(
            lambda t=seg_type: write_dicom_seg(volume, disjoint, out / f"{t}.dcm", algorithm, t), repeats
        )
        results[seg_type] = {"median_s": median, "runs_s": runs, "bytes": (out / f"{seg_type}.dcm").stat().st_size}
    overlapping = segment_specs(volume.shape, overlapping=True)
    assert first_overlap(overlapping) is not None
    seconds, _ = timed(lambda: write_dicom_seg(volume, overlapping, out / "overlap.dcm", algorithm, "auto"))
    results["binary_overlapping"] = {
        "median_s": seconds,
        "runs_s": [seconds],
        "bytes": (out / "overlap.dcm").stat().st_size,
    }
    return results


def bench_dicomweb(folder: Path, work: Path, repeats: int) -> dict:
    import os

    from support.export import Orthanc, push_series

    from MedSegReasoning.volume import load_volume
    from MedSegReasoning.volume.dicomweb import load_dicomweb_series

    orthanc = Orthanc(work / "orthanc").start()
    try:
        push_s, _ = timed(lambda: push_series(orthanc, folder))
        os.environ.update(orthanc.env())
        info = load_volume(folder).source.dicom
        url = f"{orthanc.dicomweb}/studies/{info.study_instance_uid}/series/{info.series_instance_uid}"
        counter = iter(range(10**6))

        def pull():
            dest = work / f"pull-{next(counter)}"
            volume = load_dicomweb_series(url, dest=dest)
            shutil.rmtree(dest)
            return volume

        disk_median, disk_runs = median_seconds(lambda: load_volume(folder), repeats)
        web_median, web_runs = median_seconds(pull, repeats)
        check = load_dicomweb_series(url, dest=work / "check")
        same = bool(np.array_equal(check.array, load_volume(folder).array))
    finally:
        orthanc.stop()
    return {
        "stow_series_s": push_s,
        "disk_median_s": disk_median,
        "disk_runs_s": disk_runs,
        "dicomweb_median_s": web_median,
        "dicomweb_runs_s": web_runs,
        "dicomweb_over_disk": web_median / disk_median,
        "same_voxels": same,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "_output" / "export.json")
    parser.add_argument("--keep", type=Path, help="keep (and reuse) the CT series in this folder")
    args = parser.parse_args()

    from MedSegReasoning.volume import load_volume

    work = Path(tempfile.mkdtemp(prefix="medseg-bench-export-"))
    try:
        folder = args.keep or work / "ct"
        write_s = write_series(folder, args.slices)
        volume = load_volume(folder)
        seg = bench_seg(volume, work, args.repeats)
        web = bench_dicomweb(folder, work, args.repeats)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    report = {
        "machine": platform.platform(),
        "series": {"shape_kji": list(volume.shape), "write_s": write_s},
        "seg": seg,
        "dicomweb": web,
        "goals": GOALS,
        "met": {"seg_10_segments_s": seg["auto"]["median_s"] <= GOALS["seg_10_segments_s"]},
    }
    out = args.json
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"series {volume.shape[0]} x {volume.shape[1]} x {volume.shape[2]} (written in {write_s:.1f} s)")
    for name, r in seg.items():
        print(f"SEG, 10 segments, {name:<20} {r['median_s']:6.2f} s  ({r['bytes'] / 1e6:.1f} MB)")
    print(f"STOW-RS of the series      {web['stow_series_s']:6.2f} s")
    print(f"read from disk             {web['disk_median_s']:6.2f} s")
    print(f"read over DICOMweb         {web['dicomweb_median_s']:6.2f} s  ({web['dicomweb_over_disk']:.1f}x disk)")
    print(f"goal SEG <= {GOALS['seg_10_segments_s']} s: {'met' if report['met']['seg_10_segments_s'] else 'NOT met'}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
