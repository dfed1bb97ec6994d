"""The ONNX export cache: named by weights and settings, written atomically, re-exported when damaged."""

from __future__ import annotations

import pytest
import torch

from MedSegReasoning.errors import ModelError
from MedSegReasoning.segmentation import _onnx


class Doubler(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x


class Broken(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("cannot trace this")


def export_doubler(path):
    _onnx.export_onnx(Doubler(), (torch.zeros(1, 3),), path, opset=17, input_names=["x"], output_names=["y"])


def test_names_depend_on_weights_and_settings(tmp_path, monkeypatch):
    a = _onnx.cached_model_path("m", "ab" * 32, {"opset": 17}, tmp_path)
    assert a.parent == tmp_path and a.name.startswith("m-abababababababab-") and a.suffix == ".onnx"
    assert a != _onnx.cached_model_path("m", "cd" * 32, {"opset": 17}, tmp_path)
    assert a != _onnx.cached_model_path("m", "ab" * 32, {"opset": 18}, tmp_path)
    monkeypatch.setenv("MEDSEG_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert _onnx.cached_model_path("m", "ab" * 32, {}).parent == tmp_path / "elsewhere" / "onnx"


def test_exports_once_then_reuses(tmp_path):
    import numpy as np

    path = tmp_path / "doubler.onnx"
    calls = []
    session = _onnx.open_cached(path, lambda p: (calls.append(p), export_doubler(p)), torch.device("cpu"))
    assert session.run(None, {"x": np.ones((1, 3), np.float32)})[0].tolist() == [[2.0, 2.0, 2.0]]
    _onnx.open_cached(path, lambda p: calls.append(p), torch.device("cpu"))
    assert len(calls) == 1 and [p.name for p in tmp_path.iterdir()] == ["doubler.onnx"]


def test_a_failed_export_leaves_no_file(tmp_path):
    path = tmp_path / "broken.onnx"
    with pytest.raises(ModelError, match="backend 'torch'"):
        _onnx.export_onnx(Broken(), (torch.zeros(1),), path, opset=17, input_names=["x"], output_names=["y"])
    assert list(tmp_path.iterdir()) == []


def test_a_damaged_cached_file_is_exported_again(tmp_path):
    path = tmp_path / "doubler.onnx"
    path.write_bytes(b"truncated garbage")
    session = _onnx.open_cached(path, export_doubler, torch.device("cpu"))
    assert session.get_inputs()[0].name == "x"
