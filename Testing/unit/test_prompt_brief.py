"""The ``brief-v1`` prompt version (``train`` config ``prompt_version``): segzero's answer format in a few lines, for
small models and short runs; recorded by ``train`` and used again at run time."""

from __future__ import annotations

import numpy as np
import pytest

from MedSegReasoning.reasoning.base import EMPTY_CONTEXT
from MedSegReasoning.reasoning.coords import get_convention
from MedSegReasoning.reasoning.prompts import PromptSet, render_prompt
from MedSegReasoning.reasoning.views import refine_views
from MedSegReasoning.training.config import TrainConfig
from MedSegReasoning.training.samples import TWO_D_STRATEGY
from MedSegReasoning.volume.core import Geometry, Volume
from MedSegReasoning.volume.windowing import default_window
from MedSegReasoning.wire.errors import InputError


def _views():
    pixels = np.random.default_rng(0).integers(0, 255, (1, 112, 112)).astype(np.int16)
    volume = Volume(pixels, Geometry.from_arrays((0, 0, 0), (1, 1, 1), np.eye(3)), modality="OT")
    return refine_views(volume, default_window(volume), TWO_D_STRATEGY, "axial", 0)


def test_brief_prompt_keeps_the_question_frame_and_answer_format_in_a_third_of_the_text():
    views, convention = _views(), get_convention("qwen2.5-vl")
    brief = render_prompt(PromptSet("segzero", "brief-v1"), views, "Where is the lesion?", EMPTY_CONTEXT, convention)
    full = render_prompt(PromptSet("segzero"), views, "Where is the lesion?", EMPTY_CONTEXT, convention)
    assert "Question: Where is the lesion?" in brief
    assert "pixels of the 112x112 image" in brief  # the coordinate frame, as in the full prompt
    assert '<answer>{"bbox": [x1, y1, x2, y2], "points_1": [x, y], "points_2": [x, y]}</answer>' in brief
    assert len(brief) * 3 < len(full)
    assert PromptSet("segzero", "brief-v1").identity == "segzero-brief-v1"


@pytest.mark.parametrize("bad", ["", "  ", 3])
def test_config_rejects_an_empty_or_non_text_prompt_version(bad):
    with pytest.raises(InputError, match="prompt_version"):
        TrainConfig(prompt_version=bad)
