"""Dialogue rounds that refer to earlier ones are taught, with teacher forcing, exactly as the runtime asks them.

A round's sample carries the dialogue as the ``reasoner`` eval mode gives it to the reasoner when every earlier round
was segmented as its truth: the same prompt text (the entities listed), the same images (their outlines drawn), and
its answers are read with the same context (an answer naming an entity by ``ref``). The runtime side here is the eval
mode itself (``evaluation.modes.run_reasoner``) with a ``ChatReasoner`` that records what it is sent, so the two are
compared on what a model would receive, not on a second copy of the rendering.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from support.eval_data import mask_png, write_folder, write_mrmedseg
from support.fakes import FakeSegmenter, truth_in_box

from MedSegReasoning.evaluation.layouts import open_dataset
from MedSegReasoning.evaluation.modes import run_reasoner
from MedSegReasoning.evaluation.options import EvalOptions, Models
from MedSegReasoning.reasoning.answer import GenerationStats
from MedSegReasoning.reasoning.base import ReasonerIdentity
from MedSegReasoning.reasoning.chat import ChatReasoner
from MedSegReasoning.reasoning.coords import get_convention
from MedSegReasoning.reasoning.prompts import PromptSet
from MedSegReasoning.training.reward_funcs import read_target, score_components
from MedSegReasoning.training.samples import load_samples, model_images, prompt_text, target_text
from MedSegReasoning.training.targets import answer_text
from MedSegReasoning.wire.errors import InputError, ModelError

CONVENTION = get_convention("qwen2.5-vl")


@pytest.fixture(autouse=True)
def offline_terminology(monkeypatch):
    """The shipped list without its embedding model (no 10 s load): the same for the runtime and the trainer."""
    from MedSegReasoning.terminology import matcher

    def no_model(texts):
        raise ModelError("no sentence-embedding model in these tests")

    monkeypatch.setattr(matcher, "_default", matcher.Terminology(matcher._shipped_data(), embedder=no_model))


class RecordingReasoner(ChatReasoner):
    """The runtime's chat reasoner with a backend that records each request and gives the scripted answers."""

    def __init__(self, prompts: PromptSet, answers: list[str]) -> None:
        identity = ReasonerIdentity("recording", "replay", "test", CONVENTION.name, prompts.identity)
        super().__init__(identity, CONVENTION, prompts)
        self.answers = list(answers)
        self.requests: list = []

    def complete(self, request, on_text, cancel):
        self.requests.append(request)
        return self.answers.pop(0), GenerationStats(finish_reason="stop")


def _asked_by_reasoner_mode(unit, reasoner, tmp_path) -> list[dict]:
    options = EvalOptions(out=tmp_path / "eval", mode="reasoner", reasoner=object(), progress=False)
    return run_reasoner(unit, unit.load(), "true", options, Models(options, reasoner=reasoner))


def _same_as_sent(samples, reasoner, prompts) -> None:
    assert len(reasoner.requests) == len(samples)
    for request, sample in zip(reasoner.requests, samples, strict=True):
        assert request.prompt == prompt_text(sample, prompts, CONVENTION)
        trained = model_images(sample.views, CONVENTION)
        assert len(request.images) == len(trained)
        assert all(np.array_equal(a, b) for a, b in zip(request.images, trained, strict=True))


def test_a_referring_mrmedseg_round_is_a_sample_prompted_as_the_reasoner_mode_asks_it(tmp_path):
    dataset = open_dataset(write_mrmedseg(tmp_path / "mr"))
    found = load_samples(dataset)
    assert [s.id.rsplit("/", 2)[1:] for s in found.samples] == [["0", "locate"], ["1", "locate"]]
    assert not found.skipped  # the round that refers to round 1 is no longer skipped
    first, second = found.samples
    assert first.context.entities == () and second.context.round == 2
    assert [e.id for e in second.context.entities] == ["E1"]
    assert (first.ref, second.ref) == (None, "E1")  # the contract answer names the entity the question refers to

    prompts = PromptSet("contract")
    answers = [target_text(s, prompts, CONVENTION) for s in found.samples]
    assert '"ref": "E1"' in answers[1]
    reasoner = RecordingReasoner(prompts, answers)
    records = _asked_by_reasoner_mode(dataset.units[0], reasoner, tmp_path)
    _same_as_sent(found.samples, reasoner, prompts)
    assert "- E1: " in reasoner.requests[1].prompt and "E1" not in reasoner.requests[0].prompt
    # E1's outline is drawn on round 2's image: the two rounds show the same image, differently
    assert not np.array_equal(reasoner.requests[0].images[0], reasoner.requests[1].images[0])
    # the runtime read the taught answers (the ref included) onto the truth's box
    assert [(r["error"], r["box_iou"]) for r in records] == [(None, 1.0), (None, 1.0)]


@pytest.mark.parametrize("style", ["segzero", "contract"])
def test_a_referring_3d_round_is_taught_on_montage_and_slice_with_the_outlines_drawn(tmp_path, style):
    """``contract``: the pick answer names the structure, and the refine step's prompt says "You chose this slice
    for: <label>", in training as at run time; ``segzero``'s answers name none, and its prompt says nothing."""
    dataset = open_dataset(write_folder(tmp_path / "folder"))
    found = load_samples(dataset)
    assert not found.skipped
    dialogue = [s for s in found.samples if s.id.startswith("d1/")]
    assert [s.id for s in dialogue] == ["d1/0/pick", "d1/0/locate", "d1/1/pick", "d1/1/locate"]
    assert all([e.id for e in s.context.entities] == ["E1"] and s.ref == "E1" for s in dialogue[2:])

    prompts = PromptSet(style)
    reasoner = RecordingReasoner(prompts, [target_text(s, prompts, CONVENTION) for s in dialogue])
    unit = next(u for u in dataset.units if u.id == "d1")
    records = _asked_by_reasoner_mode(unit, reasoner, tmp_path)
    _same_as_sent(dialogue, reasoner, prompts)
    # segzero's prompt lists no entities: E1 is shown as its outline, on the montage and on the key slice
    round_one, round_two = dialogue[0].views.views[0], dialogue[2].views.views[0]
    assert round_one.slices == round_two.slices and not np.array_equal(round_one.image, round_two.image)
    assert [r["error"] for r in records] == [None, None]
    chosen = [("You chose this slice for" in r.prompt) for r in reasoner.requests]
    assert chosen == [False, style == "contract", False, style == "contract"]


def test_rewards_read_a_ref_answer_with_the_rounds_context(tmp_path, monkeypatch):
    found = load_samples(open_dataset(write_mrmedseg(tmp_path / "mr")), keep_volumes=True)
    first, second = found.samples
    prompts = PromptSet("contract")
    answer = target_text(second, prompts, CONVENTION)
    target = read_target(second, answer, CONVENTION)
    assert target is not None and target.ref == "E1"
    assert score_components(second, answer, CONVENTION)["box"] == 1.0
    # round 1 knows no E1: the same answer there is one the runtime refuses, as is a ref to no known entity
    assert read_target(first, answer, CONVENTION) is None
    assert read_target(second, answer.replace('"E1"', '"E7"'), CONVENTION) is None

    from MedSegReasoning.segmentation import factory
    from MedSegReasoning.training.config import TrainConfig
    from MedSegReasoning.training.grpo import build_mask_reward

    assert second.volume is not None and second.truth_volume is not None
    fake = FakeSegmenter(second.volume.array, truth_in_box(second.truth_volume), window=second.window)
    monkeypatch.setattr(factory, "create_segmenter", lambda *args, **kwargs: fake)
    monkeypatch.setattr(factory, "default_store_root", lambda: tmp_path / "store")
    reward = build_mask_reward(TrainConfig(), {s.id: s for s in found.samples}, CONVENTION)
    assert reward is not None
    # a box 2 px around the square (its tight box holds one grey level, which the runtime refuses), naming E1
    u0, v0, u1, v1 = second.box
    around = answer_text(
        "contract", second.views, CONVENTION, 0, (u0 - 2, v0 - 2, u1 + 2, v1 + 2), second.points, "sq", "E1"
    )
    assert reward([None], [around, around.replace('"E1"', '"E7"')], sample_id=[second.id] * 2) == [1.0, 0.0]


def _rewrite_round_two(path, **changes) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    data[0]["conversations"][2].update(changes)
    path.write_text(json.dumps(data), encoding="utf-8")


def test_only_references_that_cannot_be_shown_are_skipped_with_their_reason(tmp_path):
    empty_first = write_mrmedseg(tmp_path / "empty")
    (tmp_path / "empty" / "masks" / "case_0001_round_00.png").write_bytes(mask_png(np.zeros((64, 64), bool)))
    with pytest.raises(InputError) as caught:  # nothing left to teach: one sentence that says what was skipped
        load_samples(open_dataset(empty_first))
    assert "(skipped: 1 (empty mask), 1 (refers to a round without a truth mask))" in str(caught.value)

    later = write_mrmedseg(tmp_path / "later")
    value = "Segment the region below and right of the output of round 3."
    _rewrite_round_two(later, value=f"[IMAGE256:images/case_0001.png] {value}", ind=2)
    found = load_samples(open_dataset(later))
    assert [s.id.rsplit("/", 2)[1] for s in found.samples] == ["0"]
    assert dict(found.skipped) == {"refers to a round that is not an earlier one": 1}
