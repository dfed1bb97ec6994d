"""Scene writing against slicer-core's real MRML: voxels compared in physical space, never by index alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support.slicer import (
    blob_mask,
    flipped_geometry,
    load_volume_node,
    new_scene,
    oblique_geometry,
    ramp_array,
    require_slicer_core,
    save_and_reload,
    write_nrrd_lps,
)

from MedSegReasoning.terminology import map_label
from MedSegReasoning.wire.geometry import LPS_TO_RAS, Geometry
from MedSegReasoning.wire.masks import CompactMask

require_slicer_core()

import slicer  # noqa: E402
import vtk  # noqa: E402
from vtk.util import numpy_support  # noqa: E402

from MedSegReasoning.slicer.scene import (  # noqa: E402
    GridMismatch,
    SceneEntity,
    SessionScene,
    segment_tag,
    volume_geometry_lps,
)

GEOMETRIES = {"oblique": oblique_geometry, "flipped": flipped_geometry}
KIDNEY = map_label("left kidney", use_embedding=False)


def _entity(mask: np.ndarray, entity_id: str = "E1", key_slice: int = 2) -> SceneEntity:
    return SceneEntity(
        id=entity_id,
        name=KIDNEY.display_name,
        mask=CompactMask.from_dense(mask),
        color=(200, 100, 50),
        key_slice=key_slice,
        findings="Left kidney, 12.3 ml, no focal lesion.",
        terminology=KIDNEY.to_slicer_string(),
    )


def _session(tmp_path: Path, kind: str) -> tuple[SessionScene, Geometry, np.ndarray]:
    geometry = GEOMETRIES[kind]()
    array = ramp_array()
    path = write_nrrd_lps(tmp_path / f"{kind}.nrrd", array, geometry)
    scene = new_scene()
    volume = load_volume_node(scene, path)
    return SessionScene.create(scene, volume, "S1", geometry, array.shape), geometry, array


def _engine_ras(geometry: Geometry, mask_kji: np.ndarray) -> np.ndarray:
    """Where the engine says its mask voxels are: LPS from its own geometry, then to RAS."""
    k, j, i = np.nonzero(mask_kji)
    return geometry.index_to_physical(np.stack([i, j, k], axis=1)) @ LPS_TO_RAS.T


def _slicer_segment_ras(session: SessionScene, segment_id: str) -> np.ndarray:
    """Where Slicer's own labelmap of the segment puts its voxels (its image-to-world matrix, its extent)."""
    image = slicer.vtkOrientedImageData()
    assert slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
        session.segmentation_node, segment_id, image
    )
    x0, x1, y0, y1, z0, z1 = image.GetExtent()
    values = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(
        z1 - z0 + 1, y1 - y0 + 1, x1 - x0 + 1
    )
    k, j, i = np.nonzero(values == session.segmentation.GetSegment(segment_id).GetLabelValue())
    ijk1 = np.stack([i + x0, j + y0, k + z0, np.ones_like(i)], axis=1).astype(float)
    m = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(m)
    a = np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
    return (ijk1 @ a.T)[:, :3]


def _sorted(points: np.ndarray) -> np.ndarray:
    return points[np.lexsort(np.round(points, 3).T[::-1])]


@pytest.mark.parametrize("kind", sorted(GEOMETRIES))
def test_segment_lies_on_the_engine_voxels_in_physical_space(tmp_path: Path, kind: str) -> None:
    session, geometry, array = _session(tmp_path, kind)
    mask = blob_mask(array.shape)
    session.write_entity(_entity(mask))

    slicer_ras = _sorted(_slicer_segment_ras(session, "E1"))
    engine_ras = _sorted(_engine_ras(geometry, mask))
    assert slicer_ras.shape == engine_ras.shape
    np.testing.assert_allclose(slicer_ras, engine_ras, atol=1e-4)
    # And the volume's intensities under the segment are the engine's: same voxels, not just same count.
    node_array = slicer.util.arrayFromVolume(session.volume_node)
    np.testing.assert_array_equal(node_array[mask], array[mask])
    # The upload geometry the module derives from the node is the engine's.
    assert volume_geometry_lps(session.volume_node).is_close(geometry)


def test_name_colour_terminology_and_reference_geometry(tmp_path: Path) -> None:
    session, _, array = _session(tmp_path, "oblique")
    session.write_entity(_entity(blob_mask(array.shape)))
    segment = session.segmentation.GetSegment("E1")
    assert segment.GetName() == "Left kidney"
    assert segment.GetTerminology() == KIDNEY.to_slicer_string()
    assert "^64033007^Kidney" in segment.GetTerminology() and "^7771000^Left" in segment.GetTerminology()
    np.testing.assert_allclose(segment.GetColor(), (200 / 255, 100 / 255, 50 / 255))
    role = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
    assert session.segmentation_node.GetNodeReference(role) is session.volume_node


@pytest.mark.parametrize("kind", sorted(GEOMETRIES))
def test_markup_at_key_slice_centroid(tmp_path: Path, kind: str) -> None:
    session, geometry, array = _session(tmp_path, kind)
    mask = blob_mask(array.shape)
    session.write_entity(_entity(mask, key_slice=2))
    node = session.markup_node("E1")
    assert node.GetNumberOfControlPoints() == 1
    assert node.GetNthControlPointLabel(0) == "E1"
    assert node.GetNthControlPointDescription(0) == "Left kidney, 12.3 ml, no focal lesion."
    js, is_ = np.nonzero(mask[2])
    expected = geometry.index_to_physical([is_.mean(), js.mean(), 2.0]) @ LPS_TO_RAS.T
    np.testing.assert_allclose(node.GetNthControlPointPosition(0), expected[0], atol=1e-4)


def test_seg_nrrd_read_back_by_slicerio(tmp_path: Path) -> None:
    slicerio = pytest.importorskip("slicerio")
    session, geometry, array = _session(tmp_path, "oblique")
    mask = blob_mask(array.shape)
    session.write_entity(_entity(mask))
    storage = session.segmentation_node.CreateDefaultStorageNode()
    path = tmp_path / "session.seg.nrrd"
    storage.SetFileName(str(path))
    assert storage.WriteData(session.segmentation_node)

    seg = slicerio.read_segmentation(str(path))
    (info,) = seg["segments"]
    assert info["name"] == "Left kidney"
    np.testing.assert_allclose(info["color"], (200 / 255, 100 / 255, 50 / 255), atol=1e-3)
    assert info["terminology"]["type"] == ["SCT", "64033007", "Kidney"]
    assert info["terminology"]["typeModifier"] == ["SCT", "7771000", "Left"]
    voxels = seg["voxels"]  # slicerio: [i, j, k] order, geometry in LPS
    ii, jj, kk = np.nonzero(voxels == info["labelValue"])
    lps = np.stack([ii, jj, kk, np.ones_like(ii)], axis=1) @ np.asarray(seg["ijkToLPS"]).T
    np.testing.assert_allclose(
        _sorted(lps[:, :3]), _sorted(geometry.index_to_physical(np.stack(np.nonzero(mask)[::-1], axis=1))), atol=1e-4
    )


def test_edit_in_slicer_is_reported_as_the_new_mask(tmp_path: Path) -> None:
    session, _, array = _session(tmp_path, "flipped")
    mask = blob_mask(array.shape)
    session.write_entity(_entity(mask))
    assert session.changes() == []

    edited = mask.copy()
    edited[4, 14:17, 3:6] = True  # what a Segment Editor paint stroke does: new voxels on another slice
    edited[1, 4, 5] = False
    image = slicer.vtkOrientedImageData()
    m = vtk.vtkMatrix4x4()
    session.volume_node.GetIJKToRASMatrix(m)
    image.SetImageToWorldMatrix(m)
    image.SetExtent(session.volume_node.GetImageData().GetExtent())
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(edited.astype(np.uint8).ravel(), deep=1))
    slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(image, session.segmentation_node, "E1")

    (change,) = session.changes()
    assert change.entity_id == "E1" and change.name is None and change.color is None
    np.testing.assert_array_equal(change.mask.to_dense(array.shape), edited)
    session.acknowledge("E1", change.mask)
    assert session.changes() == []


def test_rename_recolour_review_and_delete(tmp_path: Path) -> None:
    session, _, array = _session(tmp_path, "oblique")
    session.write_entity(_entity(blob_mask(array.shape)))
    segment = session.segmentation.GetSegment("E1")
    segment.SetName("Kidney (upper pole)")  # the user renames in the Segmentations module
    (change,) = session.changes(names={"E1": "Left kidney"}, colors={"E1": (200, 100, 50)})
    assert change.name == "Kidney (upper pole)" and change.mask is None and change.color is None

    session.recolor("E1", (10, 20, 30))
    assert session.changes(colors={"E1": (10, 20, 30)}) == []
    session.set_review("E1", "rejected")
    assert session.review_of("E1") == "rejected"
    assert not session.segmentation_node.GetDisplayNode().GetSegmentVisibility("E1")
    session.set_review("E1", "confirmed")
    assert session.segmentation_node.GetDisplayNode().GetSegmentVisibility("E1")
    session.remove_entity("E1")
    assert session.entity_ids() == [] and session.markup_node("E1") is None


def test_refuses_a_volume_that_is_not_the_engines_grid(tmp_path: Path) -> None:
    session, geometry, array = _session(tmp_path, "oblique")
    moved = Geometry.from_arrays(np.add(geometry.origin, (0.0, 0.0, 1.0)), geometry.spacing, geometry.direction)
    with pytest.raises(GridMismatch, match="geometry"):
        SessionScene.create(session.scene, session.volume_node, "S2", moved, array.shape)
    with pytest.raises(GridMismatch, match="shape"):
        SessionScene.create(session.scene, session.volume_node, "S3", geometry, (5, 20, 24))


def test_saved_scene_reloads_segments_markups_and_conversation(tmp_path: Path) -> None:
    session, geometry, array = _session(tmp_path, "oblique")
    mask = blob_mask(array.shape)
    session.write_entity(_entity(mask))
    second = np.zeros(array.shape, dtype=bool)
    second[3:5, 14:18, 16:22] = True
    session.write_entity(_entity(second, entity_id="E2", key_slice=3))
    session.set_review("E1", "confirmed")
    session.store_conversation('{"session": "S1", "rounds": [{"question": "where is the left kidney?"}]}')

    reloaded = save_and_reload(session.scene, tmp_path / "saved")
    assert SessionScene.session_ids(reloaded) == ["S1"]
    back = SessionScene.find(reloaded, "S1")
    assert back is not None and back.entity_ids() == ["E1", "E2"]
    assert back.geometry.is_close(geometry)
    np.testing.assert_array_equal(back.current_mask("E1").to_dense(array.shape), mask)
    np.testing.assert_array_equal(back.current_mask("E2").to_dense(array.shape), second)
    assert back.review_of("E1") == "confirmed" and back.review_of("E2") == "proposed"
    assert back.changes() == []  # the written-mask digests came back with the segments
    assert back.markup_node("E2").GetNthControlPointLabel(0) == "E2"
    assert "left kidney" in back.load_conversation()
    assert segment_tag(back.segmentation.GetSegment("E1"), "MedSegReasoning.EntityId") == "E1"
