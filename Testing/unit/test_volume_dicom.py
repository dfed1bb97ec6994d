"""DICOM reading: the real CT against SimpleITK, synthetic oblique series, multi-frame objects, and every way a
folder can fail to be one clean volume."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from support.volume import (
    SHAPE_KJI,
    distinct_array,
    left_handed_geometry,
    oblique_flipped_geometry,
    second_series_descriptors,
    write_series,
)

from MedSegReasoning.volume import load_volume
from MedSegReasoning.volume.core import Geometry, Volume
from MedSegReasoning.wire.errors import InputError

sitk = pytest.importorskip("SimpleITK")


def _sitk_series(folder: Path):
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def _assert_geometry_matches_sitk(geometry: Geometry, image, tol: float = 1e-4) -> None:
    np.testing.assert_allclose(geometry.origin, image.GetOrigin(), atol=tol)
    np.testing.assert_allclose(geometry.spacing, image.GetSpacing(), atol=tol)
    np.testing.assert_allclose(geometry.direction_matrix, np.reshape(image.GetDirection(), (3, 3)), atol=tol)


# ------------------------------------------------------------------------------------------------ the real CT


@pytest.fixture(scope="module")
def real_ct(shared_ct: Path) -> tuple[Volume, float]:
    start = time.perf_counter()
    volume = load_volume(shared_ct / "dicom")
    return volume, time.perf_counter() - start


def test_real_ct_shape_units_and_read_time(real_ct):
    volume, seconds = real_ct
    assert volume.shape == (20, 512, 512)
    assert volume.array.dtype == np.int16  # integral rescale: HU kept exact in half the memory of float32
    assert volume.modality == "CT"
    assert volume.array.min() == -1024  # outside the reconstruction circle
    assert 1000 < volume.array.max() < 3100  # bone, no metal
    assert seconds < 10, f"reading 20 JPEG 2000 slices took {seconds:.1f} s"


def test_real_ct_geometry_and_voxels_equal_simpleitk(real_ct, shared_ct):
    volume, _ = real_ct
    image = _sitk_series(shared_ct / "dicom")
    _assert_geometry_matches_sitk(volume.geometry, image)
    np.testing.assert_array_equal(volume.array, sitk.GetArrayFromImage(image))


def test_real_ct_series_info_follows_slice_order(real_ct):
    volume, _ = real_ct
    info = volume.source.dicom
    assert volume.source.kind == "dicom-series"
    assert len(info.files) == len(info.sop_instance_uids) == 20
    assert all(info.sop_instance_uids) and len(set(info.sop_instance_uids)) == 20
    assert info.sop_class_uid == pydicom.uid.CTImageStorage  # blanked in the dataset, taken from the file meta
    z = [float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in info.files]
    assert z == sorted(z) and z[0] == pytest.approx(volume.geometry.origin[2])


def test_real_ct_reference_labels_land_on_their_organs_in_physical_space(real_ct, shared_ct):
    """The labels' NIfTI stores rows flipped: only physical-space resampling puts them on the organs."""
    volume, _ = real_ct
    labels_image = sitk.ReadImage(str(shared_ct / "reference-labels.nii.gz"))
    grid = sitk.GetImageFromArray(volume.array)
    grid.SetOrigin(volume.geometry.origin)
    grid.SetSpacing(volume.geometry.spacing)
    grid.SetDirection(tuple(volume.geometry.direction_matrix.ravel()))
    labels = sitk.GetArrayFromImage(
        sitk.Resample(labels_image, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, labels_image.GetPixelID())
    )
    names = {name: int(value) for value, name in json.loads((shared_ct / "labels.json").read_text()).items()}

    def median_hu(name: str, lab: np.ndarray = labels) -> float:
        return float(np.median(volume.array[lab == names[name]]))

    assert 50 <= median_hu("liver") <= 130  # contrast-enhanced parenchyma
    assert 50 <= median_hu("spleen") <= 130
    assert median_hu("aorta") > 120  # contrast in the lumen
    assert median_hu("vertebrae_T12") > 150
    # Indexing the NIfTI's raw array instead would put the spleen and vertebra labels on fat and air:
    raw = sitk.GetArrayFromImage(labels_image)
    assert median_hu("spleen", raw) < 0 and median_hu("vertebrae_T12", raw) < 0


# ------------------------------------------------------------------------------------------ synthetic series


def test_oblique_flipped_shuffled_series_round_trips(tmp_path):
    geometry = oblique_flipped_geometry()
    paths = write_series(tmp_path / "s", geometry)
    volume = load_volume(tmp_path / "s")
    np.testing.assert_array_equal(volume.array, distinct_array())
    assert volume.geometry.is_close(geometry, tol_mm=1e-6)
    np.testing.assert_allclose(volume.geometry.direction_matrix, geometry.direction_matrix, atol=1e-9)
    assert volume.source.dicom.files == tuple(str(p) for p in paths)
    _assert_geometry_matches_sitk(volume.geometry, _sitk_series(tmp_path / "s"), tol=1e-9)


def test_voxel_at_known_physical_point_comes_back_there(tmp_path):
    geometry = oblique_flipped_geometry()
    array = np.zeros(SHAPE_KJI, dtype=np.int16)
    i, j, k = 5, 7, 3
    array[k, j, i] = 1234
    point = geometry.index_to_physical([i, j, k])
    write_series(tmp_path / "s", geometry, array)
    volume = load_volume(tmp_path / "s")
    back = np.rint(volume.geometry.physical_to_index(point)[0]).astype(int)
    assert tuple(back) == (i, j, k)
    assert volume.array[back[2], back[1], back[0]] == 1234


def test_left_handed_direction_comes_back_in_slice_normal_order(tmp_path):
    """DICOM has no way to say 'k against the normal': the reader sorts along it, like ITK; voxels stay put."""
    geometry = left_handed_geometry()
    array = distinct_array()
    write_series(tmp_path / "s", geometry, array)
    volume = load_volume(tmp_path / "s")
    np.testing.assert_array_equal(volume.array, array[::-1])
    d_in, d_out = geometry.direction_matrix, volume.geometry.direction_matrix
    np.testing.assert_allclose(d_out[:, :2], d_in[:, :2], atol=1e-9)
    np.testing.assert_allclose(d_out[:, 2], -d_in[:, 2], atol=1e-9)
    for ijk in ([0, 0, 0], [47, 39, 7], [11, 22, 4]):
        point = geometry.index_to_physical(ijk)
        back = np.rint(volume.geometry.physical_to_index(point)[0]).astype(int)
        assert volume.array[back[2], back[1], back[0]] == array[ijk[2], ijk[1], ijk[0]]
    _assert_geometry_matches_sitk(volume.geometry, _sitk_series(tmp_path / "s"), tol=1e-9)


def test_float_ct_values_are_rescaled_and_kept_as_float(tmp_path):
    array = distinct_array().astype(np.float32) * 0.25
    write_series(tmp_path / "s", array=array)
    volume = load_volume(tmp_path / "s")
    assert volume.array.dtype == np.float32
    np.testing.assert_allclose(volume.array, array, atol=0.05)


def test_non_dicom_and_non_image_files_in_the_folder_are_ignored(tmp_path):
    write_series(tmp_path / "s")
    (tmp_path / "s" / "README.txt").write_text("notes about this scan\n")
    (tmp_path / "s" / "sub").mkdir()
    shutil.copy(get_testdata_file("test-SR.dcm"), tmp_path / "s" / "sub" / "report.dcm")
    seg = get_testdata_file("liver.dcm")  # a DICOM-SEG: it has rows, columns and pixels, but is no image
    if seg is not None:
        shutil.copy(seg, tmp_path / "s" / "sub" / "seg.dcm")
    volume = load_volume(tmp_path / "s")
    assert volume.shape == SHAPE_KJI


# ------------------------------------------------------------------------------------------------ bad inputs


def test_two_series_are_listed_and_one_can_be_picked(tmp_path):
    first = write_series(tmp_path / "mixed" / "a")
    uid2 = "1.2.826.0.1.3680043.8.498.424242"
    write_series(
        tmp_path / "mixed" / "b", array=distinct_array()[:, :, ::-1], descriptors=second_series_descriptors(uid2)
    )
    uid1 = str(pydicom.dcmread(first[0], stop_before_pixels=True).SeriesInstanceUID)
    with pytest.raises(InputError) as err:
        load_volume(tmp_path / "mixed")
    message = str(err.value)
    assert "2 image series" in message and uid1 in message and uid2 in message
    assert "'second'" in message and "8 file(s)" in message and "--series" in message
    picked = load_volume(tmp_path / "mixed", series_uid=uid2)
    np.testing.assert_array_equal(picked.array, distinct_array()[:, :, ::-1])
    assert picked.source.dicom.series_instance_uid == uid2
    with pytest.raises(
        InputError, match=r"series 9\.9\.9 is not in .*the series there are: .*" + uid1.replace(".", r"\.")
    ):
        load_volume(tmp_path / "mixed", series_uid="9.9.9")


def test_missing_slice_names_the_gap(tmp_path):
    paths = write_series(tmp_path / "s")
    paths[3].unlink()
    with pytest.raises(InputError, match=r"1 slice\(s\) are missing between") as err:
        load_volume(tmp_path / "s")
    assert paths[2].name in str(err.value) and paths[4].name in str(err.value)
    assert "copy the complete series again" in str(err.value)


def test_duplicated_slice_is_refused(tmp_path):
    paths = write_series(tmp_path / "s")
    shutil.copy(paths[2], tmp_path / "s" / "copy-of-slice.dcm")
    with pytest.raises(InputError, match="two slices lie at the same position.*remove the duplicates"):
        load_volume(tmp_path / "s")


def test_unevenly_spaced_slices_are_refused(tmp_path):
    geometry = oblique_flipped_geometry()
    paths = write_series(tmp_path / "s", geometry)
    _move_slice(paths[5], geometry.direction_matrix[:, 2] * 0.3)
    with pytest.raises(InputError, match="unevenly spaced.*resample"):
        load_volume(tmp_path / "s")


def test_tilted_stack_is_refused(tmp_path):
    geometry = oblique_flipped_geometry()
    paths = write_series(tmp_path / "s", geometry)
    for k, path in enumerate(paths):  # gantry tilt: each slice shifted further along the column direction
        _move_slice(path, geometry.direction_matrix[:, 1] * 0.5 * k)
    with pytest.raises(InputError, match="not stacked along their normal.*gantry tilt"):
        load_volume(tmp_path / "s")


def test_inconsistent_orientation_is_refused(tmp_path):
    paths = write_series(tmp_path / "s")
    ds = pydicom.dcmread(paths[4])
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.save_as(paths[4])
    with pytest.raises(InputError, match=f"different orientations.*{paths[4].name}.*localizer"):
        load_volume(tmp_path / "s")


def test_different_pixel_spacing_is_refused(tmp_path):
    paths = write_series(tmp_path / "s")
    ds = pydicom.dcmread(paths[3])
    ds.PixelSpacing = [0.5, 0.5]
    ds.save_as(paths[3])
    with pytest.raises(InputError, match=f"different pixel spacing.*{paths[3].name}.*pick another series"):
        load_volume(tmp_path / "s")


def test_truncated_pixel_data_names_the_file(tmp_path):
    paths = write_series(tmp_path / "s")
    data = paths[6].read_bytes()
    paths[6].write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=f"{paths[6].name} is truncated or damaged.*copy it again"):
        load_volume(tmp_path / "s")


def test_truncated_header_names_the_file(tmp_path):
    paths = write_series(tmp_path / "s")
    paths[1].write_bytes(paths[1].read_bytes()[:700])
    with pytest.raises(InputError, match=f"{paths[1].name}.*(lacks|truncated)"):
        load_volume(tmp_path / "s")


def test_folder_of_non_image_dicom_says_so(tmp_path):
    (tmp_path / "sr").mkdir()
    shutil.copy(get_testdata_file("test-SR.dcm"), tmp_path / "sr" / "report.dcm")
    with pytest.raises(InputError, match="holds DICOM files but no images"):
        load_volume(tmp_path / "sr")


def test_non_image_dicom_file_says_so(tmp_path):
    with pytest.raises(InputError, match="is a DICOM .*SR Storage object, not an image.*give the image series"):
        load_volume(get_testdata_file("test-SR.dcm"))


# ------------------------------------------------------------------------------------ single and multi-frame files


def test_single_ct_file_is_a_one_slice_volume():
    path = get_testdata_file("CT_small.dcm")
    volume = load_volume(path)
    assert volume.shape == (1, 128, 128)
    assert volume.source.kind == "dicom-file" and volume.source.dicom.files == (path,)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert volume.geometry.spacing == pytest.approx((0.661468, 0.661468, float(ds.SliceThickness)))
    assert volume.geometry.origin == pytest.approx([float(x) for x in ds.ImagePositionPatient])
    assert -1100 < volume.array.min() and volume.array.max() < 3100  # HU, not stored values
    image = sitk.ReadImage(path)
    _assert_geometry_matches_sitk(volume.geometry, image)
    np.testing.assert_array_equal(volume.array[0], sitk.GetArrayFromImage(image)[0])


def test_one_file_of_a_series_loads_as_one_slice(tmp_path):
    paths = write_series(tmp_path / "s")
    volume = load_volume(paths[2])
    np.testing.assert_array_equal(volume.array[0], distinct_array()[2])
    np.testing.assert_allclose(volume.geometry.origin, oblique_flipped_geometry().index_to_physical([0, 0, 2])[0])


def test_enhanced_mr_without_plane_geometry_loads_on_an_identity_grid():
    """emri_small.dcm has no functional groups at all: ITK's fallback grid, slice spacing from its header."""
    volume = load_volume(get_testdata_file("emri_small.dcm"))
    assert volume.shape == (10, 64, 64) and volume.modality == "MR"
    assert volume.geometry.origin == (0.0, 0.0, 0.0)
    assert volume.geometry.spacing == pytest.approx((1.0, 1.0, 1.2))  # SpacingBetweenSlices
    assert volume.source.dicom.frame_numbers == tuple(range(1, 11))
    reference = pydicom.dcmread(get_testdata_file("emri_small.dcm")).pixel_array
    np.testing.assert_array_equal(volume.array, reference)


def test_enhanced_ct_is_stacked_along_the_normal_with_its_frame_numbers():
    """eCT_Supplemental.dcm: rows run -x, so the normal is -z; frame 2 (z=-149) comes first."""
    volume = load_volume(get_testdata_file("eCT_Supplemental.dcm"))
    assert volume.shape == (2, 512, 512)
    assert volume.geometry.origin == pytest.approx((99.5, -301.5, -149.0))
    assert volume.geometry.spacing == pytest.approx((0.388672, 0.388672, 10.0))
    np.testing.assert_allclose(volume.geometry.direction_matrix, np.diag([-1.0, 1.0, -1.0]), atol=1e-9)
    assert volume.source.dicom.frame_numbers == (2, 1)


def test_legacy_converted_multiframe_equals_its_single_frame_series(tmp_path):
    highdicom = pytest.importorskip("highdicom")
    paths = write_series(tmp_path / "s")
    multiframe = highdicom.legacy.LegacyConvertedEnhancedCTImage(
        [pydicom.dcmread(p) for p in paths],
        series_instance_uid=highdicom.UID(),
        series_number=9,
        sop_instance_uid=highdicom.UID(),
        instance_number=1,
    )
    (tmp_path / "mf").mkdir()
    multiframe.save_as(tmp_path / "mf" / "mf.dcm")
    series, volume = load_volume(tmp_path / "s"), load_volume(tmp_path / "mf")  # a folder with one object
    assert volume.source.kind == "dicom-file"
    np.testing.assert_array_equal(volume.array, series.array)
    assert volume.geometry.is_close(series.geometry, tol_mm=1e-6)
    info = volume.source.dicom
    assert info.is_multiframe and info.files == (str(tmp_path / "mf" / "mf.dcm"),)
    frames = pydicom.dcmread(info.files[0], stop_before_pixels=True).PerFrameFunctionalGroupsSequence
    for k, number in enumerate(info.frame_numbers):  # frame_numbers[k] really is slice k's frame
        position = [float(x) for x in frames[number - 1].PlanePositionSequence[0].ImagePositionPatient]
        np.testing.assert_allclose(position, volume.geometry.index_to_physical([0, 0, k])[0], atol=1e-4)


def _move_slice(path: Path, offset_mm: np.ndarray) -> None:
    ds = pydicom.dcmread(path)
    position = np.array([float(x) for x in ds.ImagePositionPatient]) + offset_mm
    ds.ImagePositionPatient = [pydicom.valuerep.DSfloat(float(x), auto_format=True) for x in position]
    ds.save_as(path)


@pytest.mark.parametrize("implicit_vr", [True, False])
def test_files_without_preamble_and_file_meta_are_read(tmp_path, implicit_vr):
    """Old ACR-NEMA-style files (no 128-byte preamble, no file meta) still turn up; GDCM reads them, so do we."""
    paths = write_series(tmp_path / "s")
    for path in paths:
        ds = pydicom.dcmread(path)
        del ds.file_meta
        ds.preamble = None
        pydicom.dcmwrite(path, ds, enforce_file_format=False, implicit_vr=implicit_vr, little_endian=True)
    assert paths[0].read_bytes()[:2] == b"\x08\x00"
    volume = load_volume(tmp_path / "s")
    np.testing.assert_array_equal(volume.array, distinct_array())
    assert volume.geometry.is_close(oblique_flipped_geometry(), tol_mm=1e-6)


def test_jpeg_lossless_is_decoded_or_the_missing_codec_is_named():
    """JPEG Lossless (process 14) is what many PACS send; it needs python-gdcm (or pylibjpeg-libjpeg)."""
    from pydicom.pixels import get_decoder

    path = get_testdata_file("JPEG-LL.dcm")
    if get_decoder(pydicom.uid.JPEGLosslessSV1).is_available:
        volume = load_volume(path)
        np.testing.assert_array_equal(volume.array[0], pydicom.dcmread(path).pixel_array)
    else:
        with pytest.raises(InputError, match="JPEG Lossless.*cannot decode: pip install python-gdcm"):
            load_volume(path)


def test_transfer_syntax_without_a_codec_is_named(tmp_path):
    paths = write_series(tmp_path / "s")
    ds = pydicom.dcmread(paths[0])
    ds.file_meta.TransferSyntaxUID = "1.2.826.0.1.3680043.8.498.999"  # a private syntax no plugin knows
    ds.save_as(paths[0])
    with pytest.raises(InputError, match=f"{paths[0].name} is compressed as the unknown transfer syntax .*gdcmconv"):
        load_volume(tmp_path / "s")
