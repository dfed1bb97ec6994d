"""The DICOM writer: files that dciodvfy accepts, values and geometry that come back exactly."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from support.volume import dciodvfy_errors, dciodvfy_warnings, distinct_array, oblique_flipped_geometry, write_series

from MedSegReasoning.volume import SeriesDescriptors, load_volume, write_dicom_series
from MedSegReasoning.volume.core import Volume


@pytest.mark.slow
@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_written_files_pass_dciodvfy(tmp_path, modality):
    paths = write_series(tmp_path / modality, modality=modality)
    for path in (paths[0], paths[-1]):
        assert dciodvfy_errors(path) == []
        assert dciodvfy_warnings(path) == []  # none today; a new one deserves a look


def test_file_format_and_sop_class(tmp_path):
    paths = write_series(tmp_path / "mr", modality="MR")
    raw = paths[0].read_bytes()
    assert raw[:128] == bytes(128) and raw[128:132] == b"DICM"
    ds = pydicom.dcmread(paths[0])
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.SOPClassUID == pydicom.uid.MRImageStorage == ds.file_meta.MediaStorageSOPClassUID
    assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
    assert ds.Modality == "MR" and "RescaleSlope" not in ds


def test_uids_are_shared_by_the_series_and_unique_per_slice(tmp_path):
    paths = write_series(tmp_path / "s")
    datasets = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        assert len({ds[keyword].value for ds in datasets}) == 1
    assert len({ds.SOPInstanceUID for ds in datasets}) == len(paths)
    assert [ds.InstanceNumber for ds in datasets] == list(range(1, len(paths) + 1))


def test_seeded_writer_is_reproducible_and_names_are_shuffled(tmp_path):
    a = write_series(tmp_path / "a", rng=np.random.default_rng(3))
    b = write_series(tmp_path / "b", rng=np.random.default_rng(3))
    assert [p.name for p in a] == [p.name for p in b]
    assert [p.name for p in a] != sorted(p.name for p in a)  # file names say nothing about slice order
    uid = [pydicom.dcmread(p[0], stop_before_pixels=True).SeriesInstanceUID for p in (a, b)]
    assert uid[0] == uid[1]


def test_volume_input_and_descriptors(tmp_path):
    volume = Volume(array=distinct_array(), geometry=oblique_flipped_geometry(), modality="CT")
    descriptors = SeriesDescriptors(patient_name="Doe^Jane", series_description="synthetic", series_number=7)
    paths = write_dicom_series(volume, None, tmp_path / "v", modality="CT", descriptors=descriptors)
    assert [p.name for p in paths] == sorted(p.name for p in paths)
    ds = pydicom.dcmread(paths[0], stop_before_pixels=True)
    assert (str(ds.PatientName), ds.SeriesDescription, ds.SeriesNumber) == ("Doe^Jane", "synthetic", 7)
    assert load_volume(tmp_path / "v").geometry.is_close(volume.geometry, tol_mm=1e-6)


def test_uint16_and_float_values(tmp_path):
    unsigned = (distinct_array().astype(np.int32) + 30000).astype(np.uint16)  # up to 31999 + 30000 > int16
    unsigned[0, 0, 0] = 65535
    write_series(tmp_path / "u", array=unsigned, modality="MR")
    np.testing.assert_array_equal(load_volume(tmp_path / "u").array, unsigned.astype(np.float32))
    with pytest.raises(ValueError, match="MR pixel values must be integers"):
        write_series(tmp_path / "f", array=distinct_array() * 0.5, modality="MR")


def test_wrong_arguments():
    with pytest.raises(ValueError, match="modality"):
        write_dicom_series(distinct_array(), oblique_flipped_geometry(), "/nonexistent", modality="PT")
    with pytest.raises(ValueError, match="needs its geometry"):
        write_dicom_series(distinct_array(), None, "/nonexistent")
