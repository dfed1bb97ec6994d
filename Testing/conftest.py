"""Shared fixtures: real data beside the project, and models loaded once per test run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_CT = Path(os.environ.get("MEDSEG_SHARED_DATA", ROOT.parent / "shared" / "data")) / "ct-abdomen-dicom"


@pytest.fixture(scope="session")
def shared_ct() -> Path:
    """The real 20-slice abdominal CT with reference labels (``../shared/data/ct-abdomen-dicom``)."""
    if not (SHARED_CT / "dicom").is_dir():
        pytest.skip(f"real CT test data not found at {SHARED_CT} (set MEDSEG_SHARED_DATA to its parent folder)")
    return SHARED_CT


@pytest.fixture(scope="session")
def litemedsam():
    """The embedded LiteMedSAM segmenter with its real weights, loaded once for the whole run."""
    from MedSegReasoning.segmentation.factory import create_segmenter

    return create_segmenter("litemedsam")
