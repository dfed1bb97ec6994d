"""The markups nodes the user places prompts in: clicks inside (include) and outside (exclude) the structure and a
box, one node per role, tagged with ``scene.ATTR_ROLE`` so that they are found again after a scene load. What they
hold goes with the next question as voxel indices of the input volume (``prompts.py`` converts), and is cleared
once sent so that the next question starts clean.

Runs against Slicer's MRML (``slicer.mrmlScene``, read when called); ``slicer-core`` provides it in tests.
"""

from __future__ import annotations

from typing import Any

from .prompts import control_points_ras, prompts_from_markups, ras_to_ijk_of_volume, roi_corners_of_node
from .scene import ATTR_ROLE, volume_shape_kji

PROMPT_INCLUDE, PROMPT_EXCLUDE, PROMPT_BOX = "prompt-include", "prompt-exclude", "prompt-box"
PROMPT_NODES = {
    PROMPT_INCLUDE: ("vtkMRMLMarkupsFiducialNode", "MedSeg inside", (0.2, 0.8, 0.2)),
    PROMPT_EXCLUDE: ("vtkMRMLMarkupsFiducialNode", "MedSeg outside", (0.9, 0.2, 0.2)),
    PROMPT_BOX: ("vtkMRMLMarkupsROINode", "MedSeg box", (0.9, 0.8, 0.2)),
}


def prompt_node(role: str) -> Any:
    """The markups node the user places clicks (inside/outside) or a box in; found again after a scene load."""
    import slicer

    for node in slicer.util.getNodesByClass(PROMPT_NODES[role][0]):
        if node.GetAttribute(ATTR_ROLE) == role:
            return node
    class_name, name, color = PROMPT_NODES[role]
    node = slicer.mrmlScene.AddNewNodeByClass(class_name, name)
    node.SetAttribute(ATTR_ROLE, role)
    node.CreateDefaultDisplayNodes()
    node.GetDisplayNode().SetSelectedColor(*color)
    return node


def pending_prompts(volume: Any) -> dict:
    """Clicks and the box placed in the slice views, as voxel indices of the input volume (``{}`` without one)."""
    if volume is None:
        return {}
    box = prompt_node(PROMPT_BOX)
    boxes = [roi_corners_of_node(box)] if min(box.GetSize()) > 0 else []  # placed (or drawn) with a size
    return prompts_from_markups(
        control_points_ras(prompt_node(PROMPT_INCLUDE)),
        control_points_ras(prompt_node(PROMPT_EXCLUDE)),
        boxes,
        ras_to_ijk_of_volume(volume),
        volume_shape_kji(volume),
    )


def clear_prompts() -> None:
    """Sent with a question: the clicks and the box are removed so the next question starts clean."""
    for role in PROMPT_NODES:
        prompt_node(role).RemoveAllControlPoints()
    prompt_node(PROMPT_BOX).SetSize(0.0, 0.0, 0.0)


def placement_row() -> tuple[Any, dict[str, Any]]:
    """Place buttons for clicks inside / outside the structure and a box (Slicer's markups place widget), in one row
    for the module's panel; also the place widget of each role (pointed at new nodes after a scene close)."""
    import qt
    import slicer

    row = qt.QWidget()
    layout = qt.QHBoxLayout(row)
    layout.setContentsMargins(0, 0, 0, 0)
    place_widgets = {}
    for role, text in ((PROMPT_INCLUDE, "Inside"), (PROMPT_EXCLUDE, "Outside"), (PROMPT_BOX, "Box")):
        layout.addWidget(qt.QLabel(text))
        place = slicer.qSlicerMarkupsPlaceWidget()
        place.setMRMLScene(slicer.mrmlScene)
        place.setCurrentNode(prompt_node(role))
        place.buttonsVisible = False
        place.placeButton().show()
        place.placeModePersistency = role != PROMPT_BOX
        layout.addWidget(place)
        place_widgets[role] = place
    layout.addStretch(1)
    return row, place_widgets
