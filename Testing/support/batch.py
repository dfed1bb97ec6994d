"""Builders of the batch tests: tiny studies (NIfTI files, DICOM series), and segmenter sources a Ray actor can
build in its own process (a monkeypatched factory does not reach it). Plain builders, imported as
``support.batch``; the actors import them too (the tests put Testing/ on the workers' PYTHONPATH)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

BOX = "14,12,46,44,3"  # around every study's block (the blocks differ in size, so their volumes do)


def block_array(n: int) -> np.ndarray:
    """8 slices of 56 x 60: a bright block (200) whose size depends on ``n``, in soft tissue (-100)."""
    a = np.full((8, 56, 60), -100, dtype=np.int16)
    a[1:7, 16 : 36 + n, 18 : 38 + n] = 200
    return a


def write_nifti_study(path: Path, n: int) -> Path:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(block_array(n))
    image.SetSpacing((1.0, 1.0, 2.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def write_dicom_study(folder: Path, n: int, study_uid: str, description: str = "", slices: int = 8) -> Path:
    """A CT series of ``block_array(n)`` (its first ``slices`` slices) into ``folder``; several calls with one
    ``study_uid`` make a study folder of several series."""
    from MedSegReasoning.volume.core import Geometry
    from MedSegReasoning.volume.dicom_writer import SeriesDescriptors, write_dicom_series

    geometry = Geometry.from_arrays((0.0, 0.0, 0.0), (1.0, 1.0, 2.0), np.eye(3))
    descriptors = SeriesDescriptors(study_instance_uid=study_uid, series_description=description)
    folder = folder / description if description else folder
    write_dicom_series(block_array(n)[:slices], geometry, folder, descriptors=descriptors)
    return folder


class ThresholdSource:
    """Builds the tests' ``ThresholdSegmenter`` (any volume: the bright pixels in the box), in any process."""

    def __call__(self):
        from support.fakes import ThresholdSegmenter

        return ThresholdSegmenter()


class KillOnceSource:
    """A ``ThresholdSegmenter`` whose first prediction of the whole run kills its own process, as an OOM kill or a
    lost node would: ``marker`` (a file) records that it happened, so the retry of the study goes through."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __call__(self):
        from support.fakes import ThresholdSegmenter

        marker = self.marker

        class Killing(ThresholdSegmenter):
            def predict(self, prompt):
                if not os.path.exists(marker):
                    Path(marker).write_text(str(os.getpid()))
                    os._exit(1)
                return super().predict(prompt)

        return Killing()
