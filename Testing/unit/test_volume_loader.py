"""``load_volume`` dispatch: whatever the user gives, either a Volume or one InputError that says what to do."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from support.volume import distinct_array, write_series

from MedSegReasoning.volume import load_volume
from MedSegReasoning.wire.errors import EXIT_BAD_INPUT, InputError


def test_nonexistent_path(tmp_path):
    with pytest.raises(InputError, match="does not exist: check the path") as err:
        load_volume(tmp_path / "nowhere")
    assert err.value.exit_code == EXIT_BAD_INPUT


def test_text_file(tmp_path):
    (tmp_path / "notes.txt").write_text("the patient's scan is elsewhere\n")
    with pytest.raises(InputError, match="notes.txt is not an image this tool reads: give a DICOM folder or file"):
        load_volume(tmp_path / "notes.txt")


def test_empty_folder(tmp_path):
    with pytest.raises(InputError, match="is empty: give a folder that holds a DICOM series"):
        load_volume(tmp_path)


def test_folder_without_dicom_points_at_an_image_file_it_holds(tmp_path):
    (tmp_path / "notes.txt").write_text("hello\n")
    (tmp_path / "scan.nii.gz").write_bytes(b"")
    with pytest.raises(InputError, match=r"holds no DICOM files \(scan.nii.gz is NIfTI/NRRD: give that file"):
        load_volume(tmp_path)


def test_folder_with_only_text_files(tmp_path):
    (tmp_path / "a.txt").write_text("hello\n")
    with pytest.raises(InputError, match="holds no DICOM files: give a folder with a DICOM series"):
        load_volume(tmp_path)


def test_dicom_without_extension_is_found_by_content(tmp_path):
    paths = write_series(tmp_path / "s")
    bare = paths[0].rename(tmp_path / "IMAGE0")
    volume = load_volume(bare)
    assert volume.source.kind == "dicom-file" and volume.shape[0] == 1
    np.testing.assert_array_equal(volume.array[0], distinct_array()[0])


def test_series_option_with_a_nifti_file(tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    sitk.WriteImage(sitk.GetImageFromArray(distinct_array()), str(tmp_path / "v.nii.gz"))
    with pytest.raises(InputError, match="--series applies to DICOM input only"):
        load_volume(tmp_path / "v.nii.gz", series_uid="1.2.3")


def test_series_option_with_a_file_of_another_series(tmp_path):
    paths = write_series(tmp_path / "s")
    with pytest.raises(InputError, match="belongs to series .*, not 1.2.3"):
        load_volume(paths[0], series_uid="1.2.3")


def test_importing_the_package_stays_cheap():
    """The Slicer module imports it: no torch, and the readers' libraries only when a volume is read."""
    code = (
        "import sys, MedSegReasoning.volume as v; "
        "print(sorted(m for m in ('torch', 'pydicom', 'SimpleITK', 'highdicom', 'scipy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
