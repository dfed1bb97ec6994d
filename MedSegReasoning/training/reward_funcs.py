"""The GRPO rewards in TRL's signature (``prompts, completions, **columns -> list[float]``), built from ``rewards``.

``RewardAssembly`` reads each completion once, the way ``ask`` reads an answer (``parse_answer`` then ``to_answer``
on the sample's own views and the model's convention), scores every component, and combines them with
``RewardWeights.total``. TRL gets one function per component: ``total`` with weight 1 (the reward it optimises) and
the components with weight 0, so each is logged (``rewards/<name>/mean``) without being added twice. A component
that does not apply to a sample (the key-slice reward on a ``locate`` step, the box on a pick step that names only a
slice) is ``None`` there: TRL logs it as missing, and ``RewardWeights.total`` leaves it out of that sample's total.

The mask reward (the Dice of the frozen segmenter's mask from the predicted prompts) is injected: any callable
``(prompts, completions, *, sample_id: list[str], **kwargs) -> list[float | None]``, used when its weight is above 0.
``training.grpo.build_mask_reward`` is where the real one (``training.mask_reward.MaskReward``) plugs in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..reasoning.answer import ReasonerOutputError, Target
from ..reasoning.convert import to_answer
from ..reasoning.coords import Convention
from ..reasoning.parser import parse_answer
from ..wire.errors import InputError
from .rewards import RewardWeights, box_reward, format_reward, points_reward
from .samples import TrainSample
from .targets import inner_points, mask_box

MaskRewardFn = Callable[..., Sequence[float | None]]
COMPONENTS = ("format", "box", "points", "mask", "key_slice")


def completion_text(completion: Any) -> str:
    """The answer text of one completion as TRL passes it: a string (standard format), or a list of chat messages
    (conversational format) whose last assistant message holds it, its content a string or a list of parts."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        completion = [completion]
    if isinstance(completion, Sequence):
        if not completion:
            return ""  # nothing generated: scores as an answer ask could not use
        messages = [m for m in completion if isinstance(m, Mapping)]
        answers = [m for m in messages if m.get("role", "assistant") == "assistant"] or messages
        if answers:
            return _content_text(answers[-1].get("content", ""))
    raise InputError(
        f"a completion must be a string or a list of chat messages, got {type(completion).__name__}: "
        "pass TRL's completions as they come."
    )


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        parts = [p.get("text", "") for p in content if isinstance(p, Mapping) and p.get("type", "text") == "text"]
        return "".join(str(p) for p in parts)
    return ""


def read_target(sample: TrainSample, text: str, convention: Convention) -> Target | None:
    """The first target of ``text`` in voxel indices, read on the sample's views and with its dialogue context as
    ``ask`` reads it; ``None`` when the runtime could not use the answer (unparseable, outside the image, across
    tiles, a ``ref`` to no entity of the context...)."""
    try:
        answer = to_answer(parse_answer(text), sample.views, convention, sample.context)
    except ReasonerOutputError:
        return None
    return answer.targets[0] if answer.targets else None


def score_components(
    sample: TrainSample, text: str, convention: Convention, slice_only: bool = False
) -> dict[str, float | None]:
    """Every component but the mask for one completion of ``sample`` (``None``: does not apply). ``slice_only``: the
    sample's prompt asks for a slice alone (a contract pick step), so the box and points rewards do not apply."""
    target = read_target(sample, text, convention)
    pick = sample.task == "pick_slice"
    out: dict[str, float | None] = {"format": format_reward(text), "box": None, "points": None, "key_slice": None}
    if pick:
        chosen = target.slice if target is not None and target.orientation == "axial" else None
        out["key_slice"] = _key_slice(sample, chosen)
    if slice_only:
        return out
    out["box"], out["points"] = 0.0, 0.0
    if target is None or target.orientation != "axial":
        return out
    truth = sample.truth.get(target.slice)
    if truth is None or not truth.any():
        return out  # the completion placed its prompts on a slice without the structure
    box = mask_box(truth)
    points = sample.points if target.slice == sample.slice else inner_points(truth)
    foreground = [p for p, label in zip(target.points, target.point_labels, strict=True) if label == 1]
    out["box"] = box_reward(target.box, box, points)
    out["points"] = points_reward(foreground, points, box)
    return out


def _key_slice(sample: TrainSample, chosen: int | None) -> float:
    """``rewards.key_slice_reward`` on the stored per-slice areas (the 3D mask is not kept): 0 off the structure,
    else the chosen slice's area over the largest slice's."""
    areas = sample.slice_areas
    if chosen is None or not 0 <= chosen < len(areas):
        return 0.0
    return float(areas[chosen] / areas.max())


class RewardAssembly:
    """The reward functions of one GRPO run; see the module docstring."""

    def __init__(
        self,
        samples: Mapping[str, TrainSample],
        convention: Convention,
        weights: RewardWeights,
        *,
        slice_only_picks: bool,
        mask_reward: MaskRewardFn | None = None,
    ) -> None:
        self.samples = samples
        self.convention = convention
        self.mask_reward = mask_reward if weights.mask > 0 else None
        self.slice_only_picks = slice_only_picks
        used = {k: w for k, w in weights.to_dict().items() if w > 0 and (k != "mask" or self.mask_reward is not None)}
        if not used:
            from ..wire.errors import InputError

            raise InputError(
                "every reward with a weight above 0 is unavailable (the mask reward needs its segmenter): give "
                "format, box, points or key_slice a weight in the config's rewards."
            )
        self.weights = RewardWeights.from_mapping({k: used.get(k, 0.0) for k in COMPONENTS})
        self.components = [k for k in COMPONENTS if k in used]
        self._cache: tuple[Any, list[dict[str, float | None]]] | None = None

    def scores(self, prompts: Sequence[Any], completions: Sequence[Any], sample_id: Sequence[str], **kwargs: Any):
        """All components of every completion, computed once per batch (TRL calls each function on the same list)."""
        if self._cache is not None and self._cache[0] is completions:
            return self._cache[1]
        rows, slice_only = [], []
        for completion, sid in zip(completions, sample_id, strict=True):
            sample = self.samples[sid]
            slice_only.append(self.slice_only_picks and sample.task == "pick_slice" and sample.views.refine_next)
            rows.append(score_components(sample, completion_text(completion), self.convention, slice_only[-1]))
        if self.mask_reward is not None:  # the injected mask Dice, one decoder call per completion
            masks = self.mask_reward(prompts, completions, sample_id=list(sample_id), **kwargs)
            for row, value, only in zip(rows, masks, slice_only, strict=True):
                row["mask"] = None if only else value  # a step that asks for a slice alone draws no mask
        for row in rows:
            present = {k: v for k, v in row.items() if v is not None and k in self.components}
            row["total"] = self.weights.total(present)
        self._cache = (completions, rows)
        return rows

    def functions(self) -> tuple[list[Callable[..., list[float | None]]], list[float]]:
        """TRL's ``reward_funcs`` and ``reward_weights``: ``total`` (1.0), then each used component (0.0)."""
        funcs = [self._function("total")] + [self._function(name) for name in self.components]
        return funcs, [1.0] + [0.0] * len(self.components)

    def _function(self, name: str) -> Callable[..., list[float | None]]:
        def reward(prompts, completions, sample_id, **kwargs):
            return [row.get(name) for row in self.scores(prompts, completions, sample_id, **kwargs)]

        reward.__name__ = name  # TRL logs rewards/<__name__>/mean
        return reward
