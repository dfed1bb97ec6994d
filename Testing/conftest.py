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


@pytest.fixture(scope="session")
def small_volume_cases(tmp_path_factory, shared_ct) -> Path:
    """The two small real crops of ``volume_cases.SMALL_CASE_NAMES`` as one ``folder`` dataset, built once: 6 slices
    of the real CT through the spleen (181 x 150 pixels) and the MNI152 left caudate nucleus at 4 mm (11 slices of
    108 x 56), one structure each."""
    pytest.importorskip(
        "nilearn", reason="the MNI152 template comes with nilearn: pip install 'medseg-reasoning[test]'"
    )
    from MedSegReasoning.evaluation.volume_cases import SMALL_CASE_NAMES, build_cases

    return build_cases(tmp_path_factory.mktemp("small-volume-cases"), shared_ct, SMALL_CASE_NAMES)
