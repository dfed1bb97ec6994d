"""A real labelled 3D case, offline: the MNI152 2009a T1 template nilearn ships, its left caudate nucleus from the
template's own grey/white-matter maps, written as a DICOM MR series + NRRD label map by the fixture, evaluated by
``eval --mode oracle`` with propagation through the real LiteMedSAM."""

from __future__ import annotations

import json

import numpy as np
import pytest

from MedSegReasoning.cli import main

pytestmark = pytest.mark.slow
pytest.importorskip("nilearn", reason="the MNI152 template comes with nilearn: pip install 'medseg-reasoning[test]'")

# Measured (see the test's docstring): volumetric Dice 0.569, NSD@2mm 0.623 with propagation; 0.292 / 0.327 from
# the key slice alone.
DICE_FLOOR = 0.50
NSD_FLOOR = 0.55


@pytest.fixture(scope="module")
def caudate_case(tmp_path_factory):
    """The case as a folder dataset: every 4th axial slice (4 mm), cut to the caudate's slices plus one each side:
    10 slices of 233 x 197, so propagation encodes about 7 slices and the test stays within a minute on a quiet
    2-core machine."""
    from MedSegReasoning.evaluation.cases import build_caudate_case

    return build_caudate_case(tmp_path_factory.mktemp("mni152-caudate"), step=4, margin=1)


def test_the_case_is_a_real_dicom_series_with_its_label_map(caudate_case):
    from MedSegReasoning.evaluation.layouts import open_dataset

    dataset = open_dataset(caudate_case)
    assert dataset.layout == "folder" and [u.id for u in dataset] == ["mni152-left-caudate"]
    case = dataset.units[0].load()
    assert case.volume.source.kind == "dicom-series" and case.volume.modality == "MR"
    assert case.volume.shape == (10, 233, 197)
    assert case.volume.geometry.spacing == pytest.approx((1.0, 1.0, 4.0))
    truth = case.turns[0].truth
    slices = np.nonzero(truth.any(axis=(1, 2)))[0]
    assert (slices.min(), slices.max()) == (1, 8)  # the caudate's slices, one empty slice each side
    assert 700 < truth.sum() < 900  # about 3,300 mm3 at 1 x 1 x 4 mm voxels: a caudate nucleus's size
    # on the patient's left: the template is LPS, so larger i is further left
    assert np.nonzero(truth)[2].mean() > case.volume.shape[2] / 2


def test_oracle_eval_on_the_real_case_meets_the_measured_floor(caudate_case, litemedsam, monkeypatch, tmp_path):
    """Measured on 2026-11-23 with this fixture (``eval --mode oracle``, LiteMedSAM via ONNX Runtime on CPU):
    volumetric Dice 0.569 and NSD 0.623 at 2 mm. The key slice's own mask agrees well (2D Dice 0.88), but
    propagation stops a slice or two before the caudate's thin tail ends ("the structure ended") at 4 mm slices;
    with 2 mm slices the Dice is 0.640, at twice the run time. Without propagation (``--no-propagate``) the
    volumetric Dice is 0.292 (NSD 0.327).

    Floor 0.50 (NSD 0.55): about 0.07 under the measurement, because ONNX Runtime's results differ in the last
    bits between CPUs and thread counts and a propagation threshold crossed one slice earlier costs roughly one
    of the eight caudate slices; and far above 0.29, so the test fails if propagation, the DICOM geometry or the
    label map's alignment with the series breaks.
    """
    monkeypatch.setattr("MedSegReasoning.segmentation.factory.create_segmenter", lambda spec, **kw: litemedsam)
    out = tmp_path / "out"
    assert main(["eval", str(caudate_case), "--mode", "oracle", "--out", str(out), "--no-progress"]) == 0
    (record,) = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert (record["dimension"], record["mode"], record["error"]) == (3, "oracle", None)
    assert record["nsd_tolerance_mm"] == 2.0
    assert record["dice"] >= DICE_FLOOR, record
    assert record["nsd"] >= NSD_FLOOR, record
    summary = json.loads((out / "summary.json").read_text())
    assert summary["overall"]["dice"]["mean"] == pytest.approx(record["dice"])
