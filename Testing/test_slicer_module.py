"""The Slicer module file without Slicer: it compiles, imports nothing heavy, uses only listed Slicer API names,
and its .ui file has every widget the code reaches for."""

from __future__ import annotations

import ast
import json
import py_compile
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "scripted_module.py"
UI = ROOT / "Resources" / "UI" / "scripted_module.ui"
API_NAMES = ROOT / "MedSegReasoning" / "slicer" / "slicer_api_names.json"
SCANNED = [MODULE, *sorted((ROOT / "MedSegReasoning" / "slicer").glob("*.py"))]
API_ROOTS = {"slicer", "qt", "ctk", "vtk"}
HEAVY = ("torch", "transformers", "onnxruntime", "SimpleITK", "pydicom", "highdicom", "fastapi")

STUBS = {
    "qt.py": "class QSettings:\n    def value(self, key, default=None): return default\n",
    "vtk.py": "",
    "slicer/__init__.py": "class vtkMRMLScalarVolumeNode: pass\n",
    "slicer/util.py": "class VTKObservationMixin:\n    def __init__(self): pass\n",
    "slicer/parameterNodeWrapper.py": "def parameterNodeWrapper(cls): return cls\n",
    "slicer/ScriptedLoadableModule.py": textwrap.dedent(
        """
        class ScriptedLoadableModule:
            def __init__(self, parent): self.parent = parent
        class ScriptedLoadableModuleWidget:
            def __init__(self, parent=None): pass
        class ScriptedLoadableModuleLogic:
            def __init__(self): pass
        class ScriptedLoadableModuleTest: pass
        """
    ),
}


def test_module_compiles() -> None:
    py_compile.compile(str(MODULE), doraise=True)


def test_module_imports_nothing_heavy_and_has_slicers_class_names(tmp_path: Path) -> None:
    for name, text in STUBS.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    probe = textwrap.dedent(
        f"""
        import sys, types
        sys.path[:0] = [{str(tmp_path)!r}, {str(ROOT)!r}]
        import scripted_module as m
        for suffix in ("", "Widget", "Logic", "Test", "ParameterNode"):
            assert hasattr(m, "scripted_module" + suffix), suffix
        parent = types.SimpleNamespace()
        m.scripted_module(parent)
        assert parent.title == "Reasoning Segmentation", parent.title
        assert parent.categories == ["Segmentation"]
        loaded = sorted(n for n in sys.modules if n.split(".")[0] in {HEAVY!r} or n == "numpy"
                        or n.startswith("MedSegReasoning."))
        print("LOADED", loaded)
        # The Slicer-side package itself must stay light too (numpy is fine there, it ships with Slicer).
        import MedSegReasoning.slicer.scene, MedSegReasoning.slicer.chat_panel
        heavy = sorted(n for n in sys.modules if n.split(".")[0] in {HEAVY!r})
        print("HEAVY", heavy)
        """
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "LOADED []" in result.stdout, result.stdout
    assert "HEAVY []" in result.stdout, result.stdout


def _api_chains(path: Path) -> set[str]:
    """Longest ``slicer.``/``qt.``/``ctk.``/``vtk.`` attribute chains and ``from slicer.x import y`` names in a file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    chains: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            parts, value = [node.attr], node.value
            while isinstance(value, ast.Attribute):
                parts.append(value.attr)
                value = value.value
            if isinstance(value, ast.Name) and value.id in API_ROOTS:
                chains.add(".".join([value.id, *reversed(parts)]))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in API_ROOTS:
            chains.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {c for c in chains if not any(other.startswith(c + ".") for other in chains)}


def test_every_slicer_api_name_used_is_listed() -> None:
    listed = set(json.loads(API_NAMES.read_text())["names"])
    used = set().union(*(_api_chains(p) for p in SCANNED))
    from MedSegReasoning.slicer.chat_panel import QT_NAMES

    used |= {f"qt.{n}" for n in QT_NAMES}  # resolved by name from Slicer's qt inside Slicer
    assert used, "the scan found nothing: it is broken"
    assert not used - listed, f"Slicer API names used but not in slicer_api_names.json: {sorted(used - listed)}"
    assert not listed - used, f"listed but no longer used (remove them): {sorted(listed - used)}"


def test_ui_file_has_the_widgets_the_module_uses() -> None:
    root = ET.parse(UI).getroot()
    names = {w.get("name") for w in root.iter("widget")}
    tree = ast.parse(MODULE.read_text())
    used = {
        n.attr
        for n in ast.walk(tree)
        if isinstance(n, ast.Attribute)
        and isinstance(n.value, ast.Attribute)
        and n.value.attr == "ui"
        and isinstance(n.value.value, ast.Name)
        and n.value.value.id == "self"
    }
    assert used and used <= names, f"widgets missing from the .ui: {sorted(used - names)}"
    bound = {p.find("string").text for p in root.iter("property") if p.get("name") == "SlicerParameterName"}
    fields = {
        t.target.id
        for cls in tree.body
        if isinstance(cls, ast.ClassDef) and cls.name == "scripted_moduleParameterNode"
        for t in cls.body
        if isinstance(t, ast.AnnAssign)
    }
    assert bound <= fields, f".ui binds parameters the parameter node lacks: {sorted(bound - fields)}"


def test_cmake_builds_the_module_with_its_resources() -> None:
    cmake = (ROOT / "CMakeLists.txt").read_text()
    assert "slicerMacroBuildScriptedModule" in cmake and "WITH_GENERIC_TESTS" in cmake
    assert "Resources/UI/${MODULE_NAME}.ui" in cmake and "Resources/Icons/${MODULE_NAME}.png" in cmake
    assert (ROOT / "Resources" / "Icons" / "scripted_module.png").is_file()
    assert "MedSegReasoning/*.py" in cmake  # the package ships beside the module file
