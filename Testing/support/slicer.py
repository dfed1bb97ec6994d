"""Volumes for the Slicer-side tests, built so that the test's truth never passes through the code under test.

A test volume is defined in the engine's terms (LPS ``Geometry`` + ``[k, j, i]`` array), written as a NRRD file by
hand (``space: left-posterior-superior``) and loaded into a real ``vtkMRMLScene`` by Slicer's own NRRD reader. So the
RAS grid of the volume node comes from Slicer, not from ``MedSegReasoning.slicer.scene``'s conversion.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from MedSegReasoning.wire.geometry import Geometry


def require_slicer_core() -> None:
    """Skip with the install line when slicer-core's MRML is absent (and refuse the unrelated PyPI ``slicer``)."""
    if importlib.util.find_spec("slicer") is None or importlib.util.find_spec("vtk") is None:
        pytest.skip("slicer-core is not installed: pip install slicer-core==5.13.31053.0")
    import slicer

    if not hasattr(slicer, "vtkMRMLScene"):
        pytest.skip("the installed 'slicer' package is not slicer-core (PyPI 'slicer' shadows it): install slicer-core")


def rotation(axis: str, degrees: float) -> np.ndarray:
    t = np.radians(degrees)
    c, s = np.cos(t), np.sin(t)
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def oblique_geometry() -> Geometry:
    """Rotated about two axes, anisotropic spacing, origin off zero: every axis mixes L, P and S."""
    direction = rotation("z", 30.0) @ rotation("x", 20.0)
    return Geometry.from_arrays((-12.5, 40.0, 7.25), (0.8, 0.6, 2.5), direction)


def flipped_geometry() -> Geometry:
    """Axis-aligned but i runs right-to-left's opposite and k runs inferior (a flipped DICOM-like stack)."""
    direction = np.diag([-1.0, 1.0, -1.0])
    return Geometry.from_arrays((100.0, -50.0, 30.0), (0.7, 0.9, 3.0), direction)


def ramp_array(shape_kji: tuple[int, int, int] = (6, 20, 24)) -> np.ndarray:
    """An asymmetric intensity ramp: any axis swap or flip changes values, so a wrong read is visible."""
    k, j, i = np.indices(shape_kji)
    return (i + 100 * j + 10000 * k).astype(np.int32)


def write_nrrd_lps(path: Path, array_kji: np.ndarray, geometry: Geometry) -> Path:
    """A raw NRRD in LPS written from first principles (NRRD spec): columns of ``space directions`` are axis*spacing."""
    axes = geometry.direction_matrix * np.asarray(geometry.spacing)[None, :]
    vectors = " ".join("(" + ",".join(f"{v:.10g}" for v in axes[:, n]) + ")" for n in range(3))
    nk, nj, ni = array_kji.shape
    header = (
        "NRRD0004\n"
        "type: int32\n"
        "dimension: 3\n"
        "space: left-posterior-superior\n"
        f"sizes: {ni} {nj} {nk}\n"
        f"space directions: {vectors}\n"
        "kinds: domain domain domain\n"
        "endian: little\n"
        "encoding: raw\n"
        "space origin: (" + ",".join(f"{v:.10g}" for v in geometry.origin) + ")\n\n"
    )
    path.write_bytes(header.encode("ascii") + np.ascontiguousarray(array_kji, dtype="<i4").tobytes())
    return path


def new_scene():
    """A real vtkMRMLScene with what Slicer's Markups module registers at start-up (its JSON storage node).

    Without it a markups node cannot create its storage node in slicer-core, so it would not be saved with the scene.
    """
    import slicer

    scene = slicer.vtkMRMLScene()
    scene.RegisterNodeClass(slicer.vtkMRMLMarkupsJsonStorageNode())
    return scene


def load_volume_node(scene, path: Path, name: str = "input"):
    """Load a NRRD with Slicer's own reader (vtkMRMLVolumeArchetypeStorageNode)."""
    import slicer

    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    node.SetAndObserveStorageNodeID(storage.GetID())
    assert storage.ReadData(node), f"Slicer could not read {path}"
    assert isinstance(node, slicer.vtkMRMLScalarVolumeNode)
    return node


def blob_mask(shape_kji: tuple[int, int, int]) -> np.ndarray:
    """An asymmetric 3D blob away from the edges (an L-shape on each slice), so flips and swaps show."""
    m = np.zeros(shape_kji, dtype=bool)
    m[1:4, 4:12, 5:9] = True
    m[1:4, 9:12, 9:16] = True
    m[2, 5, 14] = True
    return m


def paint_segment(volume_node, segmentation_node, segment_id: str, dense: np.ndarray) -> None:
    """What a Segment Editor stroke leaves behind: the segment's labelmap replaced by ``dense`` ([k, j, i] on the
    volume's grid)."""
    import slicer
    import vtk
    from vtk.util import numpy_support

    image = slicer.vtkOrientedImageData()
    m = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(m)
    image.SetImageToWorldMatrix(m)
    image.SetExtent(volume_node.GetImageData().GetExtent())
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(dense.astype(np.uint8).ravel(), deep=1))
    assert slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        image, segmentation_node, segment_id, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE
    )


def save_and_reload(scene, folder: Path):
    """Save ``scene`` as a Slicer scene does (each storable node to its own file, then the .mrml) into ``folder``,
    then import it into a fresh scene and return that: what a user's File > Save, then File > Open would give."""
    import slicer

    folder.mkdir(parents=True, exist_ok=True)
    scene.SetRootDirectory(str(folder))
    scene.SetURL(str(folder / "scene.mrml"))
    for n in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(n)
        if isinstance(node, slicer.vtkMRMLStorableNode) and node.GetSaveWithScene() and node.GetID():
            if node.GetStorageNode() is None:
                node.AddDefaultStorageNode()
            storage = node.GetStorageNode()
            if storage is None:
                continue
            storage.SetFileName(str(folder / f"{node.GetID()}.{storage.GetDefaultWriteFileExtension()}"))
            assert storage.WriteData(node), f"could not write {node.GetName()}"
    assert scene.Commit()
    reloaded = new_scene()
    reloaded.SetURL(str(folder / "scene.mrml"))
    assert reloaded.Import()
    return reloaded


# -- the module's Logic without the Slicer application ---------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]


class _Settings:
    """``qt.QSettings`` for the test: one dict shared by every instance, as the real settings file is."""

    store: dict = {}

    def value(self, key, default=None):
        return self.store.get(key, default)

    def setValue(self, key, value):
        self.store[key] = value


def logic_module(monkeypatch, scene):
    """``scripted_module`` imported with slicer-core as ``slicer`` and stand-ins only for what needs the application."""
    import importlib
    import types

    import slicer

    ns = types.SimpleNamespace
    qt_stub = types.ModuleType("qt")
    qt_stub.QSettings = _Settings
    slm = types.ModuleType("slicer.ScriptedLoadableModule")

    class Logic:
        def __init__(self):
            pass

    slm.ScriptedLoadableModule = type("ScriptedLoadableModule", (), {})
    slm.ScriptedLoadableModuleWidget = type("ScriptedLoadableModuleWidget", (), {})
    slm.ScriptedLoadableModuleLogic, slm.ScriptedLoadableModuleTest = Logic, type("ScriptedLoadableModuleTest", (), {})
    pnw = types.ModuleType("slicer.parameterNodeWrapper")
    pnw.parameterNodeWrapper = lambda cls: cls
    monkeypatch.setitem(sys.modules, "qt", qt_stub)
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", slm)
    monkeypatch.setitem(sys.modules, "slicer.parameterNodeWrapper", pnw)
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    monkeypatch.delitem(sys.modules, "scripted_module", raising=False)
    monkeypatch.syspath_prepend(str(ROOT))
    module = importlib.import_module("scripted_module")
    monkeypatch.delitem(sys.modules, "scripted_module")
    return module, ns
