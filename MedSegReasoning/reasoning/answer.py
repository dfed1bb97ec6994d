"""What a reasoner answers, and the one parser that turns its raw text into it.

Two levels, kept apart on purpose:

- ``ParsedAnswer`` / ``ParsedTarget``: the model's answer with coordinates still in the *model's* convention
  (a 0-1000 grid, pixels of a resized input, ...). Produced by ``parse_answer`` from raw text alone, so the
  parser can be tested on strings without images or models.
- ``Answer`` / ``Target``: after coordinate conversion (``convert.py``), in VOLUME voxel indices, ready to become
  a ``VoxelPrompt`` for the segmenter.

The parser accepts the answer formats the reasoners we support were trained on:

- MedReasoner / Seg-Zero: ``<think>...</think><answer>{"bbox": [x1,y1,x2,y2], "points_1": [x,y],
  "points_2": [x,y]}</answer>`` (both points positive; MedReasoner's own prompt shows single quotes, so a
  Python-literal dict is accepted too);
- Seg-Zero v2 / VisionReasoner / Qwen2.5-VL grounding lists: ``[{"bbox_2d": [..], "point_2d": [..], "label": ..}]``;
- our own contract (``data/prompts/reason_v1.txt``): ``{"reasoning": "...", "targets": [{"slice": k, "bbox": [..],
  "points": [[x,y],..], "negative_points": [..], "label": "..", "ref": null}], "clarification": null}``;

each with or without ```json fences and with free text around the JSON (it becomes reasoning text). Anything
else fails with a ``ReasonerOutputError`` that says what was expected and quotes what came: a reasoner answer
that cannot be used must never turn into a silent empty mask.
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ..wire.errors import InputError, MedSegError, ModelError
from ..wire.geometry import PLANE_ORIENTATIONS, Orientation

if TYPE_CHECKING:  # pipeline is numpy-only, but the reasoning package stays importable on its own
    from ..pipeline import VoxelPrompt

ORIENTATIONS = PLANE_ORIENTATIONS  # the wire's one list; ``Orientation`` is its type

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

    def to_dict(self) -> dict:
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

    def to_dict(self) -> dict:
        return {
            "reasoning": self.reasoning,
            "targets": [t.to_dict() for t in self.targets],
            "clarification": self.clarification,
            "steps": [{"step": s.step, "raw": s.raw} for s in self.steps] or [{"step": "answer", "raw": self.raw}],
        }


# ---------------------------------------------------------------------------------------------------------------
# The parser

_THINK = re.compile(r"<think>(.*?)(</think>|$)", re.DOTALL | re.IGNORECASE)
_ANSWER = re.compile(r"<answer>(.*?)(</answer>|$)", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n?(.*?)(```|$)", re.DOTALL)
_MAX_JSON_CANDIDATES = 64
_POINT_KEYS = ("points_1", "points_2", "point_1", "point_2")


def parse_answer(raw: str) -> ParsedAnswer:
    """The one parser for every answer format we accept (see the module docstring); raises ``ReasonerOutputError``.

    Coordinates are checked for type, sign and box order here; whether they lie inside the image needs the image
    and the model's convention, and is checked during conversion.
    """
    if not isinstance(raw, str) or not raw.strip():
        raise ReasonerOutputError("the reasoner returned no text", raw if isinstance(raw, str) else "")
    reasoning, payload_text, trailing = _split_reasoning_and_payload(raw)
    payload = _decode_json(payload_text, raw)
    reasoning = " ".join(x for x in (reasoning, trailing) if x).strip()
    if isinstance(payload, list):
        targets = tuple(_target_from(item, n, raw) for n, item in enumerate(payload, 1))
        return _finish(reasoning, targets, None, raw, "grounding-list")
    if not isinstance(payload, dict):
        raise ReasonerOutputError(f"the answer's JSON is a {type(payload).__name__}, not an object or a list", raw)
    if "targets" in payload or "clarification" in payload:
        return _contract_answer(payload, reasoning, raw)
    if _looks_like_target(payload):
        return _finish(reasoning, (_target_from(payload, 1, raw),), None, raw, "medreasoner")
    keys = ", ".join(sorted(map(str, payload))) or "none"
    raise ReasonerOutputError(f"the answer's JSON object has none of the expected keys (it has: {keys})", raw)


def _split_reasoning_and_payload(raw: str) -> tuple[str, str, str]:
    """``(reasoning, json_text, trailing_text)``: think/answer tags first, then code fences, then bare JSON."""
    think = _THINK.search(raw)
    answer = _ANSWER.search(raw)
    if think and not think.group(2) and not answer:
        raise ReasonerOutputError(
            "the answer stops inside <think> without an <answer>: it was probably cut off by the token limit", raw
        )
    reasoning = think.group(1).strip() if think else ""
    if answer:
        if not answer.group(2):
            raise ReasonerOutputError("the <answer> block is not closed: the answer was probably cut off", raw)
        body = answer.group(1)
        if not think:
            reasoning = raw[: answer.start()].strip()
        fenced = _FENCE.search(body)
        return reasoning, (fenced.group(1) if fenced else body), ""
    rest = _THINK.sub("", raw) if think else raw
    fence = _FENCE.search(rest)
    if fence:
        if not fence.group(2):
            raise ReasonerOutputError("the ```json block is not closed: the answer was probably cut off", raw)
        before = rest[: fence.start()].strip()
        return " ".join(x for x in (reasoning, before) if x), fence.group(1), rest[fence.end() :].strip()
    start = _first_json_start(rest)
    if start is None:
        raise ReasonerOutputError("the answer contains no JSON object or list", raw)
    before = rest[:start].strip()
    return " ".join(x for x in (reasoning, before) if x), rest[start:], ""


def _first_json_start(text: str) -> int | None:
    positions = [p for p in (text.find("{"), text.find("[")) if p >= 0]
    return min(positions) if positions else None


def _decode_json(text: str, raw: str) -> Any:
    """The first JSON object or list in ``text`` that decodes; text around it is reasoning, not an error.

    Each ``{`` or ``[`` is tried in order, so a bracket in prose ("segment [VII]") before the real JSON does not
    hide it; brackets inside a value that failed are skipped, so a truncated list never yields its first items
    as if they were the whole answer. When nothing decodes, the error describes the candidate that decoded
    furthest: the model's JSON.
    """
    stripped = text.strip()
    if not stripped:
        raise ReasonerOutputError("the answer block is empty", raw)
    starts = [m.start() for m in re.finditer(r"[\[{]", stripped)][:_MAX_JSON_CANDIDATES]
    if not starts:
        raise ReasonerOutputError("the answer block contains no JSON object or list", raw)
    decoder = json.JSONDecoder(parse_constant=_reject_constant)
    first_error: json.JSONDecodeError | None = None
    first_text = ""
    skip_until = -1
    for start in starts:
        if start < skip_until:
            continue  # inside a value that failed to decode: a nested part of broken JSON is not the answer
        candidate = stripped[start:]
        try:
            value, _end = decoder.raw_decode(candidate)
        except _NonFiniteNumber as exc:
            raise ReasonerOutputError(f"the answer's JSON contains the non-finite number {exc}", raw) from None
        except json.JSONDecodeError as exc:
            literal = _python_literal(candidate)
            if literal is not None:
                return literal
            if first_error is None or exc.pos > first_error.pos:
                first_error, first_text = exc, candidate
            skip_until = start + exc.pos
            continue
        if isinstance(value, dict) or (isinstance(value, list) and all(isinstance(v, dict) for v in value)):
            return value
    if first_error is None:
        raise ReasonerOutputError("the answer contains no JSON object or list of objects", raw)
    if first_error.pos >= len(first_text.rstrip()) - 1:
        raise ReasonerOutputError(
            f"the answer's JSON ends early ({first_error.msg}): it was probably cut off by the token limit", raw
        )
    raise ReasonerOutputError(f"the answer's JSON is invalid ({first_error.msg} at character {first_error.pos})", raw)


class _NonFiniteNumber(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _NonFiniteNumber(name)


def _python_literal(text: str) -> Any | None:
    """MedReasoner's prompt shows ``{'bbox': [...]}``; a model that copies the quotes still means JSON.

    ``ast.literal_eval`` evaluates literals only (no names, no calls), so this is safe on untrusted text.
    """
    if "'" not in text:
        return None
    end = text.rfind("}") if text.startswith("{") else text.rfind("]")
    if end < 0:
        return None
    try:
        value = ast.literal_eval(text[: end + 1])
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    return value if isinstance(value, (dict, list)) else None


def _contract_answer(payload: Mapping[str, Any], reasoning: str, raw: str) -> ParsedAnswer:
    targets_value = payload.get("targets", [])
    if targets_value is None:
        targets_value = []
    if not isinstance(targets_value, list):
        raise ReasonerOutputError(f'"targets" must be a list, got {_describe(targets_value)}', raw)
    clarification = payload.get("clarification")
    if clarification is not None and not isinstance(clarification, str):
        raise ReasonerOutputError(f'"clarification" must be a string or null, got {_describe(clarification)}', raw)
    clarification = clarification.strip() if clarification else None
    own_reasoning = payload.get("reasoning")
    if own_reasoning is not None and not isinstance(own_reasoning, str):
        raise ReasonerOutputError(f'"reasoning" must be a string, got {_describe(own_reasoning)}', raw)
    if own_reasoning:
        reasoning = " ".join(x for x in (reasoning, own_reasoning.strip()) if x)
    targets = tuple(_target_from(item, n, raw) for n, item in enumerate(targets_value, 1))
    return _finish(reasoning, targets, clarification, raw, "contract")


def _finish(reasoning, targets, clarification, raw, fmt) -> ParsedAnswer:
    if clarification and targets:
        raise ReasonerOutputError(
            "the answer has both targets and a clarification question; it must give one or the other", raw
        )
    if not clarification and not targets:
        raise ReasonerOutputError("the answer has no target and no clarification question", raw)
    return ParsedAnswer(reasoning=reasoning, targets=targets, clarification=clarification, raw=raw, format=fmt)


def _looks_like_target(obj: Mapping[str, Any]) -> bool:
    keys = {"bbox", "bbox_2d", "box", "points", "point_2d", "slice", *_POINT_KEYS}
    return any(k in obj for k in keys)


def _target_from(obj: Any, n: int, raw: str) -> ParsedTarget:
    """One target from any of the accepted dialects; ``n`` (1-based) names it in error messages."""
    where = f"target {n}"
    if not isinstance(obj, dict):
        raise ReasonerOutputError(f"{where} is {_describe(obj)}, not a JSON object", raw)
    bbox_value = _first_present(obj, ("bbox", "bbox_2d", "box"))
    bbox = None if bbox_value is None else _box(bbox_value, f"the bbox of {where}", raw)
    points: list[tuple[float, float]] = []
    for key in ("points", "point_2d", "points_2d"):
        if obj.get(key) is not None:
            points.extend(_point_list(obj[key], f'"{key}" of {where}', raw))
    for key in _POINT_KEYS:
        if obj.get(key) is not None:
            points.append(_point(obj[key], f'"{key}" of {where}', raw))
    negative = (
        _point_list(obj["negative_points"], f'"negative_points" of {where}', raw)
        if obj.get("negative_points") is not None
        else []
    )
    slice_index = _optional_index(obj.get("slice"), f'"slice" of {where}', raw)
    view = _optional_index(obj.get("view"), f'"view" of {where}', raw)
    label = obj.get("label", "")
    if label is None:
        label = ""
    if not isinstance(label, str):
        raise ReasonerOutputError(f'"label" of {where} must be text, got {_describe(label)}', raw)
    ref = obj.get("ref")
    if ref is not None and (isinstance(ref, bool) or not isinstance(ref, (str, int))):
        raise ReasonerOutputError(f'"ref" of {where} must be an entity id or null, got {_describe(ref)}', raw)
    target = ParsedTarget(
        bbox=bbox,
        points=tuple(points),
        negative_points=tuple(negative),
        slice=slice_index,
        view=view,
        label=label.strip(),
        ref=None if ref is None or ref == "" else str(ref),
    )
    if not target.has_geometry and target.slice is None:
        raise ReasonerOutputError(f"{where} has no bbox, no points and no slice", raw)
    return target


def _first_present(obj: Mapping[str, Any], keys: Sequence[str]) -> Any:
    for key in keys:
        if obj.get(key) is not None:
            return obj[key]
    return None


def _number(value: Any, what: str, raw: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ReasonerOutputError(f"{what} must be a number, got {_describe(value)}", raw)
    if not math.isfinite(value):
        raise ReasonerOutputError(f"{what} is not a finite number ({value})", raw)
    if value < 0:
        raise ReasonerOutputError(f"{what} is negative ({value})", raw)
    return float(value)


def _box(value: Any, what: str, raw: str) -> tuple[float, float, float, float]:
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], list):
        value = value[0]  # [[x1, y1, x2, y2]]: one box wrapped in a list
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, list) for v in value):
        value = [*value[0], *value[1]]  # [[x1, y1], [x2, y2]]: two corners
    if not isinstance(value, list) or len(value) != 4:
        raise ReasonerOutputError(f"{what} must be 4 numbers [x1, y1, x2, y2], got {_describe(value)}", raw)
    x1, y1, x2, y2 = (_number(v, f"coordinate {i + 1} of {what}", raw) for i, v in enumerate(value))
    if x2 < x1 or y2 < y1:
        raise ReasonerOutputError(
            f"{what} [{_fmt(x1)}, {_fmt(y1)}, {_fmt(x2)}, {_fmt(y2)}] is inverted (needs x1 <= x2 and y1 <= y2)", raw
        )
    return (x1, y1, x2, y2)


def _point(value: Any, what: str, raw: str) -> tuple[float, float]:
    if not isinstance(value, list) or len(value) != 2:
        raise ReasonerOutputError(f"{what} must be a point [x, y], got {_describe(value)}", raw)
    return (_number(value[0], f"x of {what}", raw), _number(value[1], f"y of {what}", raw))


def _point_list(value: Any, what: str, raw: str) -> list[tuple[float, float]]:
    """``[[x, y], ...]``; a single flat ``[x, y]`` is one point (the pair cannot mean anything else)."""
    if isinstance(value, list) and len(value) == 2 and all(not isinstance(v, (list, dict)) for v in value):
        return [_point(value, what, raw)]
    if not isinstance(value, list):
        raise ReasonerOutputError(f"{what} must be a list of points [[x, y], ...], got {_describe(value)}", raw)
    return [_point(p, f"point {i + 1} in {what}", raw) for i, p in enumerate(value)]


def _optional_index(value: Any, what: str, raw: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ReasonerOutputError(f"{what} must be a whole number, got {_describe(value)}", raw)
    if value < 0:
        raise ReasonerOutputError(f"{what} is negative ({value})", raw)
    return value


def _describe(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict, str, int, float, bool, type(None))) else repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    kind = {list: "a list", dict: "an object", str: "text", bool: "a boolean", type(None): "null"}.get(type(value))
    return f"{kind} {text}" if kind and kind != "null" else text


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"
