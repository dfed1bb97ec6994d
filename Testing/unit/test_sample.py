"""The README's sample: an MR DICOM series of the MNI152 template and a measured box on the left caudate."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from MedSegReasoning import sample
from MedSegReasoning.volume import default_window, load_volume, render_slice
from MedSegReasoning.wire.errors import InputError


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    if importlib.util.find_spec("nilearn") is None:
        pytest.skip("nilearn (the sample's template) is not installed: pip install 'medseg-reasoning[sample]'")
    out = tmp_path_factory.mktemp("sample")
    return out, sample.build_sample(out)


def test_sample_builds_and_loads_as_mr(built):
    out, dicom_dir = built
    assert dicom_dir == out / "dicom"
    volume = load_volume(dicom_dir)
    description = sample.read_sample_description(out)
    assert volume.modality == "MR" and volume.array.dtype == np.int16
    assert list(volume.shape) == description["shape_kji"] == [189, 233, 197]
    assert volume.geometry.spacing == pytest.approx((1.0, 1.0, 1.0))
    np.testing.assert_allclose(volume.geometry.direction_matrix, np.eye(3))  # axial, radiological display
    assert 3000 < volume.array.max() <= 4080


def test_suggested_box_lies_on_the_left_caudate(built):
    out, dicom_dir = built
    volume = load_volume(dicom_dir)
    description = sample.read_sample_description(out)
    box, brain = description["box"], description["brain_box"]
    assert description["structure"] == "left caudate nucleus"
    nk, nj, ni = volume.shape
    assert 0 <= box["i0"] < box["i1"] < ni and 0 <= box["j0"] < box["j1"] < nj and 0 <= box["k"] < nk
    assert 8 <= box["i1"] - box["i0"] <= 40 and 15 <= box["j1"] - box["j0"] <= 50  # a nucleus, not the brain
    inside = volume.array[box["k"], box["j0"] : box["j1"] + 1, box["i0"] : box["i1"] + 1].astype(float)
    around = volume.array[box["k"], brain["j0"] : brain["j1"] + 1, brain["i0"] : brain["i1"] + 1].astype(float)
    # Grey matter: darker than the white matter around it, brighter than fluid.
    assert np.median(inside) < np.percentile(around[around > 0], 90)
    assert np.median(inside) > 0.3 * np.percentile(around[around > 0], 90)
    # On the patient's left: i grows towards the left in this LPS-stored template, so right of the midline.
    assert (box["i0"] + box["i1"]) / 2 > (brain["i0"] + brain["i1"]) / 2 + 5
    assert render_slice(volume, box["k"], default_window(volume)).shape == (nj, ni, 3)


def test_second_build_reuses_the_first(built):
    out, dicom_dir = built
    before = {p.name: p.stat().st_mtime_ns for p in dicom_dir.iterdir()}
    assert sample.build_sample(out) == dicom_dir
    assert {p.name: p.stat().st_mtime_ns for p in dicom_dir.iterdir()} == before


def test_foreign_dicom_folder_is_not_overwritten(tmp_path):
    (tmp_path / "dicom").mkdir()
    (tmp_path / "dicom" / "mine.dcm").write_bytes(b"")
    with pytest.raises(InputError, match="exists but is not a complete sample: remove it"):
        sample.build_sample(tmp_path)


def test_missing_nilearn_says_how_to_install(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nilearn" else real(name, *a))
    with pytest.raises(InputError, match=r"pip install 'medseg-reasoning\[sample\]'"):
        sample.build_sample(tmp_path)
