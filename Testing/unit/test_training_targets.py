"""The answers SFT teaches and the rewards GRPO gives, read back the way ``ask`` reads an answer.

Every target text goes through the runtime's own ``parse_answer`` and ``to_answer`` on the same views: the box and
points must come back on the truth's voxels, in every coordinate convention, on the key slice and on the montage.
"""

from __future__ import annotations

import numpy as np
import pytest
from support.reasoning import blob_volume

from MedSegReasoning.reasoning import EMPTY_CONTEXT, get_convention, parse_answer
from MedSegReasoning.reasoning.convert import to_answer
from MedSegReasoning.reasoning.views import DEFAULT_STRATEGY, key_slice_views, refine_views
from MedSegReasoning.training.reward_funcs import RewardAssembly, completion_text, score_components
from MedSegReasoning.training.rewards import MIN_POINT_SPREAD_PX, RewardWeights
from MedSegReasoning.training.samples import TrainSample
from MedSegReasoning.training.targets import answer_text, inner_points, mask_box
from MedSegReasoning.volume.windowing import default_window

CONVENTIONS = ("qwen2.5-vl", "qwen2-vl", "qwen3-vl", "fixed-840", "pixels")


@pytest.fixture(scope="module")
def case():
    volume = blob_volume()
    truth = volume.array == 200  # the bright ellipsoid around slice 7
    return volume, truth, default_window(volume)


def _read(text, views, convention):
    return to_answer(parse_answer(text), views, convention, EMPTY_CONTEXT).targets[0]


def test_inner_points_lie_deep_inside_and_apart():
    mask = np.zeros((60, 80), bool)
    mask[10:40, 20:70] = True
    first, second = inner_points(mask)
    for u, v in (first, second):
        assert mask[v, u]
    assert np.hypot(first[0] - second[0], first[1] - second[1]) >= MIN_POINT_SPREAD_PX
    assert 20 < first[0] < 69 and 10 < first[1] < 39  # the deepest pixel is not on the edge
    tiny = np.zeros((20, 20), bool)
    tiny[5:8, 5:8] = True  # narrower than 10 px: the farthest pixel instead
    a, b = inner_points(tiny)
    assert tiny[a[1], a[0]] and tiny[b[1], b[0]] and a != b


@pytest.mark.parametrize("name", CONVENTIONS)
@pytest.mark.parametrize("style", ["segzero", "contract"])
def test_locate_answer_reads_back_to_the_truth_voxels(case, name, style):
    volume, truth, window = case
    k = int(np.argmax(truth.sum(axis=(1, 2))))
    views = refine_views(volume, window, DEFAULT_STRATEGY, "axial", k)
    convention = get_convention(name)
    box, points = mask_box(truth[k]), inner_points(truth[k])
    text = answer_text(style, views, convention, k, box, points, "blob")
    assert text.startswith("<think>") and "</think><answer>" in text and text.endswith("</answer>")
    target = _read(text, views, convention)
    assert (target.slice, target.box, target.points) == (k, box, points)


@pytest.mark.parametrize("name", CONVENTIONS)
def test_montage_answer_lands_on_the_key_tile_around_the_truth(case, name):
    volume, truth, window = case
    views = key_slice_views(volume, window, DEFAULT_STRATEGY)
    areas = truth.sum(axis=(1, 2))
    k = max(views.views[0].slices, key=lambda s: areas[s])
    convention = get_convention(name)
    box = mask_box(truth[k])
    target = _read(answer_text("segzero", views, convention, k, box, inner_points(truth[k]), ""), views, convention)
    assert target.slice == k
    u0, v0, u1, v1 = target.box
    # a downscaled tile's pixel covers several voxels: the box read back covers the truth's, a pixel's worth wider
    assert u0 <= box[0] <= u0 + 3 and v0 <= box[1] <= v0 + 3 and u1 - 3 <= box[2] <= u1 and v1 - 3 <= box[3] <= v1


def test_contract_pick_step_names_the_key_slice_only(case):
    volume, truth, window = case
    views = key_slice_views(volume, window, DEFAULT_STRATEGY)
    assert views.refine_next
    k = int(np.argmax(truth.sum(axis=(1, 2))))
    text = answer_text("contract", views, get_convention("qwen2.5-vl"), k, None, (), "blob")
    target = _read(text, views, get_convention("qwen2.5-vl"))
    assert (target.slice, target.box, target.points, target.label) == (k, None, (), "blob")


def _sample(views, k, truth, task_id="s1"):
    areas = truth.reshape(truth.shape[0], -1).sum(axis=1)
    shown = {k, *views.views[0].slices}
    return TrainSample(
        id=task_id,
        question="Where is the blob?",
        views=views,
        slice=k,
        box=mask_box(truth[k]),
        points=inner_points(truth[k]),
        label="blob",
        truth={s: truth[s] for s in shown},
        slice_areas=areas,
    )


def test_the_target_answer_earns_full_rewards_and_garbage_none(case):
    volume, truth, window = case
    k = int(np.argmax(truth.sum(axis=(1, 2))))
    convention = get_convention("qwen2.5-vl")
    sample = _sample(refine_views(volume, window, DEFAULT_STRATEGY, "axial", k), k, truth).without_pixels()
    perfect = answer_text("segzero", sample.views, convention, k, sample.box, sample.points, "blob")
    scores = score_components(sample, perfect, convention)
    assert scores["format"] == 1.0 and scores["box"] == pytest.approx(1.0) and scores["points"] == pytest.approx(1.0)
    assert scores["key_slice"] is None  # a locate step chose no slice
    junk = score_components(sample, "\x16F the lesion", convention)
    assert junk == {"format": 0.0, "box": 0.0, "points": 0.0, "key_slice": None}


def test_pick_step_scores_the_chosen_slice(case):
    volume, truth, window = case
    views = key_slice_views(volume, window, DEFAULT_STRATEGY)
    areas = truth.sum(axis=(1, 2))
    convention = get_convention("qwen2.5-vl")
    k = int(np.argmax(areas))
    sample = _sample(views, k, truth)
    best = answer_text("contract", views, convention, k, None, (), "blob")
    scores = score_components(sample, best, convention, slice_only=True)
    assert scores["key_slice"] == 1.0 and scores["box"] is None and scores["points"] is None
    edge = next(s for s in range(len(areas)) if areas[s] and areas[s] < areas.max())
    worse = best.replace(f'"slice": {k}', f'"slice": {edge}')
    assert score_components(sample, worse, convention, slice_only=True)["key_slice"] == pytest.approx(
        areas[edge] / areas.max()
    )
    off = best.replace(f'"slice": {k}', '"slice": 0')
    assert score_components(sample, off, convention, slice_only=True)["key_slice"] == 0.0


def test_assembly_weights_components_and_calls_the_injected_mask_reward_once(case):
    volume, truth, window = case
    k = int(np.argmax(truth.sum(axis=(1, 2))))
    convention = get_convention("qwen2.5-vl")
    sample = _sample(refine_views(volume, window, DEFAULT_STRATEGY, "axial", k), k, truth)
    perfect = answer_text("segzero", sample.views, convention, k, sample.box, sample.points, "blob")
    calls = []

    def fake_mask(prompts, completions, *, sample_id, **kwargs):
        calls.append(list(sample_id))
        return [0.25 for _ in completions]

    weights = RewardWeights(format=1.0, box=1.0, points=0.0, mask=2.0, key_slice=0.0)
    assembly = RewardAssembly({"s1": sample}, convention, weights, slice_only_picks=False, mask_reward=fake_mask)
    funcs, trl_weights = assembly.functions()
    assert [f.__name__ for f in funcs] == ["total", "format", "box", "mask"] and trl_weights == [1.0, 0.0, 0.0, 0.0]
    completions = [[{"role": "assistant", "content": perfect}], [{"role": "assistant", "content": "no answer"}]]
    ids = ["s1", "s1"]
    totals = funcs[0](prompts=[None, None], completions=completions, sample_id=ids, trainer_state=None)
    assert [f(prompts=[None, None], completions=completions, sample_id=ids)[0] for f in funcs[1:]] == [
        1.0,
        pytest.approx(1.0),
        0.25,
    ]
    assert totals[0] == pytest.approx((1.0 + 1.0 + 2 * 0.25) / 4) and totals[1] == pytest.approx(0.5 / 4)
    assert calls == [ids]  # one mask-reward call for the batch, shared by every function
    without = RewardAssembly({"s1": sample}, convention, weights, slice_only_picks=False, mask_reward=None)
    assert [f.__name__ for f in without.functions()[0]] == ["total", "format", "box"]  # no segmenter: left out


def test_completion_text_takes_strings_and_messages():
    assert completion_text("abc") == "abc"
    assert completion_text([{"role": "assistant", "content": "abc"}]) == "abc"
    assert completion_text([{"role": "assistant", "content": [{"type": "text", "text": "a"}, {"text": "b"}]}]) == "ab"
    assert completion_text([]) == ""


def test_a_pick_step_that_asks_for_a_slice_alone_gets_no_mask_reward(case):
    volume, truth, window = case
    views = key_slice_views(volume, window, DEFAULT_STRATEGY)
    k = int(np.argmax(truth.sum(axis=(1, 2))))
    convention = get_convention("qwen2.5-vl")
    sample = _sample(views, k, truth, "pick")
    weights = RewardWeights(format=1.0, box=1.0, points=1.0, mask=1.0, key_slice=1.0)

    def fake_mask(prompts, completions, *, sample_id, **kwargs):
        return [0.25] * len(completions)

    assembly = RewardAssembly({"pick": sample}, convention, weights, slice_only_picks=True, mask_reward=fake_mask)
    text = answer_text("contract", views, convention, k, None, (), "blob")
    (row,) = assembly.scores([None], [text], ["pick"])
    assert row["mask"] is None and row["box"] is None and row["key_slice"] == 1.0
    assert row["total"] == pytest.approx((row["format"] + 1.0) / 2)  # format and key slice only
