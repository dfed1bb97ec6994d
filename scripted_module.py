"""Slicer module "Reasoning Segmentation" (placeholder until the Slicer issue lands).

Slicer names a scripted module after its file: this file is ``scripted_module.py`` because a
``MedSegReasoning.py`` would shadow the ``MedSegReasoning`` package. It stays thin and never imports torch:
the engine runs in its own process and is reached through a client.
"""

from __future__ import annotations

try:  # inside Slicer
    from slicer.ScriptedLoadableModule import ScriptedLoadableModule
except ImportError:  # outside Slicer (tests, packaging): keep the file importable
    ScriptedLoadableModule = object  # type: ignore[assignment,misc]


class scripted_module(ScriptedLoadableModule):  # noqa: N801 - Slicer requires the class to match the file name
    """Module metadata shown in Slicer's module list."""

    def __init__(self, parent=None) -> None:
        if parent is None:
            return
        ScriptedLoadableModule.__init__(self, parent)
        parent.title = "Reasoning Segmentation"
        parent.categories = ["Segmentation"]
        parent.contributors = ["MedSegReasoning contributors"]
        parent.helpText = (
            "Ask a question about the loaded scan and get a segmentation with the reasoning behind it. "
            "Research use only, not for diagnosis."
        )
        parent.acknowledgementText = "Builds on LiteMedSAM (MedSAM), segment-anything and highdicom."
