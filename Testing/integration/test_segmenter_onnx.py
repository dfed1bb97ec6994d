"""The ONNX export cache: named by weights and settings, written atomically, re-exported when damaged."""

from __future__ import annotations

import pytest
import torch

from MedSegReasoning.segmentation import _onnx
from MedSegReasoning.wire.errors import ModelError


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


# -- the opt-in int8 encoder (backend "onnx-int8") on the real CT ---------------------------------------------
@pytest.fixture(scope="module")
def int8_segmenter():
    from MedSegReasoning.segmentation.litemedsam import LiteMedSAMSegmenter

    return LiteMedSAMSegmenter(backend="onnx-int8")


@pytest.mark.slow
def test_int8_encoder_masks_agree_with_fp32_on_a_real_ct_slice(litemedsam, int8_segmenter, shared_ct):
    """The int8 encoder's masks match fp32's (Dice >= 0.99) and keep the fp32 Dice against the reference."""
    import onnx
    from support.segmenter import dice, load_ct_case, organ_case

    from MedSegReasoning.segmentation.base import Prompt2D, box_from_mask

    assert litemedsam.backend == "openvino" and int8_segmenter.backend == "onnx-int8"  # fp32: the CPU default
    paths = int8_segmenter._onnx.paths
    assert paths["encoder-int8"].is_file() and paths["encoder-int8"].name != paths["encoder"].name
    assert paths["encoder-int8"].stat().st_size < 0.7 * paths["encoder"].stat().st_size, "weights not quantized"
    ops = {node.op_type for node in onnx.load(str(paths["encoder-int8"])).graph.node}
    assert "MatMulInteger" in ops and "ConvInteger" not in ops

    _, image, reference = organ_case(load_ct_case(shared_ct), "spleen")
    prompt = Prompt2D(box=box_from_mask(reference))
    masks = {}
    for seg in (litemedsam, int8_segmenter):
        seg.set_image(image)
        masks[seg.backend] = seg.predict(prompt).mask
    assert dice(masks["onnx-int8"], masks["openvino"]) >= 0.99
    assert dice(masks["onnx-int8"], reference) == pytest.approx(dice(masks["openvino"], reference), abs=0.005)


@pytest.mark.parametrize("backend", ["onnx-int8", "openvino"])
def test_cpu_runtimes_refuse_cuda(monkeypatch, backend):
    from MedSegReasoning.segmentation import litemedsam
    from MedSegReasoning.wire.errors import InputError

    monkeypatch.setattr(litemedsam.predictor, "resolve_device", lambda _device: torch.device("cuda"))  # no GPU needed
    with pytest.raises(InputError, match=f"{backend}' runs on the CPU only: use backend 'torch'"):
        litemedsam.LiteMedSAMSegmenter(backend=backend, device="cuda")


# -- OpenVINO (backend "openvino", the CPU default) -----------------------------------------------------------
def test_openvino_runs_the_cached_export_and_recovers_a_damaged_one(tmp_path):
    """Same cache as ONNX Runtime's; a damaged file is exported again; results are copies, not a reused buffer."""
    import numpy as np

    from MedSegReasoning.segmentation import _openvino

    path = tmp_path / "doubler.onnx"
    path.write_bytes(b"truncated garbage")
    model = _onnx.open_cached(
        path, export_doubler, torch.device("cpu"), opener=lambda p: _openvino.OpenVinoModel(p, tmp_path / "openvino")
    )
    first = model(np.ones((1, 3), np.float32))
    second = model(np.full((1, 3), 5.0, np.float32))
    assert first.tolist() == [[2.0, 2.0, 2.0]] and second.tolist() == [[10.0, 10.0, 10.0]]
    assert any((tmp_path / "openvino").iterdir()), "the compiled model was not cached"


def test_openvino_keeps_fp32_on_every_cpu():
    """bf16-capable CPUs would otherwise run in bf16, and dynamic activation quantization would change masks."""
    from MedSegReasoning.segmentation import _openvino

    config = _openvino.exact_cpu_config()
    assert config["INFERENCE_PRECISION_HINT"] == "f32" and config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] == 0


def test_default_falls_back_to_onnx_runtime_without_openvino(monkeypatch):
    from MedSegReasoning.segmentation import _openvino, litemedsam

    assert litemedsam.default_backend(torch.device("cpu")) == "openvino"
    assert litemedsam.default_backend(torch.device("cuda")) == "torch"
    monkeypatch.setattr(_openvino, "available", lambda: False)
    assert litemedsam.default_backend(torch.device("cpu")) == "onnx"


def test_openvino_missing_is_a_model_error(monkeypatch, tmp_path):
    import builtins

    from MedSegReasoning.segmentation import _openvino

    real_import = builtins.__import__

    def no_openvino(name, *args, **kwargs):
        if name == "openvino" or name.startswith("openvino."):
            raise ImportError("No module named 'openvino'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_openvino)
    with pytest.raises(ModelError, match="pip install openvino.*backend 'onnx'"):
        _openvino.OpenVinoModel(tmp_path / "any.onnx", tmp_path)
