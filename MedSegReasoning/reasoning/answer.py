"""What a reasoner answers: the answer types, and the errors a reasoner's output can raise.

Two levels, kept apart on purpose:

- ``ParsedAnswer`` / ``ParsedTarget``: the model's answer with coordinates still in the *model's* convention
  (a 0-1000 grid, pixels of a resized input, ...). Produced by ``parser.parse_answer`` from raw text alone, so the
  parser can be tested on strings without images or models.
- ``Answer`` / ``Target``: after coordinate conversion (``convert.py``), in VOLUME voxel indices, ready to become
  a ``VoxelPrompt`` for the segmenter.

The formats the parser accepts, and why it fails loudly, are in ``parser.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ..volume.core import Orientation
from ..wire.errors import InputError, MedSegError, ModelError

if TYPE_CHECKING:  # pipeline is numpy-only, but the reasoning package stays importable on its own
    from ..pipeline import VoxelPrompt


_QUOTE_CHARS = 240
EXPECTED_FORMS = (
    'JSON {"targets": [{"slice": k, "bbox": [x1, y1, x2, y2], "points": [[x, y]], "label": "...", "ref": null}], '
    '"clarification": null}, or <answer>{"bbox": [...], "points_1": [x, y], "points_2": [x, y]}</answer>, '
    'or [{"bbox_2d": [...], "point_2d": [x, y]}]'
)


class ReasonerOutputError(ModelError):
    """The reasoner answered, but not in a form we can use (exit 3).

    The message says what was wrong, what was expected, and quotes (truncated) what came, so a user can tell a
    model that ignores the format from one cut off by the token limit.
    """

    def __init__(self, detail: str, raw: str = "", expected: str = EXPECTED_FORMS) -> None:
        self.detail = detail
        self.raw = raw
        self.expected = expected
        super().__init__(
            f"the reasoner's answer cannot be used: {detail}. Expected {expected}. It answered: {quote(raw)}"
        )


class ReasoningCancelled(MedSegError):
    """The caller cancelled the question (its ``cancel`` event was set) while the reasoner was working.

    Exit code 130, as for an interrupted command.
    """

    exit_code = 130


def quote(text: str, limit: int = _QUOTE_CHARS) -> str:
    """``text`` in quotes on one line, cut in the middle when long: the start shows the format, the end a cut-off."""
    flat = text.replace("\r", "\\r").replace("\n", "\\n")
    if not flat.strip():
        return "(nothing)"
    if len(flat) > limit:
        half = limit // 2
        flat = f"{flat[:half]} [... {len(flat) - 2 * half} characters ...] {flat[-half:]}"
    return repr(flat)


# ---------------------------------------------------------------------------------------------------------------
# Model-level answer (coordinates in the model's convention)


@dataclass(frozen=True)
class ParsedTarget:
    """One target as the model wrote it: coordinates in the model's convention, not yet checked against an image."""

    bbox: tuple[float, float, float, float] | None = None
    points: tuple[tuple[float, float], ...] = ()
    negative_points: tuple[tuple[float, float], ...] = ()
    slice: int | None = None
    view: int | None = None
    label: str = ""
    ref: str | None = None

    @property
    def has_geometry(self) -> bool:
        return self.bbox is not None or bool(self.points)


@dataclass(frozen=True)
class ParsedAnswer:
    """The whole answer before coordinate conversion. ``format`` names the dialect that was recognised."""

    reasoning: str
    targets: tuple[ParsedTarget, ...]
    clarification: str | None
    raw: str
    format: Literal["contract", "medreasoner", "grounding-list"]


# ---------------------------------------------------------------------------------------------------------------
# Volume-level answer (voxel indices)


@dataclass(frozen=True)
class Target:
    """One target in VOLUME voxel indices, on one slice plane.

    ``orientation`` and ``slice`` name the plane: axial planes have fixed k (``slice`` = k), coronal fixed j,
    sagittal fixed i. ``box`` ``(u0, v0, u1, v1)`` (inclusive) and ``points`` ``(u, v)`` use the plane's own two
    voxel axes: (i, j) for axial, (i, k) for coronal, (j, k) for sagittal. ``point_labels``: 1 foreground,
    0 background. ``view`` is the index of the rendered view the model pointed into.

    ``embedding`` is left for end-to-end models (LISA, MediRound) whose ``[SEG]`` token hands the segmenter's
    decoder a prompt embedding instead of a box or points; no adapter fills it yet.
    """

    slice: int
    orientation: Orientation = "axial"
    box: tuple[int, int, int, int] | None = None
    points: tuple[tuple[int, int], ...] = ()
    point_labels: tuple[int, ...] = ()
    label: str = ""
    ref: str | None = None
    view: int | None = None
    embedding: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.points) != len(self.point_labels):
            raise ValueError("each point needs exactly one label (1 foreground, 0 background)")

    @property
    def k(self) -> int:
        """The axial slice index; only axial targets have one."""
        if self.orientation != "axial":
            raise ValueError(f"a {self.orientation} target has no single axial slice k")
        return self.slice

    @property
    def has_prompt(self) -> bool:
        """True when the segmenter can use it: a box, a foreground point, or an embedding."""
        return self.box is not None or 1 in self.point_labels or self.embedding is not None

    def plane_to_ijk(self, u: int, v: int) -> tuple[int, int, int]:
        """A point of this target's plane as volume indices ``(i, j, k)``."""
        from ..volume.core import plane_to_ijk

        return plane_to_ijk(self.orientation, self.slice, u, v)

    def box_ijk(self) -> tuple[tuple[int, int, int], tuple[int, int, int]] | None:
        """The box as two opposite ``(i, j, k)`` corners (inclusive), whatever the orientation."""
        if self.box is None:
            return None
        u0, v0, u1, v1 = self.box
        return self.plane_to_ijk(u0, v0), self.plane_to_ijk(u1, v1)

    def points_ijk(self) -> tuple[tuple[int, int, int], ...]:
        return tuple(self.plane_to_ijk(u, v) for u, v in self.points)

    def to_voxel_prompt(self) -> VoxelPrompt:
        """The pipeline's prompt for this target, on the same plane: any orientation segments and propagates
        (``pipeline.segment_prompt``). A target with only an embedding (no box, no point) has no voxel prompt."""
        from ..pipeline import VoxelPrompt

        if self.box is None and not self.points:
            raise InputError(
                f"the reasoner gave '{self.label or 'its target'}' no box and no point on {self.orientation} slice "
                f"{self.slice}: a box or a foreground point is needed to segment it."
            )
        return VoxelPrompt(
            k=self.slice,
            box=self.box,
            points=self.points,
            labels=self.point_labels,
            orientation=self.orientation,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "orientation": self.orientation,
            "slice": self.slice,
            "box": list(self.box) if self.box is not None else None,
            "points": [list(p) for p in self.points],
            "point_labels": list(self.point_labels),
            "label": self.label,
            "ref": self.ref,
            "view": self.view,
        }


@dataclass(frozen=True)
class GenerationStats:
    """What one model call cost: for the benchmark, ``result.json`` and the hint on cut-off answers."""

    prompt_tokens: int | None = None
    generated_tokens: int | None = None
    seconds: float = 0.0
    first_token_seconds: float | None = None
    finish_reason: str | None = None  # "stop", "length" (hit the token cap), "cancelled"

    @property
    def tokens_per_second(self) -> float | None:
        if not self.generated_tokens or self.seconds <= 0:
            return None
        return self.generated_tokens / self.seconds


@dataclass(frozen=True)
class StepRecord:
    """One reasoner call inside a round (the key-slice pick, then the refinement), kept for audit and replay."""

    step: str
    raw: str
    reasoning: str
    stats: GenerationStats | None = None


@dataclass(frozen=True)
class Answer:
    """A reasoner's answer in voxel indices: reasoning text, targets, or a clarification question (never both)."""

    reasoning: str
    targets: tuple[Target, ...]
    clarification: str | None
    raw: str
    steps: tuple[StepRecord, ...] = ()
    stats: GenerationStats | None = None

    def voxel_prompts(self) -> list[VoxelPrompt]:
        return [t.to_voxel_prompt() for t in self.targets]

    def to_dict(self) -> dict[str, Any]:
        return {
            "reasoning": self.reasoning,
            "targets": [t.to_dict() for t in self.targets],
            "clarification": self.clarification,
            "steps": [{"step": s.step, "raw": s.raw} for s in self.steps] or [{"step": "answer", "raw": self.raw}],
        }
