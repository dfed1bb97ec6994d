"""A scene's slice view rendered offscreen by Slicer's own machinery: its slice logic and displayable managers.

Why: a picture of what the module writes (segments, entity markups) must come from the code Slicer itself draws
with, or it proves nothing about the scene. Inside Slicer a ``qMRMLSliceWidget`` wires together a
``vtkMRMLSliceLogic`` (reslices and blends the volume layers into an RGBA image), an image actor that shows that
image, and the slice view's displayable managers (``vtkMRMLSegmentationsDisplayableManager2D`` draws segment fill
and outline, ``vtkMRMLMarkupsDisplayableManager`` the control points and their labels). Without Qt (the
``slicer-core`` wheel, VTK offscreen: EGL or OSMesa), ``render_slice_view`` wires the same three pieces itself,
as ``qMRMLSliceView`` does, into an offscreen render window, and returns the pixels with the slice node's XY->RAS
matrix, so a caller (the docs' pictures, the tests) can find where any RAS point landed.

Only what a running Slicer application provides is added when absent: the default colour tables (the volume's
grey scale) and the Markups module logic (markups widgets are created through it). The scene gains the nodes a
slice view has (a slice node and its composite node, named ``MedSegSnapshot``), as in Slicer.

This module imports ``slicer``, ``vtk`` and numpy only (the Slicer side never imports torch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

LAYOUT_NAME = "MedSegSnapshot"
ORIENTATIONS = ("Axial", "Coronal", "Sagittal")
OVERLAY_MANAGERS = ("vtkMRMLSegmentationsDisplayableManager2D", "vtkMRMLMarkupsDisplayableManager")


@dataclass(frozen=True)
class SliceSnapshot:
    """The rendered view: ``rgb`` (rows top to bottom) and the slice node's ``xy_to_ras`` (4x4; XY pixels with
    the origin at the bottom-left pixel's centre, as VTK's display coordinates)."""

    rgb: np.ndarray
    xy_to_ras: np.ndarray

    def ras_to_pixel(self, ras: np.ndarray) -> np.ndarray:
        """RAS points (n, 3) -> (column, row) in ``rgb`` (row 0 at the top), as floats."""
        ras = np.atleast_2d(np.asarray(ras, dtype=float))
        homogeneous = np.c_[ras, np.ones(len(ras))]
        xy = (np.linalg.inv(self.xy_to_ras) @ homogeneous.T).T
        height = self.rgb.shape[0]
        return np.c_[xy[:, 0], height - 1 - xy[:, 1]]


def render_slice_view(
    scene: Any,
    volume_node: Any,
    ras_point: tuple[float, float, float],
    *,
    orientation: str = "Axial",
    size: tuple[int, int] = (512, 512),
    window_level: tuple[float, float] | None = None,
    field_of_view_mm: float | None = None,
) -> SliceSnapshot:
    """Render ``volume_node`` as the background of a slice view through ``ras_point``, with every segmentation
    and markups node of ``scene`` drawn by Slicer's displayable managers; ``size`` is (width, height) in pixels.

    ``field_of_view_mm`` zooms to that width around ``ras_point`` (default: the whole volume, as Slicer's "fit").
    """
    import slicer
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    if orientation not in ORIENTATIONS:
        raise ValueError(f"orientation {orientation!r} is not one of {', '.join(ORIENTATIONS)}")
    width, height = size
    keep: list[Any] = []  # VTK objects the managers point at must outlive the render (Python would free them)
    app = slicer.vtkMRMLApplicationLogic()
    app.SetMRMLScene(scene)
    keep.append(app)
    keep += _application_pieces(scene, app)

    display = volume_node.GetDisplayNode()
    if display is None:
        volume_node.CreateDefaultDisplayNodes()
        display = volume_node.GetDisplayNode()
    if window_level is not None:
        display.AutoWindowLevelOff()
        display.SetWindowLevel(float(window_level[0]), float(window_level[1]))

    logic = slicer.vtkMRMLSliceLogic()
    logic.SetMRMLApplicationLogic(app)
    logic.SetMRMLScene(scene)
    keep.append(logic)
    slice_node = logic.AddSliceNode(LAYOUT_NAME)
    slice_node.SetDimensions(width, height, 1)
    getattr(slice_node, f"SetOrientationTo{orientation}")()
    logic.GetSliceCompositeNode().SetBackgroundVolumeID(volume_node.GetID())
    logic.FitSliceToAll()
    if field_of_view_mm is not None:  # zoomed: the point at the centre of the view
        slice_node.SetFieldOfView(field_of_view_mm, field_of_view_mm * height / width, slice_node.GetFieldOfView()[2])
        slice_node.JumpSliceByCentering(*ras_point)
    else:  # fitted: the whole volume in view, the slice through the point
        slice_node.JumpSliceByOffsetting(*ras_point)

    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(width, height)
    renderer = vtk.vtkRenderer()
    window.AddRenderer(renderer)
    interactor = vtk.vtkGenericRenderWindowInteractor()  # markups widgets need one, as in a slice view
    interactor.SetRenderWindow(window)
    mapper = vtk.vtkImageMapper()  # qMRMLSliceView: the slice logic's blended RGBA image, 1:1 on the view
    mapper.SetInputConnection(logic.GetImageDataConnection())
    mapper.SetColorWindow(255)
    mapper.SetColorLevel(127.5)
    actor = vtk.vtkActor2D()
    actor.SetMapper(mapper)
    renderer.AddViewProp(actor)
    keep += [window, renderer, interactor, mapper, actor]

    factory = slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance()
    factory.SetMRMLApplicationLogic(app)
    for name in OVERLAY_MANAGERS:
        if not factory.IsDisplayableManagerRegistered(name):
            factory.RegisterDisplayableManager(name)
    group = factory.InstantiateDisplayableManagers(renderer)
    group.SetMRMLDisplayableNode(slice_node)
    keep.append(group)
    window.Render()

    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.SetInputBufferTypeToRGB()
    grab.ReadFrontBufferOff()
    grab.Update()
    pixels = vtk_to_numpy(grab.GetOutput().GetPointData().GetScalars()).reshape(height, width, -1)
    rgb = np.ascontiguousarray(pixels[::-1, :, :3], dtype=np.uint8)  # VTK's rows start at the bottom
    matrix = slice_node.GetXYToRAS()
    xy_to_ras = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    group.SetMRMLDisplayableNode(None)
    window.Finalize()
    del keep
    return SliceSnapshot(rgb, xy_to_ras)


def _application_pieces(scene: Any, app: Any) -> list[Any]:
    """What a running Slicer has and a bare scene lacks: the default colour tables and the Markups logic."""
    import slicer

    pieces: list[Any] = []
    if scene.GetNodeByID("vtkMRMLColorTableNodeGrey") is None:
        colors = slicer.vtkMRMLColorLogic()
        colors.SetMRMLScene(scene)
        pieces.append(colors)
    if app.GetModuleLogic("Markups") is None:
        markups = slicer.vtkSlicerMarkupsLogic()
        markups.SetMRMLApplicationLogic(app)
        markups.SetMRMLScene(scene)
        app.SetModuleLogic("Markups", markups)
        pieces.append(markups)
    return pieces
