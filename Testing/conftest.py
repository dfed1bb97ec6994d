"""Shared fixtures (real data beside the project, models loaded once per test run) and the fast lane's marks.

The folders: ``unit/`` (no real model, server, external tool or child process), ``integration/`` (real models,
live servers, external validators, child processes, the style gates) and ``slicer/`` (the Slicer side: slicer-core,
PySide2, the backend link). Plain builders and the one fake segmenter are the ``support`` package (``support/``, on
``sys.path`` through pyproject's ``pythonpath``); fixtures are in the conftest.py of the folder that uses them.
"""

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


INTEGRATION = Path(__file__).resolve().parent / "integration"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``slow`` on every test under ``integration/`` and on any test that loads the real LiteMedSAM (the
    ``litemedsam`` fixture), wherever it is: ``pytest -m "not slow" Testing`` is the fast lane. The default run is
    everything."""
    for item in items:
        if INTEGRATION in item.path.parents or "litemedsam" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
