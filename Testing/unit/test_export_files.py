""".seg.nrrd as slicerio (Slicer's reader outside Slicer) sees it, and NIfTI label maps with their sidecar."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from support.export import run_session, write_ct

from MedSegReasoning.export.model import ModelNames, layers
from MedSegReasoning.export.nifti import write_nifti_labels
from MedSegReasoning.export.slicer_seg import write_seg_nrrd
from MedSegReasoning.export.sources import load_export_set


@pytest.fixture(scope="module")
def export_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("files")
    series = write_ct(root / "ct")
    run_session(root / "session", series)
    return load_export_set(root / "session", ModelNames("replay", "label-oracle"))


def _slicerio_masks(path):
    """Each segment's mask as slicerio reads it, back in our [k, j, i] order, and the file's ijk->LPS."""
    import slicerio

    segmentation = slicerio.read_segmentation(str(path))
    masks = {}
    for segment in segmentation["segments"]:
        voxels = slicerio.segment_mask(segmentation, segment)  # NRRD (i, j, k) order
        masks[segment["id"]] = np.transpose(voxels, (2, 1, 0)).astype(bool)
    return segmentation, masks


@pytest.mark.parametrize("overlapping", [True, False], ids=["two-layers", "one-layer"])
def test_seg_nrrd_reads_back_in_slicerio(export_set, tmp_path, overlapping):
    if not overlapping:  # the lesion carved out of the kidney: both fit one label map
        lesion, kidney = export_set.segments
        export_set = replace(export_set, segments=(lesion, replace(kidney, mask=kidney.mask & ~lesion.mask)))
    path = write_seg_nrrd(export_set, tmp_path / "s.seg.nrrd")
    segmentation, masks = _slicerio_masks(path)
    assert segmentation["voxels"].ndim == (4 if overlapping else 3)
    np.testing.assert_allclose(segmentation["ijkToLPS"], export_set.geometry.affine, atol=1e-9)
    by_id = {s["id"]: s for s in segmentation["segments"]}
    assert list(by_id) == ["E1", "E2"]
    for segment in export_set.segments:
        read = by_id[segment.entity_id]
        assert read["name"] == segment.name
        assert read["labelValue"] == segment.number
        np.testing.assert_allclose(read["color"], np.array(segment.color) / 255.0, atol=1e-5)
        terminology = read["terminology"]
        assert terminology["type"] == [
            segment.terminology.type.scheme,
            segment.terminology.type.value,
            segment.terminology.type.meaning,
        ]
        assert read["status"] == ("completed" if segment.review == "confirmed" else "inprogress")
        np.testing.assert_array_equal(masks[segment.entity_id], segment.mask)
    assert by_id["E1"]["terminology"]["anatomicRegionModifier"][2] == "Left"
    assert by_id["E2"]["terminology"]["typeModifier"][2] == "Left"


def test_nifti_label_maps_and_sidecar(export_set, tmp_path):
    import SimpleITK as sitk

    written = write_nifti_labels(export_set, tmp_path)
    assert [p.name for p in written] == ["labels.nii.gz", "labels-layer2.nii.gz", "labels.json"]
    sidecar = json.loads((tmp_path / "labels.json").read_text())
    assert sidecar["format"] == "medseg-reasoning/labels" and sidecar["files"] == [
        "labels.nii.gz",
        "labels-layer2.nii.gz",
    ]
    for segment, entry in zip(export_set.segments, sidecar["labels"], strict=True):
        assert (entry["value"], entry["id"], entry["name"]) == (segment.number, segment.entity_id, segment.name)
        assert entry["terminology"]["type"]["value"] == segment.terminology.type.value
        assert entry["slicer_terminology"] == segment.terminology.to_slicer_string()
        image = sitk.ReadImage(str(tmp_path / entry["file"]))
        assert np.allclose(image.GetOrigin(), export_set.geometry.origin, atol=1e-4)
        assert np.allclose(np.reshape(image.GetDirection(), (3, 3)), export_set.geometry.direction_matrix, atol=1e-5)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image) == segment.number, segment.mask)
    assert [e["algorithm_type"] for e in sidecar["labels"]] == ["AUTOMATIC", "SEMIAUTOMATIC"]


def test_layers_put_overlapping_masks_apart():
    a, b, c = (np.zeros((1, 1, 4), bool) for _ in range(3))
    a[..., :2] = True
    b[..., 1:3] = True  # overlaps a
    c[..., 3] = True  # fits beside a
    assert layers([a, b, c]) == [0, 1, 0]
