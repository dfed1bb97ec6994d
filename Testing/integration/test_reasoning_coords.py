"""Coordinate conventions, checked against the REAL Qwen-VL processors of transformers on odd image sizes."""

from __future__ import annotations

import numpy as np
import pytest

from MedSegReasoning.reasoning.coords import (
    QWEN2_5_VL_RULE,
    QWEN3_VL_RULE,
    SERVER_SAFE_RULE,
    ResizeRule,
    get_convention,
    guess_convention,
)
from MedSegReasoning.wire.errors import InputError

ODD_SIZES = [(300, 217), (511, 97), (97, 511), (1000, 37), (33, 29), (1999, 1001)]


def _processor(patch: int, rule: ResizeRule):
    pytest.importorskip("torchvision", reason="the Qwen-VL image processor needs torchvision")
    from transformers import Qwen2VLImageProcessor

    return Qwen2VLImageProcessor(
        patch_size=patch, merge_size=2, size={"shortest_edge": rule.min_pixels, "longest_edge": rule.max_pixels}
    )


def _seen_size(processor, width: int, height: int, patch: int) -> tuple[int, int]:
    """The (width, height) the model actually receives, read from the processor's patch grid."""
    from PIL import Image

    image = Image.fromarray(np.zeros((height, width, 3), dtype=np.uint8))
    _t, grid_h, grid_w = processor(images=[image], return_tensors="pt")["image_grid_thw"][0].tolist()
    return grid_w * patch, grid_h * patch


def test_design_example_300x217_is_seen_as_308x224_by_qwen2_5_vl():
    processor = _processor(14, QWEN2_5_VL_RULE)
    assert _seen_size(processor, 300, 217, 14) == (308, 224)
    assert get_convention("qwen2.5-vl").frame(300, 217) == (308, 224)


def test_design_example_300x217_is_seen_as_320x224_by_qwen3_vl():
    assert _seen_size(_processor(16, QWEN3_VL_RULE), 300, 217, 16) == (320, 224)
    assert QWEN3_VL_RULE.resized_size(300, 217) == (320, 224)


@pytest.mark.parametrize(("width", "height"), ODD_SIZES)
@pytest.mark.parametrize(
    ("patch", "rule"), [(14, QWEN2_5_VL_RULE), (16, QWEN3_VL_RULE), (14, SERVER_SAFE_RULE)], ids=["2.5", "3", "safe"]
)
def test_resize_rule_matches_the_real_processor(width, height, patch, rule):
    assert _seen_size(_processor(patch, rule), width, height, patch) == rule.resized_size(width, height)


def test_rule_read_from_a_saved_processor_matches_its_resizing(tiny_models):
    from transformers import AutoProcessor

    from MedSegReasoning.reasoning.hf import processor_resize_rule

    for kind, patch in (("qwen2_5_vl", 14), ("qwen3_vl", 16)):
        processor = AutoProcessor.from_pretrained(tiny_models[kind])
        rule = processor_resize_rule(processor)
        assert rule.patch_size == patch
        for width, height in ODD_SIZES[:3]:
            assert _seen_size(processor.image_processor, width, height, patch) == rule.resized_size(width, height)


@pytest.mark.parametrize(
    ("name", "model_point", "expected_pixel"),
    [
        ("qwen2-vl", (1000, 1000), (300, 217)),
        ("qwen2-vl", (500, 500), (150, 108.5)),
        ("qwen3-vl", (250, 0), (75, 0)),
        ("qwen2.5-vl", (308, 224), (300, 217)),
        ("qwen2.5-vl", (154, 112), (150, 108.5)),
        ("fixed-840", (840, 420), (300, 108.5)),
        ("pixels", (12, 34), (12, 34)),
    ],
)
def test_model_coordinates_to_view_pixels(name, model_point, expected_pixel):
    convention = get_convention(name)
    assert convention.to_view_pixels(*model_point, 300, 217) == pytest.approx(expected_pixel)
    assert convention.from_view_pixels(*expected_pixel, 300, 217) == pytest.approx(model_point)


def test_only_fixed_840_resizes_before_the_model():
    assert get_convention("fixed-840").model_input_size(300, 217) == (840, 840)
    for name in ("qwen2-vl", "qwen2.5-vl", "qwen3-vl", "pixels"):
        assert get_convention(name).model_input_size(300, 217) == (300, 217)


def test_prompt_sentence_names_the_frame():
    assert "308x224" in get_convention("qwen2.5-vl").describe(300, 217)
    assert "0-1000 grid" in get_convention("qwen3-vl").describe(300, 217)


def test_unknown_convention_lists_the_valid_ones():
    with pytest.raises(InputError, match="qwen2.5-vl, qwen3-vl, fixed-840"):
        get_convention("qwen4")


def test_extreme_aspect_ratio_is_an_input_error():
    with pytest.raises(InputError, match="cannot be given to a Qwen-VL model"):
        get_convention("qwen2.5-vl").frame(5000, 10)


@pytest.mark.parametrize(
    ("model", "convention"),
    [
        ("qwen2.5vl:7b", "qwen2.5-vl"),
        ("Qwen/Qwen2.5-VL-7B-Instruct", "qwen2.5-vl"),
        ("lingshu-7b", "qwen2.5-vl"),
        ("Qwen/Qwen3-VL-8B-Instruct", "qwen3-vl"),
        ("qwen3-vl:4b", "qwen3-vl"),
        ("Qwen2-VL-2B-Instruct", "qwen2-vl"),
        ("MedReasoner-7B", "fixed-840"),
        ("Seg-Zero-7B", "fixed-840"),
    ],
)
def test_served_model_names_guess_their_convention(model, convention):
    assert guess_convention(model) == convention
