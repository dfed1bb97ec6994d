"""The real CT's reference organ labels, brought onto the CT's voxel grid in physical space.

The labels NIfTI stores its row axis flipped relative to the DICOM series, so array-index comparison
would be wrong; resampling through physical space (nearest neighbour) is right whatever the storage order.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from MedSegReasoning.volume.core import Volume


def reference_labels_on_ct_grid(shared_ct: Path, volume: Volume) -> np.ndarray:
    import SimpleITK as sitk

    labels = sitk.ReadImage(str(shared_ct / "reference-labels.nii.gz"))
    g = volume.geometry
    reference = sitk.Image(*volume.size_ijk, sitk.sitkUInt8)
    reference.SetOrigin(g.origin)
    reference.SetSpacing(g.spacing)
    reference.SetDirection(tuple(g.direction_matrix.ravel()))
    resampled = sitk.Resample(labels, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, labels.GetPixelID())
    return sitk.GetArrayFromImage(resampled)


def reference_on_ct_grid(shared_ct: Path, volume: Volume, name: str) -> np.ndarray:
    """Bool mask ``[k, j, i]`` of the organ called ``name`` in labels.json."""
    names = {v: int(k) for k, v in json.loads((shared_ct / "labels.json").read_text()).items()}
    return reference_labels_on_ct_grid(shared_ct, volume) == names[name]
