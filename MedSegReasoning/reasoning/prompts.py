"""Prompt templates: versioned text files shipped in ``MedSegReasoning/data/prompts``, filled with ``string.Template``.

Templates are data, not code, so a change of wording is a new file (``reason_v2.txt``) and a new version in the
reasoner identity, and results stay comparable. Two styles:

- ``contract`` (``pick_slice_v1.txt``, ``reason_v1.txt``): our JSON answer contract, for instruction-tuned
  models (Qwen-VL Instruct, Lingshu).
- ``segzero`` (``segzero_v1.txt``): the ``<think>/<answer>`` bbox + two points format that MedReasoner and
  Seg-Zero were trained on; used for both steps (on the montage, the tile the box lies on picks the slice).

What goes into a prompt: the question, slice numbers, orientations, the volume's extent, a plain modality code,
coordinate rules, and the labels/ids of entities found earlier. Never DICOM header text (names, IDs, dates,
descriptions) or file paths: the functions here receive none of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from string import Template
from typing import TYPE_CHECKING, Literal

from ..wire.errors import InputError

if TYPE_CHECKING:
    from .base import ReasoningContext
    from .coords import Convention
    from .views import View, ViewSet

PromptStyle = Literal["contract", "segzero"]
PROMPT_STYLES: tuple[PromptStyle, ...] = ("contract", "segzero")
PROMPT_VERSION = "v1"
_TEMPLATE_FILES = {
    ("contract", "pick_slice"): "pick_slice",
    ("contract", "locate"): "reason",
    ("segzero", "pick_slice"): "segzero",
    ("segzero", "locate"): "segzero",
}


@dataclass(frozen=True)
class PromptSet:
    """A style and a version: recorded in the reasoner identity as e.g. ``contract-v1``."""

    style: PromptStyle = "contract"
    version: str = PROMPT_VERSION

    def __post_init__(self) -> None:
        if self.style not in PROMPT_STYLES:
            raise _unknown_style(self.style)

    @property
    def identity(self) -> str:
        return f"{self.style}-{self.version}"

    def template(self, task: str) -> Template:
        return Template(load_template(_TEMPLATE_FILES[(self.style, task)], self.version))


def prompt_set(style: str) -> PromptSet:
    """The prompt set of a style named as text (a CLI option, ``models.json``): checked here, so that the type
    checker sees a ``PromptStyle`` and an unknown name is the same ``InputError`` as ``PromptSet``'s."""
    if style not in PROMPT_STYLES:
        raise _unknown_style(style)
    return PromptSet(style)


def _unknown_style(style: str) -> InputError:
    return InputError(f"unknown prompt style '{style}': use one of {', '.join(PROMPT_STYLES)}.")


@lru_cache(maxsize=32)
def load_template(name: str, version: str = PROMPT_VERSION) -> str:
    """The text of ``data/prompts/<name>_<version>.txt`` from the installed package."""
    # ``/``, not ``joinpath(a, b, c)``: a Traversable's joinpath takes one part before Python 3.11
    path = resources.files("MedSegReasoning") / "data" / "prompts" / f"{name}_{version}.txt"
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"prompt template '{name}_{version}.txt' is not installed with MedSegReasoning.") from None


def render_prompt(
    prompts: PromptSet,
    views: ViewSet,
    question: str,
    context: ReasoningContext,
    convention: Convention,
) -> str:
    """The text of one reasoner call. Whitespace-only lines left by empty sections are dropped."""
    question = " ".join(question.split())
    if not question:
        raise InputError("the question is empty: ask what to segment, e.g. 'segment the liver'.")
    values = {
        "question": question,
        "volume": describe_volume(views),
        "views": describe_views(views),
        "coordinates": describe_coordinates(views, convention),
        "entities": describe_entities(context, views, convention),
        "expected": describe_expected(views),
        "slice_example": _slice_example(views),
        **_pick_step_values(views, convention),
    }
    text = prompts.template(views.task).substitute(values)
    lines = [line.rstrip() for line in text.splitlines()]
    out: list[str] = []
    for n, line in enumerate(lines):
        if not line and out and not out[-1]:
            continue  # an empty section leaves no double blank line
        if not line and out and out[-1].startswith("- ") and n + 1 < len(lines) and lines[n + 1].startswith("- "):
            continue  # nor a gap inside a list of rules
        out.append(line)
    return "\n".join(out).strip() + "\n"


def describe_volume(views: ViewSet) -> str:
    nk, nj, ni = views.volume_shape
    modality = f" {views.modality}" if views.modality else ""
    return (
        f"The{modality} volume has {nk} axial slices numbered 0 to {nk - 1}, each {ni} columns wide and {nj} rows high."
    )


def describe_views(views: ViewSet) -> str:
    lines = []
    for n, view in enumerate(views.views):
        prefix = f"Image {n}: " if len(views.views) > 1 else "The image is "
        lines.append(prefix + _describe_view(view) + ".")
    return "\n".join(lines)


def _describe_view(view: View) -> str:
    if view.kind == "montage":
        numbers = ", ".join(str(s) for s in view.slices)
        return (
            f"a montage of {len(view.tiles)} {view.orientation} slices ({numbers}) in reading order, "
            f"{view.columns} per row, each labelled with its slice number in its top-left corner"
        )
    tile = view.tiles[0]
    text = f"{tile.orientation} slice {tile.slice} at full resolution"
    if tile.orientation != "axial":
        text += ", superior at the top" if tile.flip_v else ", inferior at the top"
    return text


def describe_coordinates(views: ViewSet, convention: Convention) -> str:
    parts = []
    for n, view in enumerate(views.views):
        sentence = convention.describe(view.width, view.height)
        parts.append(f"on image {n}, {sentence}" if len(views.views) > 1 else sentence[0].upper() + sentence[1:])
    return "; ".join(parts)


def describe_entities(context: ReasoningContext, views: ViewSet, convention: Convention) -> str:
    """Entities found so far; an entity on a slice shown alone gets its box in this image's coordinates."""
    if not context.entities:
        return ""
    lines = ["Structures segmented so far (id: name):"]
    for entity in context.entities:
        where = f", {entity.orientation} slice {entity.slice}" if entity.slice is not None else ""
        box = _entity_box_on_views(entity, views, convention)
        lines.append(f"- {entity.id}: {entity.label}{where}" + (f", box {box} on this image" if box else ""))
    return "\n".join(lines)


def _entity_box_on_views(entity, views: ViewSet, convention: Convention) -> list[int] | None:
    """The entity's voxel box in the model's coordinates, when its slice is the one single-slice view shown."""
    if entity.box is None or entity.slice is None or len(views.views) != 1 or views.views[0].kind != "slice":
        return None
    view = views.views[0]
    tile = view.tiles[0]
    if (tile.orientation, tile.slice) != (entity.orientation, entity.slice):
        return None
    u0, v0, u1, v1 = entity.box
    (a0, b0), (a1, b1) = model_point(tile, view, convention, u0, v0), model_point(tile, view, convention, u1, v1)
    return [min(a0, a1), min(b0, b1), max(a0, a1), max(b0, b1)]


def model_point(tile, view, convention: Convention, u: int, v: int) -> tuple[int, int]:
    """Whole model coordinates that read back (as answers are read) to voxel ``(u, v)``, nearest its centre.

    Also how ``training.targets`` writes the answers a model is trained on, so both speak the same coordinates."""
    px, py = tile.from_plane(u + 0.5, v + 0.5)
    cx, cy = convention.from_view_pixels(px, py, view.width, view.height)
    for x in sorted({math.floor(cx), math.ceil(cx)}, key=lambda m: abs(m - cx)):
        for y in sorted({math.floor(cy), math.ceil(cy)}, key=lambda m: abs(m - cy)):
            if tile.voxel_at(*convention.to_view_pixels(x, y, view.width, view.height)) == (u, v):
                return x, y
    return round(cx), round(cy)


def describe_expected(views: ViewSet) -> str:
    if not views.expected:
        return ""
    return "You chose this slice for: " + "; ".join(views.expected) + "."


_PICK_ONLY = '{"slice": <slice number>, "label": "<name of the structure>", "ref": null}'
_PICK_AND_LOCATE = (
    '{"slice": <slice number>, "bbox": [x1, y1, x2, y2], "points": [[x, y]], "label": "<name of the structure>", '
    '"ref": null}'
)


def _pick_step_values(views: ViewSet, convention: Convention) -> dict[str, str]:
    """The montage step either only picks slices (a refine step follows) or must also place the box."""
    values = {
        "task_note": "Draw the box on the one tile where the target region is best seen."
        if views.task == "pick_slice"
        else ""
    }
    if views.refine_next:
        values.update(
            step=(
                "Step 1 of 2: choose the slice on which the structure the question is about is best seen (largest "
                "and clearest). You will then see that slice at full resolution and locate the structure on it."
            ),
            target_form=_PICK_ONLY,
            coordinate_rules="",
        )
    else:
        values.update(
            step=(
                "Choose the slice on which the structure the question is about is best seen (largest and clearest) "
                "and locate the structure on that slice's tile."
            ),
            target_form=_PICK_AND_LOCATE,
            coordinate_rules=(
                f"- {describe_coordinates(views, convention)} (of the whole montage); the bbox and points must lie "
                "on the tile of the chosen slice."
            ),
        )
    return values


def _slice_example(views: ViewSet) -> str:
    if views.views and views.views[0].kind == "slice":
        return str(views.views[0].tiles[0].slice)
    return "<slice number>"
