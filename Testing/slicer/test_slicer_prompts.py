"""Clicks, boxes and the current view, read from real MRML nodes (slicer-core) on oblique and flipped volumes:
what the user placed lands on the voxels under it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support.slicer import (
    flipped_geometry,
    load_volume_node,
    new_scene,
    oblique_geometry,
    ramp_array,
    require_slicer_core,
    rotation,
    write_nrrd_lps,
)

SHAPE = (6, 20, 24)


@pytest.fixture(params=["oblique", "flipped"])
def volume(request, tmp_path: Path):
    require_slicer_core()
    geometry = oblique_geometry() if request.param == "oblique" else flipped_geometry()
    scene = new_scene()
    node = load_volume_node(scene, write_nrrd_lps(tmp_path / "v.nrrd", ramp_array(SHAPE), geometry))
    return scene, node


def _ijk_to_ras(node) -> np.ndarray:
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def _ras(node, ijk) -> list[float]:
    return list((_ijk_to_ras(node) @ np.array([*ijk, 1.0]))[:3])


def test_points_and_a_roi_become_the_voxels_under_them(volume):
    from MedSegReasoning.slicer.prompts import (
        control_points_ras,
        prompts_from_markups,
        ras_to_ijk_of_volume,
        roi_corners_of_node,
    )

    scene, node = volume
    include = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "include")
    exclude = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "exclude")
    include.AddControlPoint(*_ras(node, (5, 7, 2)))
    include.AddControlPoint(*_ras(node, (30, 7, 2)))  # outside the volume (i < 24): left out, not sent
    exclude.AddControlPoint(*_ras(node, (9.3, 11.8, 2.2)))  # rounds to the nearest voxel centre
    # a ROI aligned with the volume's axes around voxels i 4..10, j 6..12 on slice k = 3 (one slice thick)
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
    ijk_to_ras = _ijk_to_ras(node)
    axes = ijk_to_ras[:3, :3]
    unit = axes / np.linalg.norm(axes, axis=0)
    centre = (ijk_to_ras @ np.array([7.0, 9.0, 3.0, 1.0]))[:3]
    object_to_world = np.eye(4)
    object_to_world[:3, :3], object_to_world[:3, 3] = unit, centre
    import vtk

    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, object_to_world[r, c])
    roi.SetAndObserveObjectToNodeMatrix(m)
    spacing = np.linalg.norm(axes, axis=0)
    roi.SetSize(*(np.array([6.9, 6.9, 0.9]) * spacing))

    prompts = prompts_from_markups(
        control_points_ras(include),
        control_points_ras(exclude),
        [roi_corners_of_node(roi)],
        ras_to_ijk_of_volume(node),
        SHAPE,
    )
    assert prompts["points"] == [[5, 7, 2, 1], [9, 12, 2, 0]]
    assert prompts["boxes"] == [[4, 6, 3, 10, 12, 3]]


def test_the_view_names_the_volume_plane_nearest_its_normal(volume):
    import slicer
    import vtk

    from MedSegReasoning.slicer.prompts import view_context_of_slice_node

    scene, node = volume
    ijk_to_ras = _ijk_to_ras(node)
    unit = ijk_to_ras[:3, :3] / np.linalg.norm(ijk_to_ras[:3, :3], axis=0)
    cases = {
        "axial": (unit[:, 0], unit[:, 1], unit[:, 2], (11, 9, 4), 4),
        "coronal": (unit[:, 0], unit[:, 2], unit[:, 1], (11, 13, 2), 13),
        "sagittal": (unit[:, 1], unit[:, 2], unit[:, 0], (17, 9, 2), 17),
    }
    for orientation, (x, y, normal, ijk, index) in cases.items():
        # a slice view a few degrees off the voxel plane still names it
        tilt = rotation("x", 4.0)
        slice_to_ras = np.eye(4)
        slice_to_ras[:3, 0], slice_to_ras[:3, 1], slice_to_ras[:3, 2] = x, y, tilt @ normal
        slice_to_ras[:3, 3] = (ijk_to_ras @ np.array([*ijk, 1.0]))[:3]
        slice_node = slicer.vtkMRMLSliceNode()
        matrix = vtk.vtkMatrix4x4()
        for r in range(4):
            for c in range(4):
                matrix.SetElement(r, c, slice_to_ras[r, c])
        slice_node.GetSliceToRAS().DeepCopy(matrix)
        assert view_context_of_slice_node(slice_node, node, SHAPE) == {"orientation": orientation, "slice": index}
    # a view whose centre lies outside the volume gives no context
    slice_to_ras[:3, 3] = (ijk_to_ras @ np.array([40, 9, 2, 1.0]))[:3]  # the sagittal view, beyond i = 23
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, slice_to_ras[r, c])
    slice_node.GetSliceToRAS().DeepCopy(matrix)
    assert view_context_of_slice_node(slice_node, node, SHAPE) is None
