"""The in-process adapter, end to end on CPU with tiny Qwen2-VL / Qwen2.5-VL / Qwen3-VL checkpoints.

Each checkpoint is built from a small config with random weights, saved with ``save_pretrained`` and loaded back
through ``create_reasoner("hf:<folder>")``: the real processor, chat template, model class and ``generate``.
Random weights answer garbage (the precise error is checked); ``force`` constrains generation to a given answer
string, which must come out as the voxel box it points at, through every conversion.
"""

from __future__ import annotations

import json
import shutil
import threading

import pytest
from support.reasoning import blob_volume, force

from MedSegReasoning.reasoning import (
    EMPTY_CONTEXT,
    ReasonerOutputError,
    ReasoningCancelled,
    ReasoningStrategy,
    create_reasoner,
    run_reasoning,
)
from MedSegReasoning.reasoning.hf import MODEL_CLASSES
from MedSegReasoning.reasoning.views import refine_views
from MedSegReasoning.volume.windowing import default_window
from MedSegReasoning.wire.errors import InputError, ModelError

# The same target in each convention, on axial slice 7 of the 300x217 blob volume: voxels i 75..150, j 54..108.
EXPECTED_BOX = (75, 54, 150, 108)
EXPECTED_POINT = (112, 81)
ANSWERS = {
    "qwen2.5-vl": (  # absolute pixels of the 308x224 resized input
        '{"reasoning": "A bright round blob.", "targets": [{"slice": 7, "bbox": [77, 56, 154, 112], '
        '"points": [[115, 84]], "label": "blob", "ref": null}], "clarification": null}'
    ),
    "grid": (  # Qwen2-VL and Qwen3-VL: 0-1000 grid
        '{"reasoning": "A bright round blob.", "targets": [{"slice": 7, "bbox": [250, 250, 500, 500], '
        '"points": [[375, 375]], "label": "blob", "ref": null}], "clarification": null}'
    ),
}
CONVENTIONS = {"qwen2_vl": "qwen2-vl", "qwen2_5_vl": "qwen2.5-vl", "qwen3_vl": "qwen3-vl"}


@pytest.fixture(scope="module")
def reasoners(tiny_models):
    return {kind: create_reasoner(f"hf:{folder}", max_new_tokens=400) for kind, folder in tiny_models.items()}


UNPADDED = ReasoningStrategy(pad_to_multiple=0)  # the odd 300x217 view goes through the processor's own resize


@pytest.fixture(scope="module")
def slice_views():
    volume = blob_volume()
    return refine_views(volume, default_window(volume), UNPADDED, "axial", 7)


@pytest.fixture(autouse=True)
def _unforced(reasoners):
    yield
    for reasoner in reasoners.values():
        reasoner.generate_kwargs.pop("prefix_allowed_tokens_fn", None)


@pytest.mark.parametrize("kind", list(CONVENTIONS))
def test_loaded_through_the_real_path_with_an_identity(reasoners, kind):
    reasoner = reasoners[kind]
    identity = reasoner.identity
    assert type(reasoner.model).__name__ == MODEL_CLASSES[kind]  # chosen from config.json's model_type
    assert (identity.backend, identity.convention, identity.prompt_version) == ("hf", CONVENTIONS[kind], "contract-v1")
    assert identity.revision.startswith("sha256:") and len(identity.revision) == 7 + 64
    assert identity.decoding["strategy"] == "greedy" and identity.decoding["device"] == "cpu"
    assert "seed" not in identity.decoding


@pytest.mark.parametrize("kind", list(CONVENTIONS))
def test_forced_answer_lands_on_the_voxels_it_points_at(reasoners, slice_views, kind):
    reasoner = reasoners[kind]
    answer_text = ANSWERS["qwen2.5-vl" if kind == "qwen2_5_vl" else "grid"]
    forced = force(reasoner, answer_text)
    chunks: list[str] = []
    answer = reasoner.reason(slice_views, "where is the bright blob?", EMPTY_CONTEXT, on_text=chunks.append)
    assert forced.calls == 1
    assert answer.raw == answer_text
    assert "".join(chunks) == answer_text and len(chunks) > 1  # streamed in pieces
    (target,) = answer.targets
    assert (target.slice, target.box, target.points, target.point_labels) == (7, EXPECTED_BOX, (EXPECTED_POINT,), (1,))
    assert target.label == "blob"
    prompt = target.to_voxel_prompt()
    assert (prompt.k, prompt.box) == (7, EXPECTED_BOX)
    assert answer.stats.generated_tokens == len(answer_text.encode()) + 1  # one token per byte, then <|im_end|>
    assert answer.stats.finish_reason == "stop" and answer.stats.tokens_per_second > 0


def test_medreasoner_style_checkpoint_sees_840x840(tiny_models):
    reasoner = create_reasoner(
        f"hf:{tiny_models['qwen2_5_vl']}", convention="fixed-840", prompt_style="segzero", max_new_tokens=300
    )
    assert (reasoner.identity.convention, reasoner.identity.prompt_version) == ("fixed-840", "segzero-v1")
    volume = blob_volume()
    views = refine_views(volume, default_window(volume), UNPADDED, "axial", 7)
    seen = []
    original = reasoner.processor.__class__.__call__

    def spy(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        seen.append(out["image_grid_thw"].tolist())
        return out

    force(
        reasoner,
        '<think>bright blob</think><answer>{"bbox": [210, 210, 420, 420], "points_1": [315, 315], '
        '"points_2": [320, 320]}</answer>',
    )
    reasoner.processor.__class__.__call__ = spy
    try:
        answer = reasoner.reason(views, "the bright thing")
    finally:
        reasoner.processor.__class__.__call__ = original
    assert seen == [[[1, 60, 60]]]  # 840 / 14 patches each way
    (target,) = answer.targets
    assert target.box == EXPECTED_BOX
    assert target.points == ((112, 81), (114, 82))
    assert answer.reasoning == "bright blob"


def test_padded_views_pass_the_processor_unchanged_and_map_one_to_one(reasoners):
    """The default strategy pads 300x217 to 308x224: Qwen2.5-VL sees our pixels 1:1, boxes are voxel indices."""
    reasoner = reasoners["qwen2_5_vl"]
    volume = blob_volume()
    views = refine_views(volume, default_window(volume), ReasoningStrategy(), "axial", 7)
    assert (views.views[0].width, views.views[0].height) == (308, 224)
    force(reasoner, ANSWERS["qwen2.5-vl"])
    (target,) = reasoner.reason(views, "where is the bright blob?").targets
    assert target.box == (77, 56, 154, 112) and target.points == ((115, 84),)


def test_two_step_run_with_a_tiny_model(reasoners):
    reasoner = reasoners["qwen2_5_vl"]
    volume = blob_volume()
    forced = force(
        reasoner,
        '{"reasoning": "The blob is largest on slice 7.", "targets": [{"slice": 7, "label": "blob", "ref": null}], '
        '"clarification": null}',
        '{"reasoning": "Here.", "targets": [{"bbox": [77, 56, 154, 112], "points": [[115, 84]], "label": "", '
        '"ref": null}], "clarification": null}',
    )
    streamed: list[str] = []
    answer = run_reasoning(volume, reasoner, "segment the bright blob", UNPADDED, on_text=streamed.append)
    assert forced.calls == 2
    assert [s.step for s in answer.steps] == ["pick_slice", "locate"]
    (target,) = answer.targets
    assert (target.slice, target.box, target.label) == (7, EXPECTED_BOX, "blob")  # label from the first step
    assert "\n\n" in "".join(streamed)
    assert answer.reasoning == "The blob is largest on slice 7.\n\nHere."
    assert answer.stats.generated_tokens == sum(s.stats.generated_tokens for s in answer.steps)


@pytest.mark.parametrize("kind", list(CONVENTIONS))
def test_unconstrained_random_model_output_is_a_precise_error(reasoners, slice_views, kind):
    reasoner = reasoners[kind]
    reasoner.max_new_tokens = 48
    try:
        with pytest.raises(ReasonerOutputError) as info:
            reasoner.reason(slice_views, "where is the bright blob?")
    finally:
        reasoner.max_new_tokens = 400
    message = str(info.value)
    assert message.startswith("the reasoner's answer cannot be used: ")
    assert "Expected JSON" in message and "It answered: " in message
    assert info.value.exit_code == 3


def test_cancel_stops_generation_at_the_next_token(reasoners, slice_views):
    reasoner = reasoners["qwen2_5_vl"]
    long_answer = "thinking " * 40 + ANSWERS["qwen2.5-vl"]
    force(reasoner, long_answer)
    cancel = threading.Event()
    received: list[str] = []

    def on_text(chunk: str) -> None:
        received.append(chunk)
        cancel.set()

    with pytest.raises(ReasoningCancelled):
        reasoner.reason(slice_views, "where?", EMPTY_CONTEXT, on_text=on_text, cancel=cancel)
    assert 0 < len("".join(received)) < 40  # stopped after the first word, not at the end of 360+ characters
    force(reasoner, ANSWERS["qwen2.5-vl"])  # the model is free again
    assert reasoner.reason(slice_views, "where?").targets[0].box == EXPECTED_BOX


def test_cancel_before_the_call_does_not_generate(reasoners, slice_views):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(ReasoningCancelled):
        reasoners["qwen2_vl"].reason(slice_views, "where?", cancel=cancel)


def test_failing_callback_stops_generation_and_propagates(reasoners, slice_views):
    reasoner = reasoners["qwen3_vl"]
    force(reasoner, "word " * 100 + ANSWERS["grid"])

    def on_text(chunk: str) -> None:
        raise RuntimeError("panel closed")

    with pytest.raises(RuntimeError, match="panel closed"):
        reasoner.reason(slice_views, "where?", on_text=on_text)
    force(reasoner, ANSWERS["grid"])
    assert reasoner.reason(slice_views, "where?").targets[0].box == EXPECTED_BOX


def test_sampling_records_its_seed_and_is_reproducible(tiny_models, slice_views):
    a = create_reasoner(f"hf:{tiny_models['qwen2_vl']}", do_sample=True, max_new_tokens=24)
    assert a.identity.decoding["strategy"] == "sample" and isinstance(a.identity.decoding["seed"], int)
    b = create_reasoner(f"hf:{tiny_models['qwen2_vl']}", do_sample=True, seed=a.seed, max_new_tokens=24)
    raws = []
    for reasoner in (a, b):
        with pytest.raises(ReasonerOutputError) as info:
            reasoner.reason(slice_views, "where?")
        raws.append(info.value.raw)
    assert raws[0] == raws[1]


def test_bfloat16_on_cpu(tiny_models, slice_views):
    reasoner = create_reasoner(f"hf:{tiny_models['qwen3_vl']}", dtype="bfloat16", max_new_tokens=300)
    assert reasoner.identity.decoding["dtype"] == "bfloat16"
    force(reasoner, ANSWERS["grid"])
    assert reasoner.reason(slice_views, "where?").targets[0].box == EXPECTED_BOX


def test_missing_folder_names_the_pull_command(tmp_path):
    with pytest.raises(ModelError) as info:
        create_reasoner(f"hf:{tmp_path / 'nowhere' / 'model'}")
    assert "does not exist" in str(info.value)
    assert "medseg-reasoning models pull" in str(info.value)
    assert info.value.exit_code == 3


def test_folder_without_safetensors_or_of_another_architecture_is_refused(tiny_models, tmp_path):
    folder = tmp_path / "no-weights"
    folder.mkdir()
    shutil.copy(tiny_models["qwen2_vl"] / "config.json", folder)
    with pytest.raises(ModelError, match="no .safetensors weights"):
        create_reasoner(f"hf:{folder}")
    (folder / "config.json").write_text(json.dumps({"model_type": "llava"}))
    with pytest.raises(ModelError, match="holds a 'llava' model"):
        create_reasoner(f"hf:{folder}")
    (folder / "config.json").unlink()
    with pytest.raises(ModelError, match="no config.json"):
        create_reasoner(f"hf:{folder}")


def test_device_and_dtype_choices_are_checked(tiny_models):
    import torch

    from MedSegReasoning.reasoning.hf import resolve_device

    assert resolve_device(None) in ("cpu", "cuda", "mps")
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(InputError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA GPU"):
            resolve_device("cuda")
    with pytest.raises(InputError, match="unknown dtype"):
        create_reasoner(f"hf:{tiny_models['qwen2_vl']}", dtype="int8")
