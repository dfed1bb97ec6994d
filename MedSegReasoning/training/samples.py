"""Training samples from the layouts ``eval`` reads, rendered exactly as the reasoner sees them at run time.

Train what you run: a sample's images are made by the same ``reasoning.views`` functions ``ask`` and ``eval`` call,
with the same window (``default_window``) and strategy (``DEFAULT_STRATEGY``):

- a 2D image (U-MRG, MR-MedSeg) is shown as it is, one ``locate`` call (``evaluation.modes.reasoner_view``);
- a 3D question (the folder layout) gives two samples: the key-slice montage (``pick_slice``), then the key slice
  (the truth's largest) at full resolution (``locate``): the two calls ``run_reasoning`` makes.

The prompt is ``render_prompt`` of the model's prompt set, and the images are what ``ChatReasoner.prepare_image``
hands the model. A dialogue round is taught with teacher forcing: every earlier round counts as segmented exactly as
its truth, so its prompt lists those entities and its images show their outlines, as the ``reasoner`` eval mode asks
it (both build the session with ``evaluation.truth.truth_fed_rounds``, the context with
``Session.reasoning_context``), and a round that refers to an earlier one answers with that round's entity as
``ref`` (the contract style; segzero answers have no ``ref``). Questions that cannot teach anything are skipped and
counted (an empty mask, a dataset box outside its image, a reference to a round with no truth to show, a sample that
cannot be read); none left is an ``InputError``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import numpy as np

from ..evaluation.layouts import Case, Dataset, Turn, Unit
from ..evaluation.truth import FedRound, truth_fed_rounds
from ..reasoning.base import EMPTY_CONTEXT, ReasoningContext
from ..reasoning.coords import Convention, resize_for_model
from ..reasoning.prompts import PromptSet, render_prompt
from ..reasoning.views import (
    DEFAULT_STRATEGY,
    ReasoningStrategy,
    View,
    ViewSet,
    draw_entities,
    key_slice_views,
    refine_views,
)
from ..volume.core import Volume
from ..wire.errors import InputError
from ..wire.masks import CompactMask
from .targets import VoxelBox, VoxelPoint, answer_label, answer_text, inner_points, mask_box

TWO_D_STRATEGY = ReasoningStrategy(use_current_view="always")
"""How ``eval`` shows a 2D image (``evaluation.modes.reasoner_view``): the image itself, no montage."""


@dataclass(frozen=True)
class SampleSource:
    """Where a sample's volume and truth are read again: its dataset unit (whose ``load`` reads the pixels) and the
    1-based round of the unit's case the sample asks (``truth_fed_rounds``'s ``number``). A sample kept without
    pixels keeps this instead, so the mask reward can load the volume only when it scores the sample."""

    unit: Unit
    round: int


class CompactSlices(Mapping[int, np.ndarray]):
    """2D truth masks by slice, held as bounding box + packed bits (``wire.masks.CompactMask``) and unpacked when
    read: a kept sample costs a few kB whatever its image size, and no longer keeps its case's whole 3D truth
    alive (a slice of it is a view into it)."""

    def __init__(self, masks: Mapping[int, np.ndarray]) -> None:
        self._masks = {
            int(k): (CompactMask.from_dense(np.asarray(m, dtype=bool)[None]), tuple(np.shape(m)))
            for k, m in masks.items()
        }

    def __getitem__(self, k: int) -> np.ndarray:
        mask, shape = self._masks[k]
        return mask.slice_mask(0, (1, *shape))

    def __iter__(self) -> Iterator[int]:
        return iter(self._masks)

    def __len__(self) -> int:
        return len(self._masks)

    @property
    def nbytes(self) -> int:
        return sum(mask.nbytes for mask, _ in self._masks.values())


@dataclass(frozen=True, eq=False)
class TrainSample:
    """One reasoner call to learn: the question, the views it is asked about, and the truth on them.

    ``slice`` is the axial slice the target answer names; ``truth`` maps each slice the views show (and the key
    slice) to its 2D truth mask, so a completion that picks another tile is scored on that tile's truth;
    ``slice_areas`` is the truth's area on every slice (the key-slice reward). ``volume`` and ``truth_volume`` (the
    whole bool ``[k, j, i]`` mask) are kept only when asked for (``load_samples(keep_volumes=True)``); ``source`` says
    where to read them again (``train`` keeps that instead: ``training.stream``). ``context`` is what the dialogue
    holds when the question is asked (the earlier rounds' truths as entities; empty for a single question): the
    prompt is rendered and every answer read with it. ``ref`` is the entity the question refers to, if any.
    """

    id: str
    question: str
    views: ViewSet
    slice: int
    box: VoxelBox
    points: tuple[VoxelPoint, VoxelPoint]
    label: str
    truth: Mapping[int, np.ndarray] = field(repr=False)
    slice_areas: np.ndarray = field(repr=False)
    window: Any = None
    volume: Volume | None = field(default=None, repr=False)
    truth_volume: np.ndarray | None = field(default=None, repr=False)
    context: ReasoningContext = field(default=EMPTY_CONTEXT, repr=False)
    ref: str | None = None
    source: SampleSource | None = field(default=None, repr=False)

    @property
    def task(self) -> str:
        return self.views.task

    def without_pixels(self) -> TrainSample:
        """The same sample holding no pixels: each view's image replaced by a zero-memory stand-in of its size
        (conversion needs only the tiles and the image size), the truth slices packed (``CompactSlices``), no volume
        (``source`` reads it again). What the rewards need stays; a dataset's pixels are not held at all."""
        views = tuple(
            replace(v, image=np.broadcast_to(np.zeros((1, 1, 3), np.uint8), v.image.shape)) for v in self.views.views
        )
        truth = self.truth if isinstance(self.truth, CompactSlices) else CompactSlices(self.truth)
        return replace(self, views=replace(self.views, views=views), truth=truth, volume=None, truth_volume=None)


@dataclass
class SampleSet:
    """The usable samples and what was skipped, by reason (``"empty mask": 3``)."""

    samples: list[TrainSample]
    skipped: Counter = field(default_factory=Counter)
    first_error: str | None = None

    def skipped_text(self) -> str:
        return ", ".join(f"{n} ({reason})" for reason, n in sorted(self.skipped.items()))


def load_samples(
    dataset: Dataset, *, keep_volumes: bool = False, strategy: ReasoningStrategy = DEFAULT_STRATEGY
) -> SampleSet:
    """Every usable training sample of ``dataset``, pixels included; raises ``InputError`` when none is left.
    ``train`` streams them instead (``training.stream.build_rows``), one unit's pixels at a time."""
    result = SampleSet([])
    result.samples.extend(iter_samples(dataset, result, keep_volumes=keep_volumes, strategy=strategy))
    require_usable(dataset, result)
    return result


def iter_samples(
    dataset: Dataset, counts: SampleSet, *, keep_volumes: bool = False, strategy: ReasoningStrategy = DEFAULT_STRATEGY
) -> Iterator[TrainSample]:
    """The usable samples of ``dataset`` one at a time, each with its pixels (one unit is loaded at a time, and
    dropped when its samples are done), counting what is skipped into ``counts`` (its ``samples`` are left to the
    caller). Each sample names its ``source``; ``keep_volumes`` also puts the volume and truth on it."""
    from ..volume.windowing import default_window

    for unit in dataset:
        try:
            case = unit.load()
        except InputError as exc:
            counts.skipped["unreadable"] += 1
            counts.first_error = counts.first_error or str(exc)
            continue
        window = default_window(case.volume)
        for fed in truth_fed_rounds(case):
            turn = fed.turn
            reason = _unusable(case, fed)
            if reason:
                counts.skipped[reason] += 1
                continue
            made = _samples_of(
                case,
                turn,
                f"{unit.id}/{fed.number - 1}",
                window,
                strategy,
                case.volume if keep_volumes else None,
                fed.session.reasoning_context(fed.number),
                fed.entities[turn.references[0]] if turn.references else None,
            )
            if case.dimension == 3 and len(made) == 1:
                counts.skipped["key-slice step: the structure is on no montage tile"] += 1
            source = SampleSource(unit, fed.number)
            for sample in made:
                yield replace(sample, source=source)


def require_usable(dataset: Dataset, found: SampleSet) -> None:
    """The error for a dataset without a usable sample (what was skipped, and the first unreadable one's reason)."""
    if found.samples:
        return
    detail = f" (skipped: {found.skipped_text()})" if found.skipped else ""
    hint = f"; the first unreadable one: {found.first_error}" if found.first_error else ""
    raise InputError(
        f"the dataset {dataset.path} has no usable training sample{detail}{hint}: each question needs a non-empty "
        "mask (and a box inside its image)."
    )


def _unusable(case: Case, fed: FedRound) -> str | None:
    turn = fed.turn
    if not turn.truth.any():
        return "empty mask"
    if turn.truth_box is not None:
        x1, y1, x2, y2 = turn.truth_box
        _nk, nj, ni = case.volume.shape
        if min(x1, y1) < 0 or x2 > ni or y2 > nj or x1 > x2 or y1 > y2:
            return "box outside the image"
    this_round = turn.round if turn.round is not None else fed.number
    for r in turn.references:  # the entity a reference names must be in the context, or nothing right can be said
        if r not in fed.entities:
            return (
                "refers to a round that is not an earlier one"
                if r >= this_round
                else "refers to a round without a truth mask"
            )
    return None


def _samples_of(
    case: Case,
    turn: Turn,
    sample_id: str,
    window,
    strategy: ReasoningStrategy,
    volume: Volume | None,
    context: ReasoningContext,
    ref: str | None,
) -> list[TrainSample]:
    truth = np.asarray(turn.truth, dtype=bool)
    areas = truth.reshape(truth.shape[0], -1).sum(axis=1)
    label = turn.label or ""
    sample = partial(
        _sample,
        turn=turn,
        truth=truth,
        areas=areas,
        label=label,
        window=window,
        volume=volume,
        context=context,
        ref=ref,
    )
    if case.dimension == 2:
        views = draw_entities(refine_views(case.volume, window, TWO_D_STRATEGY, "axial", 0), context.entities)
        return [sample(f"{sample_id}/locate", views=views, k=0)]
    key = int(np.argmax(areas))
    # the entities so far, outlined and tagged on what the model sees, as ``run_reasoning`` draws them
    montage = draw_entities(key_slice_views(case.volume, window, strategy), context.entities)
    shown = montage.views[0].slices
    # the contract names the slice only (a refine step follows); a box must lie on a tile, so on the best tile
    pick_slice = key if montage.refine_next else max(shown, key=lambda k: areas[k])
    out = []
    if areas[pick_slice] > 0:
        out.append(sample(f"{sample_id}/pick", views=montage, k=pick_slice))
    # ``run_reasoning`` tells the refine step what the pick answer named ("You chose this slice for: ..."): the
    # taught pick answer names the label (contract); a style whose answers name none renders no such line
    chosen = (answer_label(label),)
    locate = draw_entities(refine_views(case.volume, window, strategy, "axial", key, chosen), context.entities)
    out.append(sample(f"{sample_id}/locate", views=locate, k=key))
    return out


def _sample(
    sample_id, *, turn, views: ViewSet, k: int, truth, areas, label, window, volume, context, ref
) -> TrainSample:
    mask = truth[k]
    shown = {k, *(s for v in views.views for s in v.slices)}
    return TrainSample(
        id=sample_id,
        question=turn.question,
        views=views,
        slice=k,
        box=mask_box(mask),
        points=_points(turn, mask),
        label=label,
        truth={s: truth[s] for s in sorted(shown)},
        slice_areas=areas,
        window=window,
        volume=volume,
        truth_volume=truth if volume is not None else None,
        context=context,
        ref=ref,
    )


def _points(turn: Turn, mask: np.ndarray) -> tuple[VoxelPoint, VoxelPoint]:
    """The dataset's own point pair (U-MRG's ``point_2d``) when both lie in the mask, else two inner points."""
    if turn.truth_points is not None:
        pts = [(int(round(x)), int(round(y))) for x, y in turn.truth_points]
        h, w = mask.shape
        if all(0 <= u < w and 0 <= v < h and mask[v, u] for u, v in pts) and pts[0] != pts[1]:
            return pts[0], pts[1]
    return inner_points(mask)


# ---------------------------------------------------------------------------------------------------------- rows
def model_images(views: ViewSet, convention: Convention) -> list[np.ndarray]:
    """The view images as the model receives them (``ChatReasoner.prepare_image``)."""
    return [resize_for_model(v.image, convention.model_input_size(v.width, v.height)) for v in views.views]


def prompt_text(sample: TrainSample, prompts: PromptSet, convention: Convention) -> str:
    """The prompt as the reasoner renders it at run time (``ChatReasoner.reason``), with the sample's dialogue."""
    return render_prompt(prompts, sample.views, sample.question, sample.context, convention)


def target_text(sample: TrainSample, prompts: PromptSet, convention: Convention) -> str:
    return answer_text(
        prompts.style, sample.views, convention, sample.slice, sample.box, sample.points, sample.label, sample.ref
    )


def sample_row(sample: TrainSample, prompts: PromptSet, convention: Convention, with_answer: bool) -> dict[str, Any]:
    """One row of the TRL dataset: a conversational prompt (the images go before the text, as ``HFReasoner`` puts
    them), the images, the sample id (the rewards look the truth up by it) and, for SFT, the completion."""
    from PIL import Image

    row: dict[str, Any] = {
        "prompt": [{"role": "user", "content": prompt_text(sample, prompts, convention)}],
        "images": [Image.fromarray(a) for a in model_images(sample.views, convention)],
        "sample_id": sample.id,
    }
    if with_answer:
        row["completion"] = [{"role": "assistant", "content": target_text(sample, prompts, convention)}]
    return row


def view_of(sample: TrainSample) -> View:
    return sample.views.views[0]
