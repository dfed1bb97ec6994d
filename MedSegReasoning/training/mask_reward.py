"""The reward users care about: the Dice of the mask the frozen segmenter makes from the reasoner's prompts.

``MaskReward`` is a TRL reward function (``GRPOTrainer(reward_funcs=[MaskReward(segmenter, samples), ...])``): for
each completion it reads the answer exactly as ``ask`` does (``reasoning.parser.parse_answer``, then the view's own
coordinate conversion ``reasoning.convert.to_answer`` and ``pipeline.check_prompt``), segments the key plane through
the runtime's own ``pipeline.segment_prompt`` (same rendering window, same physically proportioned segmenter input,
same embedding cache keys) and scores the key plane's mask against the reference mask on that plane. An answer that
the runtime would refuse (unreadable, coordinates outside the image, no box or point, a box over an empty region, a
prompt the segmenter refuses such as points without a box for LiteMedSAM) scores 0.0, so a completion earns reward
only when ``ask`` could have used it.

Why no propagation: the reward is the key plane's 2D Dice, one decoder call per completion. The 3D mask ``ask``
builds from that plane by propagation follows from it; propagating every completion would cost one encoder call per
slice visited, per completion.

Cost. The expensive step, the image encoder, runs once per (sample, plane): the embedding goes into the segmenter's
own cache (``segmentation.cache.EmbeddingCache``, keyed by the volume's content hash, the slice and the window, as at
run time), and every later completion of every later step on that plane is a cache hit and one decoder call. The
cache is bounded (``create_segmenter(cache_bytes=...)``, 512 MiB by default: 128 LiteMedSAM embeddings of 4 MiB);
a training set with more planes than that should get a larger bound or a disk store
(``create_segmenter(embedding_store=...)``), else embeddings evicted between epochs are encoded again.
``MaskReward.encode_all`` encodes every sample's plane up front (for a fixed pool, as the tests do).

Memory. A ``LazyRewardSample`` holds no pixels: it reads its volume and reference mask when it is scored (``train``
gives it ``training.stream.UnitVolumes``, which holds the last few loaded units), so a run's memory is bounded by
that bound, not by the dataset. The volume read again has the same content hash, so the embedding cache and store
keys are those of an eagerly loaded one (``ask``'s stored embeddings are reused either way).

One difference from ``ask``, by default: ``ask`` segments a structure whose box covers fewer than 48 pixels of the
model's input on a zoomed crop (``PropagationConfig.key_zoom_below_px``), and compares it with the whole slice. Each
distinct crop is one more encoder call, and every completion of a group places its box elsewhere, so the reward
segments the whole plane (``zoom=False``). ``MaskReward(..., zoom=True)`` uses the runtime's zoom exactly, at the
cost of up to one encoder call per distinct crop (crops are snapped to 8 px, so near boxes share one).

The key-slice reward of 3D samples (``rewards.key_slice_reward``) needs no segmenter: ``reward_funcs.RewardAssembly``
scores it with the other components.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..pipeline import VoxelPrompt, check_prompt, segment_prompt
from ..propagation import DEFAULT_PROPAGATION, PropagationConfig
from ..reasoning.answer import Answer, ReasonerOutputError, Target
from ..reasoning.base import EMPTY_CONTEXT, ReasoningContext
from ..reasoning.coords import Convention
from ..reasoning.views import DEFAULT_STRATEGY, ReasoningStrategy, ViewSet, refine_views
from ..segmentation.base import Segmenter
from ..volume.core import Orientation, Volume
from ..volume.windowing import Window
from ..wire.errors import InputError
from .reward_funcs import completion_text

_PLANE_AXIS: dict[str, int] = {"axial": 0, "coronal": 1, "sagittal": 2}
"""The axis of the ``[k, j, i]`` grid along a plane's normal (axial fixes k, coronal j, sagittal i)."""


@dataclass(frozen=True, eq=False)
class RewardSample:
    """One training prompt's ground truth, holding what the runtime needs to turn its answer into a mask.

    ``volume`` and ``window``: the scan and the window its views and the segmenter's slice are rendered with (a 2D
    image is a one-slice volume, ``evaluation.layouts.units.image_volume``). ``views``: what the reasoner was shown for
    this prompt (the refine step's slice, or the key-slice montage), whose tiles map answer pixels to voxels.
    ``convention``: how the reasoner writes coordinates (``reasoning.coords``). ``truth``: the reference mask, bool
    ``[k, j, i]`` on the volume's grid. ``context``: the dialogue's entities, for answers that name one (``ref``).
    """

    volume: Volume
    window: Window
    views: ViewSet
    convention: Convention
    truth: np.ndarray
    context: ReasoningContext = EMPTY_CONTEXT

    def __post_init__(self) -> None:
        truth = np.asarray(self.truth)
        if truth.ndim == 2 and int(self.volume.shape[0]) == 1:  # a 2D image's mask, as its one-slice volume holds it
            truth = truth[None]
        if truth.shape != tuple(self.volume.shape):
            raise InputError(
                f"the reference mask has shape {truth.shape}, not the volume's {tuple(self.volume.shape)} [k, j, i]."
            )
        if not truth.any():
            raise InputError("the reference mask is empty: a sample needs a structure to reward masks against.")
        object.__setattr__(self, "truth", truth.astype(bool, copy=False))

    @property
    def is_3d(self) -> bool:
        """True for a volume of more than one slice (the key-slice reward applies)."""
        return int(self.volume.shape[0]) > 1

    @classmethod
    def on_slice(
        cls,
        volume: Volume,
        truth: np.ndarray,
        window: Window,
        convention: Convention,
        *,
        index: int | None = None,
        orientation: Orientation = "axial",
        strategy: ReasoningStrategy = DEFAULT_STRATEGY,
        context: ReasoningContext = EMPTY_CONTEXT,
    ) -> RewardSample:
        """A sample whose reasoner sees one slice, rendered by the refine step's own ``refine_views``: slice
        ``index`` of ``orientation``, by default the one where the reference mask is largest."""
        truth = np.asarray(truth, dtype=bool)
        if truth.ndim == 2:
            truth = truth[None]
        axis = _PLANE_AXIS[orientation]
        areas = truth.sum(axis=tuple(a for a in range(3) if a != axis)) if truth.ndim == 3 else np.zeros(0)
        if index is None:
            index = int(np.argmax(areas)) if areas.size else 0
        if not 0 <= index < areas.size or not areas[index]:
            raise InputError(
                f"the reference mask has nothing on {orientation} slice {index}: show the reasoner a slice through "
                "the structure (by default the one where it is largest)."
            )
        views = refine_views(volume, window, strategy, orientation, index)
        return cls(volume, window, views, convention, truth, context)


@dataclass(frozen=True, eq=False)
class LazyRewardSample:
    """A ``RewardSample`` whose volume and reference mask are read only when it is scored: ``fetch`` returns them
    (the volume and the bool ``[k, j, i]`` truth). What an answer is read with (window, views, convention, context)
    is held; the pixels are not, so a dataset of any size costs what ``fetch`` keeps (``training.stream``)."""

    fetch: Callable[[], tuple[Volume, np.ndarray]] = field(repr=False)
    window: Window
    views: ViewSet
    convention: Convention
    context: ReasoningContext = EMPTY_CONTEXT

    def load(self) -> RewardSample:
        volume, truth = self.fetch()
        return RewardSample(volume, self.window, self.views, self.convention, truth, self.context)


def read_answer(text: str, sample: RewardSample) -> Answer | None:
    """``text`` in voxel indices, read exactly as ``ask`` reads it (``parse_answer`` then the view's conversion);
    ``None`` where the runtime could not use it (unreadable, coordinates outside the image, an unknown view)."""
    from ..reasoning.convert import to_answer
    from ..reasoning.parser import parse_answer

    try:
        return to_answer(parse_answer(text), sample.views, sample.convention, sample.context)
    except ReasonerOutputError:
        return None


def answer_target(text: str, sample: RewardSample) -> Target | None:
    """The first target of the answer that carries a box or a point (the one a mask is made from), or ``None``."""
    answer = read_answer(text, sample)
    for target in answer.targets if answer is not None else ():
        if target.box is not None or target.points:
            return target
    return None


def plane_dice(mask: np.ndarray, truth: np.ndarray, orientation: str, index: int) -> float:
    """Dice of two ``[k, j, i]`` masks on one plane; 0.0 where the reference has nothing on it (the answer chose a
    plane without the structure: no mask there can be right)."""
    axis = _PLANE_AXIS[orientation]
    pred = np.take(mask, index, axis=axis)
    ref = np.take(truth, index, axis=axis)
    ref_count = int(ref.sum())
    if ref_count == 0:
        return 0.0
    return float(2.0 * np.logical_and(pred, ref).sum() / (int(pred.sum()) + ref_count))


class MaskReward:
    """TRL reward function: the key-plane Dice of the mask ``segmenter`` makes from each completion's prompt.

    ``samples`` maps each dataset row's ``sample_id`` column to its ``RewardSample`` (or a ``LazyRewardSample``, loaded
    when its completions are scored); TRL passes that column to reward functions as a keyword. Returns one float in [0, 1] per completion (0.0 for an answer the runtime cannot use).
    ``zoom``: segment small boxes on the runtime's zoomed crop (see the module docstring; off by default).
    """

    def __init__(
        self,
        segmenter: Segmenter,
        samples: Mapping[str, RewardSample | LazyRewardSample],
        *,
        zoom: bool = False,
        config: PropagationConfig = DEFAULT_PROPAGATION,
    ) -> None:
        self.segmenter = segmenter
        self.samples = dict(samples)
        self.config = config if zoom else replace(config, key_zoom_below_px=0.0)
        self.__name__ = "mask"  # what TRL logs the reward as (rewards/mask/mean)

    def __call__(
        self, prompts: Sequence[Any] | None, completions: Sequence[Any], *, sample_id: Sequence[str], **kwargs: Any
    ) -> list[float]:
        if len(sample_id) != len(completions):
            raise InputError(
                f"{len(completions)} completions but {len(sample_id)} sample ids: the dataset's sample_id column must "
                "reach the reward function, one id per completion."
            )
        rewards = [0.0] * len(completions)
        by_sample: dict[str, list[int]] = defaultdict(list)
        for n, sid in enumerate(sample_id):
            by_sample[str(sid)].append(n)
        for sid, indices in by_sample.items():  # one sample's completions together: its embedding is reused
            sample = self._sample(sid)
            for n in indices:
                rewards[n] = self.score(completion_text(completions[n]), sample)
            del sample  # a lazy sample's volume is held by its loader's bound alone while the next one loads
        return rewards

    def score(self, text: str, sample: RewardSample) -> float:
        """The mask Dice of one answer text on ``sample`` (0.0 where the runtime could not use it)."""
        target = answer_target(text, sample)
        if target is None:
            return 0.0
        try:
            prompt = target.to_voxel_prompt()
            check_prompt(sample.volume, prompt, sample.window)
            seg = segment_prompt(
                sample.volume, self.segmenter, sample.window, prompt, propagate_3d=False, config=self.config
            )
        except InputError:  # refused by the runtime: a box on an empty region, points alone for LiteMedSAM ...
            return 0.0
        return plane_dice(seg.key_mask, sample.truth, prompt.orientation, prompt.k)

    def encode_all(self) -> int:
        """Encode the plane each sample's reasoner sees (its refine view's slice) into the segmenter's cache now;
        returns how many encoder calls that took (planes already cached cost none)."""
        before = self.segmenter.stats.encoder_calls
        for entry in self.samples.values():
            for view in entry.views.views:
                if len(view.tiles) != 1:
                    continue  # a montage: the plane depends on the tile the answer picks
                tile = view.tiles[0]
                _warm_plane(self.segmenter, _loaded(entry), tile.orientation, tile.slice, self.config)
        return self.segmenter.stats.encoder_calls - before

    def _sample(self, sid: str) -> RewardSample:
        try:
            entry = self.samples[sid]
        except KeyError:
            raise InputError(
                f"no reward sample for sample_id {sid!r}: build MaskReward with every training sample."
            ) from None
        return _loaded(entry)


def _loaded(entry: RewardSample | LazyRewardSample) -> RewardSample:
    return entry.load() if isinstance(entry, LazyRewardSample) else entry


def _warm_plane(segmenter: Segmenter, sample: RewardSample, orientation: Orientation, index: int, config) -> None:
    """One segmentation of the plane with a box around its whole extent, which puts the plane's embedding in the
    segmenter's cache under the key every later completion uses (the decoder's answer is dropped)."""
    axis = _PLANE_AXIS[orientation]
    plane_shape = [n for a, n in enumerate(sample.volume.shape) if a != axis]
    box = (0, 0, int(plane_shape[1]) - 1, int(plane_shape[0]) - 1)
    prompt = VoxelPrompt(k=index, box=box, orientation=orientation)
    segment_prompt(sample.volume, segmenter, sample.window, prompt, propagate_3d=False, config=config)
