"""The module's name in Slicer, and what a scene saved under the old name needs to be found again.

Slicer names a scripted module after its file. The repository keeps the file as ``scripted_module.py`` (a
``MedSegReasoning.py`` would shadow the package it imports), and the build installs it as
``MedSegReasoningChat.py`` (CMakeLists.txt), so the installed module is ``MedSegReasoningChat``: a name no other
extension built from Slicer's template collides with (module settings, ``slicer.modules.medsegreasoningchat``,
self-test discovery), where ``scripted_module`` would.

Until that rename the module was ``scripted_module``, and Slicer tagged the module's parameter node (input volume and
session id, saved with the scene) with that name; ``adopt_old_parameter_node`` re-tags such a node, so a scene saved
before the rename still opens on its conversation. The module's own settings (``MedSegReasoning/...``: server,
token, consent, PACS, backend folder, verifier) never carried the module's name and need nothing.
"""

from __future__ import annotations

from typing import Any

MODULE_NAME = "MedSegReasoningChat"
OLD_MODULE_NAME = "scripted_module"
PARAMETER_NODE_CLASS = "vtkMRMLScriptedModuleNode"


def adopt_old_parameter_node(scene: Any) -> bool:
    """Give a parameter node saved under the old module name to this module, so the input volume and session saved
    with a scene before the rename are found again. Without a node of its own the module takes the old one over
    (re-tagged); with a blank one of its own (as after a scene close, which keeps singletons but resets them) the old
    node's parameters and references move into it. A module node that already holds something is left alone. True
    when something was adopted."""
    old = scene.GetSingletonNode(OLD_MODULE_NAME, PARAMETER_NODE_CLASS) if scene is not None else None
    if old is None or old.GetAttribute("ModuleName") not in (None, OLD_MODULE_NAME):
        return False
    new = scene.GetSingletonNode(MODULE_NAME, PARAMETER_NODE_CLASS)
    if new is None:
        old.SetSingletonTag(MODULE_NAME)
        old.SetAttribute("ModuleName", MODULE_NAME)
        if (old.GetName() or "").startswith(OLD_MODULE_NAME):
            old.SetName(MODULE_NAME)
        return True
    if not _blank(new):
        return False
    for name in old.GetParameterNames():
        new.SetParameter(name, old.GetParameter(name))
    for role in _reference_roles(old):
        new.SetNodeReferenceID(role, old.GetNodeReferenceID(role))
    scene.RemoveNode(old)
    return True


def _reference_roles(node: Any) -> list[str]:
    roles = (node.GetNthNodeReferenceRole(n) for n in range(node.GetNumberOfNodeReferenceRoles()))
    return [role for role in roles if node.GetNodeReferenceID(role)]


def _blank(node: Any) -> bool:
    return not _reference_roles(node) and not any(node.GetParameter(name) for name in node.GetParameterNames())
