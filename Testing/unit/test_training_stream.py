"""``train``'s data without the dataset in memory (``training.stream``): the rows are written to Arrow files on disk
one sample at a time and are exactly ``sample_row``'s; the samples kept hold no pixels; the mask reward loads each
volume when it scores it, holding no more than its bound, and scores (and keys the segmenter's cache) exactly as
with volumes loaded up front.

The dataset is built in memory (``Unit``s whose ``load`` makes a fresh case each call), so each load and each
volume still alive can be counted.
"""

from __future__ import annotations

import gc
import re
import weakref
from pathlib import Path

import numpy as np
import pytest
from support.fakes import box_mask

from MedSegReasoning.evaluation.layouts import Case, Dataset, Turn, Unit, image_volume
from MedSegReasoning.reasoning.coords import get_convention
from MedSegReasoning.reasoning.prompts import prompt_set
from MedSegReasoning.segmentation.base import ModelIdentity, Prediction, SegmenterStats
from MedSegReasoning.training.mask_reward import LazyRewardSample, MaskReward, RewardSample
from MedSegReasoning.training.samples import CompactSlices, load_samples, sample_row, target_text
from MedSegReasoning.training.stream import UnitVolumes, build_rows, reward_samples
from MedSegReasoning.volume.core import Geometry, Volume
from MedSegReasoning.wire.errors import InputError

pytest.importorskip("datasets", reason="train's rows are a datasets.Dataset (the train extra)")

CONVENTION = get_convention("qwen2.5-vl")
PROMPTS = prompt_set("contract")
SHAPE = (6, 40, 48)  # k, j, i


def _case(n: int, empty: bool = False) -> Case:
    """Unit ``n``: a 3D scan with an ellipsoid placed by ``n`` (odd ``n``: a 2D image with an ellipse)."""
    rng = np.random.default_rng(n)
    kk, jj, ii = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1], 0 : SHAPE[2]]
    cj, ci = 14 + 2 * (n % 5), 16 + 3 * (n % 4)
    truth = ((kk - 3) / 2.2) ** 2 + ((jj - cj) / (6.0 + n % 3)) ** 2 + ((ii - ci) / (8.0 + n % 4)) ** 2 <= 1.0
    truth &= not empty
    voxels = rng.integers(-80, 40, size=SHAPE).astype(np.int16) + 220 * truth.astype(np.int16)
    if n % 2:
        image = np.clip(voxels[3] + 100, 0, 255).astype(np.uint8)
        volume, truth = image_volume(image, f"u{n}.png"), truth[3:4]
    else:
        volume = Volume(voxels, Geometry.from_arrays((0, 0, 0), (0.8, 0.8, 2.5), np.eye(3)), modality="CT")
    return Case(f"u{n}", f"u{n}", volume, (Turn(f"Where is structure {n}?", truth, label="lesion"),))


class Recorder:
    """Units that count their loads and the volumes they made that are still alive (``peak``: the most alive at once,
    counted at each load with the new one)."""

    def __init__(self) -> None:
        self.loads = 0
        self.peak = 0
        self._alive: list[weakref.ref] = []

    def alive(self) -> int:
        gc.collect(0)  # the young generation only: a full collection with torch imported takes 0.3 s
        return sum(ref() is not None for ref in self._alive)

    def dataset(self, n: int, empty: tuple[int, ...] = ()) -> Dataset:
        return Dataset(Path("memory-dataset"), "memory", [self._unit(k, k in empty) for k in range(n)])

    def _unit(self, n: int, empty: bool) -> Unit:
        def load() -> Case:
            before = self.alive()
            case = _case(n, empty)
            self.loads += 1
            self._alive.append(weakref.ref(case.volume))
            self.peak = max(self.peak, before + 1)
            return case

        return Unit(f"u{n}", False, load, case=f"u{n}")


class BoxSegmenter:
    """The segmenter interface answering "the prompt's box": records every cache key it is given."""

    identity = ModelIdentity(name="box", weights="none", sha256="0" * 64)

    def __init__(self) -> None:
        self.stats = SegmenterStats()
        self.keys: list = []
        self._shape: tuple[int, int] = (0, 0)

    def set_image(self, image, cache_key=None) -> None:
        self.keys.append(cache_key)
        self.stats.encoder_calls += 1
        self._shape = image.shape[:2]

    def predict(self, prompt) -> Prediction:
        self.stats.decoder_calls += 1
        return Prediction(mask=box_mask(prompt, self._shape), score=0.9)


def test_the_rows_are_arrow_files_on_disk_equal_to_sample_row(tmp_path):
    dataset = Recorder().dataset(4)
    rows, found = build_rows(dataset, PROMPTS, CONVENTION, with_answer=True, cache_dir=tmp_path / "cache")
    assert rows.cache_files and all(f["filename"].startswith(str(tmp_path / "cache")) for f in rows.cache_files)
    eager = load_samples(dataset).samples
    assert [s.id for s in found.samples] == [s.id for s in eager] and len(rows) == len(eager) == 6  # 2 x 3D: 2 each
    for n, sample in enumerate(eager):
        expected, got = sample_row(sample, PROMPTS, CONVENTION, with_answer=True), rows[n]
        assert got["prompt"] == expected["prompt"] and got["completion"] == expected["completion"]
        assert got["sample_id"] == expected["sample_id"] == sample.id
        assert len(got["images"]) == len(expected["images"]) >= 1
        for image, reference in zip(got["images"], expected["images"], strict=True):
            assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(reference))
    grpo_rows, _ = build_rows(dataset, PROMPTS, CONVENTION, with_answer=False, cache_dir=tmp_path / "grpo")
    assert "completion" not in grpo_rows.column_names and grpo_rows["sample_id"] == rows["sample_id"]


def test_the_samples_kept_hold_no_pixels_and_name_their_source(tmp_path):
    recorder = Recorder()
    _, found = build_rows(recorder.dataset(4), PROMPTS, CONVENTION, with_answer=True, cache_dir=tmp_path / "c")
    assert recorder.alive() == 0 and recorder.loads == 4  # every unit read once, none held
    eager = {s.id: s for s in load_samples(Recorder().dataset(4)).samples}
    for sample in found.samples:
        assert sample.volume is None and sample.truth_volume is None
        assert all(v.image.strides[:2] == (0, 0) for v in sample.views.views)  # a zero-memory stand-in of its size
        assert [v.image.shape for v in sample.views.views] == [v.image.shape for v in eager[sample.id].views.views]
        assert isinstance(sample.truth, CompactSlices) and sample.truth.nbytes < 400
        assert sorted(sample.truth) == sorted(eager[sample.id].truth)
        assert all(np.array_equal(sample.truth[k], m) for k, m in eager[sample.id].truth.items())
        assert sample.source is not None and sample.source.unit.id == sample.id.split("/")[0]


def test_no_usable_sample_is_the_same_error_and_leaves_no_cache(tmp_path):
    dataset = Recorder().dataset(2, empty=(0, 1))
    with pytest.raises(InputError) as eager:
        load_samples(dataset)
    out = tmp_path / "out"
    with pytest.raises(InputError) as streamed:
        build_rows(dataset, PROMPTS, CONVENTION, with_answer=True, cache_dir=out / "dataset-cache")
    assert str(streamed.value) == str(eager.value) and "skipped: 2 (empty mask)" in str(eager.value)
    assert not out.exists()  # the folder this call made is gone with its cache


def _completions(sample) -> list[str]:
    """The target answer, its box narrowed by 4 pixels on the left, and nonsense: different Dice."""
    right = target_text(sample, PROMPTS, CONVENTION)
    narrowed = re.sub(r'"bbox": \[(\d+),', lambda m: f'"bbox": [{int(m.group(1)) + 4},', right)
    return [right, narrowed, "I cannot tell."]


def _mask_pass(reward: MaskReward, samples, order) -> list[float]:
    """GRPO's calls: each step a batch of two prompts with their completions, in the sampler's order."""
    scores = []
    for n in range(0, len(order), 2):
        ids, texts = [], []
        for sid in order[n : n + 2]:
            for text in _completions(samples[sid]):
                ids.append(sid)
                texts.append(text)
        scores.extend(reward(None, texts, sample_id=ids))
    return scores


def test_the_mask_reward_holds_at_most_its_bound_of_volumes_and_scores_as_eager(tmp_path):
    n_units, bound = 8, 2
    eager_recorder = Recorder()
    eager_samples = {s.id: s for s in load_samples(eager_recorder.dataset(n_units), keep_volumes=True).samples}
    eager = reward_samples(eager_samples, CONVENTION)
    assert all(isinstance(s, RewardSample) for s in eager.values()) and eager_recorder.alive() == n_units
    order = list(np.random.default_rng(3).permutation(sorted(eager)))
    eager_segmenter = BoxSegmenter()
    eager_scores = _mask_pass(MaskReward(eager_segmenter, eager), eager_samples, order)

    recorder = Recorder()
    _, found = build_rows(recorder.dataset(n_units), PROMPTS, CONVENTION, with_answer=False, cache_dir=tmp_path / "c")
    kept = {s.id: s for s in found.samples}
    volumes = UnitVolumes(bound)
    lazy = reward_samples(kept, CONVENTION, volumes)
    assert all(isinstance(s, LazyRewardSample) for s in lazy.values()) and recorder.alive() == 0
    recorder.loads = recorder.peak = 0
    segmenter = BoxSegmenter()
    scores = _mask_pass(MaskReward(segmenter, lazy), kept, order)

    assert scores == eager_scores and max(scores) > 0.5 and len(set(scores)) > 6
    assert segmenter.keys == eager_segmenter.keys  # the same content hashes: ask's stored embeddings still apply
    assert recorder.peak <= bound and len(volumes) <= bound and recorder.alive() <= bound
    assert n_units <= recorder.loads < len(order)  # each unit read when needed, kept while its samples are scored


def test_the_volume_loader_drops_the_least_recently_used_unit_first():
    recorder = Recorder()
    units = recorder.dataset(3).units
    volumes = UnitVolumes(2)
    from MedSegReasoning.training.samples import SampleSource

    first, second, third = (SampleSource(u, 1) for u in units)
    a = volumes.fetch(first)[0].content_hash()
    volumes.fetch(second)
    volumes.fetch(first)  # now the most recent: the second goes when the third comes
    volumes.fetch(third)
    assert recorder.loads == 3
    assert volumes.fetch(first)[0].content_hash() == a and recorder.loads == 3
    volumes.fetch(second)
    assert recorder.loads == 4 and recorder.alive() == 2
    with pytest.raises(ValueError):
        UnitVolumes(0)
