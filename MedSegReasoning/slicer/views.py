"""The slice views: which one the user is looking at (its plane and slice go with a question about "this slice"),
and jumping them to an entity when its chip is selected in the chat.

Runs against Slicer's MRML (``slicer.mrmlScene``, read when called); ``slicer-core`` provides it in tests.
"""

from __future__ import annotations

from typing import Any

from .prompts import view_context_of_slice_node
from .scene import ATTR_ENTITY_ID, volume_shape_kji


def current_view(volume: Any) -> dict | None:
    """The slice view the user last pointed at (the crosshair's), else the red one: its plane and slice."""
    import slicer

    if volume is None:
        return None
    slice_node = None
    crosshair = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLCrosshairNode")
    if crosshair is not None:
        slice_node = crosshair.GetCursorPositionXYZ([0.0, 0.0, 0.0])
    if slice_node is None:
        slice_node = slicer.mrmlScene.GetNodeByID("vtkMRMLSliceNodeRed")
    if slice_node is None:
        return None
    return view_context_of_slice_node(slice_node, volume, volume_shape_kji(volume))


def centre_on_entity(entity_id: str) -> None:
    """Jump the slice views to the entity's markup (its key-slice centroid)."""
    import slicer

    for node in slicer.util.getNodesByClass("vtkMRMLMarkupsFiducialNode"):
        if node.GetAttribute(ATTR_ENTITY_ID) == entity_id and node.GetNumberOfControlPoints():
            position = [0.0, 0.0, 0.0]
            node.GetNthControlPointPositionWorld(0, position)
            slicer.modules.markups.logic().JumpSlicesToLocation(*position, True)
            return
