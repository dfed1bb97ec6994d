"""NIfTI and NRRD through SimpleITK: oblique geometry survives, 4D and vector images are refused, labels are
written with exactly the volume's geometry."""

from __future__ import annotations

import numpy as np
import pytest
from support.volume import distinct_array, oblique_flipped_geometry

from MedSegReasoning.volume import load_volume
from MedSegReasoning.volume.core import Geometry, Volume
from MedSegReasoning.volume.itk_io import reorient_to_lps, write_label_image
from MedSegReasoning.wire.errors import InputError

sitk = pytest.importorskip("SimpleITK")

# NIfTI stores its affine as float32: geometry survives to about 1e-5, the format's own limit.
TOLERANCE = {".nrrd": 1e-12, ".nhdr": 1e-12, ".nii": 1e-5, ".nii.gz": 1e-5}


def _sitk_image(array: np.ndarray, geometry: Geometry):
    image = sitk.GetImageFromArray(array)
    image.SetOrigin(geometry.origin)
    image.SetSpacing(geometry.spacing)
    image.SetDirection(tuple(geometry.direction_matrix.ravel()))
    return image


def _assert_same_geometry(a: Geometry, b: Geometry, tol: float) -> None:
    np.testing.assert_allclose(a.origin, b.origin, atol=tol * 100)  # origins are ~100 mm: relative precision
    np.testing.assert_allclose(a.spacing, b.spacing, atol=tol)
    np.testing.assert_allclose(a.direction_matrix, b.direction_matrix, atol=tol)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".nhdr"])
def test_oblique_image_round_trips(tmp_path, suffix):
    geometry, array = oblique_flipped_geometry(), distinct_array()
    path = tmp_path / f"image{suffix}"
    sitk.WriteImage(_sitk_image(array, geometry), str(path))
    volume = load_volume(path)
    np.testing.assert_array_equal(volume.array, array)
    assert volume.array.dtype == np.int16
    _assert_same_geometry(volume.geometry, geometry, TOLERANCE[suffix])
    assert volume.source.kind == ("nrrd" if "nrrd" in suffix or "nhdr" in suffix else "nifti")
    assert volume.modality == ""


def test_nifti_ras_header_becomes_lps(tmp_path):
    """nibabel writes the affine in RAS; the volume must come back in LPS (x and y negated)."""
    nib = pytest.importorskip("nibabel")
    affine_ras = np.array([[-0.8, 0, 0, 30.0], [0, 0.9, 0, -20.0], [0, 0, 2.5, 10.0], [0, 0, 0, 1]])
    data_xyz = np.zeros((6, 5, 4), dtype=np.int16)  # nibabel's array is [i, j, k]
    data_xyz[4, 1, 2] = 7
    nib.save(nib.Nifti1Image(data_xyz, affine_ras), tmp_path / "ras.nii.gz")
    volume = load_volume(tmp_path / "ras.nii.gz")
    assert volume.shape == (4, 5, 6) and volume.array[2, 1, 4] == 7
    expected = np.diag([-1.0, -1.0, 1.0]) @ (affine_ras[:3, :3] @ [4, 1, 2] + affine_ras[:3, 3])
    np.testing.assert_allclose(volume.geometry.index_to_physical([4, 1, 2])[0], expected, atol=1e-4)


def test_float64_images_are_read_as_float32(tmp_path):
    array = distinct_array().astype(np.float64) / 7.0
    sitk.WriteImage(_sitk_image(array, oblique_flipped_geometry()), str(tmp_path / "f.nrrd"))
    volume = load_volume(tmp_path / "f.nrrd")
    assert volume.array.dtype == np.float32
    np.testing.assert_allclose(volume.array, array, rtol=1e-6)


def test_4d_nifti_is_refused(tmp_path):
    nib = pytest.importorskip("nibabel")
    nib.save(nib.Nifti1Image(np.zeros((6, 5, 4, 3), dtype=np.int16), np.eye(4)), tmp_path / "fmri.nii.gz")
    with pytest.raises(InputError, match="4D image with 3 volumes: extract the one 3D volume"):
        load_volume(tmp_path / "fmri.nii.gz")


def test_4d_nifti_with_one_volume_is_squeezed(tmp_path):
    image = sitk.GetImageFromArray(distinct_array()[None], isVector=False)
    sitk.WriteImage(image, str(tmp_path / "one.nii.gz"))
    np.testing.assert_array_equal(load_volume(tmp_path / "one.nii.gz").array, distinct_array())


def test_vector_image_is_refused(tmp_path):
    image = sitk.GetImageFromArray(np.zeros((4, 5, 6, 3), dtype=np.uint8), isVector=True)
    sitk.WriteImage(image, str(tmp_path / "rgb.nrrd"))
    with pytest.raises(InputError, match="3 values per voxel.*single-channel"):
        load_volume(tmp_path / "rgb.nrrd")


def test_garbage_with_a_nifti_name_is_refused(tmp_path):
    (tmp_path / "broken.nii.gz").write_bytes(b"not really gzip")
    with pytest.raises(InputError, match="could not be read as NIFTI.*check that the file is complete"):
        load_volume(tmp_path / "broken.nii.gz")


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz"])
def test_write_label_image_keeps_the_geometry(tmp_path, suffix):
    geometry = oblique_flipped_geometry()
    mask = (distinct_array() > 500).astype(np.uint8)
    path = write_label_image(tmp_path / "out" / f"labels{suffix}", mask, geometry)
    image = sitk.ReadImage(str(path))
    assert image.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), mask)
    read = Geometry.from_arrays(image.GetOrigin(), image.GetSpacing(), np.reshape(image.GetDirection(), (3, 3)))
    _assert_same_geometry(read, geometry, TOLERANCE[suffix])
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left behind


def test_write_label_image_refuses_other_formats(tmp_path):
    with pytest.raises(InputError, match=r"labels\.nhdr.*\.nii, \.nii\.gz, \.nrrd"):
        write_label_image(tmp_path / "labels.nhdr", np.zeros((2, 3, 4), np.uint8), oblique_flipped_geometry())


def test_reorient_to_lps_moves_no_voxel():
    ras_like = Geometry.from_arrays((98.0, 134.0, -72.0), (1.0, 1.2, 1.5), np.diag([-1.0, -1.0, 1.0]))
    volume = Volume(array=distinct_array(), geometry=ras_like)
    lps = reorient_to_lps(volume)
    np.testing.assert_allclose(lps.geometry.direction_matrix, np.eye(3))
    np.testing.assert_array_equal(lps.array, volume.array[:, ::-1, ::-1])
    for ijk in ([0, 0, 0], [10, 20, 3]):
        point = ras_like.index_to_physical(ijk)
        i, j, k = np.rint(lps.geometry.physical_to_index(point)[0]).astype(int)
        assert lps.array[k, j, i] == volume.array[ijk[2], ijk[1], ijk[0]]
