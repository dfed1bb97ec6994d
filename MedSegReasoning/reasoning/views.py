"""What the reasoner sees: rendered views of the volume, each with an exact pixel -> voxel mapping.

A vision-language model cannot read a whole volume: it sees a few 2D images. So a question is answered in (at
most) two looks, configured by ``ReasoningStrategy``:

1. **Pick the key slice**: a montage of ``montage_slices`` axial slices, evenly spaced through the volume, each
   tile labelled with its slice number. The model names the slice (or slices) where the structure is best seen;
   a model that answers with a box instead (MedReasoner/Seg-Zero style) picks the slice through the tile its box
   lies on.
2. **Refine**: the chosen slice alone at full resolution, on which the model places the box and points.

When the caller says what the user is looking at (``CurrentView``: orientation and slice index, as Slicer
knows it), questions about "this slice" skip the montage and go straight to step 2 on that view, in any of the
three orientations; a target placed on a coronal or sagittal view is segmented and propagated in that orientation
(``pipeline.segment_prompt``, docs/reasoning.md "Coronal and sagittal key slices").

Views are never resampled through the volume: coronal and sagittal views are the array transposed, so each
pixel is one voxel (rows may be repeated a whole number of times to undo thick slices, and rows are flipped so
that superior is up when the k axis points superior). Montage tiles are scaled as images. Every view keeps
the mapping back to voxel indices in its ``Tile``s, and nothing else about the volume: no DICOM header text
ever reaches a prompt.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

import numpy as np

from ..volume.core import Volume
from ..volume.windowing import Window, render_slice
from ..wire.errors import InputError
from .answer import ORIENTATIONS, Orientation

Task = Literal["pick_slice", "locate"]

_GUTTER = 4  # pixels between montage tiles: the model must see where one slice ends
_GUTTER_GREY = 96
_MIN_TILE = 64
_MAX_STRETCH = 8


@dataclass(frozen=True)
class ReasoningStrategy:
    """How a question is shown to the reasoner (see the module docstring and docs/reasoning.md).

    - ``montage_slices``: candidate axial slices in the key-slice montage (evenly spaced, ends included).
    - ``tile_size``: the longer side of one montage tile, in pixels (slices are scaled to it).
    - ``refine``: after the key slice is picked, show it at full resolution for the box and points. Without
      refinement, a box the model drew on the montage is used as it is (coarser), and an answer that only
      names a slice is an error.
    - ``max_key_slices``: at most this many distinct key slices are refined (one reasoner call each).
    - ``use_current_view``: ``auto`` uses the caller's current view when the question refers to it ("this
      slice", "here"); ``always`` always skips the montage when a current view is given; ``never`` ignores it.
    - ``stretch_reformats``: repeat rows of coronal/sagittal views to undo thick slices (whole multiples only).
    - ``pad_to_multiple``: pad every view (right and bottom, never scaled) to a multiple of this many pixels.
      28 is Qwen2-VL/Qwen2.5-VL's resize factor: such a view passes ``smart_resize`` unchanged (below its pixel
      limit), so an absolute-pixel model sees our pixels 1:1, its boxes need no rescaling, and no server has to
      resample the image. 0 turns padding off.
    """

    montage_slices: int = 9
    tile_size: int = 256
    refine: bool = True
    max_key_slices: int = 2
    use_current_view: Literal["auto", "always", "never"] = "auto"
    stretch_reformats: bool = True
    pad_to_multiple: int = 28

    def __post_init__(self) -> None:
        if self.montage_slices < 1:
            raise InputError(f"the montage needs at least 1 slice, got {self.montage_slices}.")
        if self.tile_size < _MIN_TILE:
            raise InputError(f"montage tiles must be at least {_MIN_TILE} pixels, got {self.tile_size}.")
        if self.max_key_slices < 1:
            raise InputError(f"at least one key slice must be refined, got max_key_slices={self.max_key_slices}.")
        if self.pad_to_multiple < 0:
            raise InputError(
                f"pad_to_multiple must be 0 (off) or a positive number of pixels, got {self.pad_to_multiple}."
            )
        if self.use_current_view not in ("auto", "always", "never"):
            raise InputError(f"use_current_view must be auto, always or never, got '{self.use_current_view}'.")


DEFAULT_STRATEGY = ReasoningStrategy()


@dataclass(frozen=True)
class CurrentView:
    """What the user is looking at: a slice of one orientation (axial: k, coronal: j, sagittal: i)."""

    orientation: Orientation
    slice: int

    def __post_init__(self) -> None:
        if self.orientation not in ORIENTATIONS:
            raise InputError(f"unknown orientation '{self.orientation}': use axial, coronal or sagittal.")


@dataclass(frozen=True)
class Tile:
    """A rectangle of a view image showing one slice plane, and the exact mapping of its pixels to voxels.

    The plane has ``n_u`` voxels along the image x axis and ``n_v`` along y (axial: u = i, v = j; coronal:
    u = i, v = k; sagittal: u = j, v = k); they fill ``width`` x ``height`` pixels from ``(x0, y0)``. With
    ``flip_v`` the image's top row is the plane's last v (superior up).
    """

    orientation: Orientation
    slice: int
    x0: int
    y0: int
    width: int
    height: int
    n_u: int
    n_v: int
    flip_v: bool = False

    def contains(self, x: float, y: float) -> bool:
        """Inside the tile, its far edges included (a box touching the border still belongs to it)."""
        return self.x0 <= x <= self.x0 + self.width and self.y0 <= y <= self.y0 + self.height

    def to_plane(self, x: float, y: float) -> tuple[float, float]:
        """Continuous view pixel position -> continuous plane position ``(u, v)`` in voxels."""
        u = (x - self.x0) * self.n_u / self.width
        v = (y - self.y0) * self.n_v / self.height
        return (u, self.n_v - v if self.flip_v else v)

    def from_plane(self, u: float, v: float) -> tuple[float, float]:
        """The inverse of ``to_plane`` (for drawing known entities onto a view)."""
        if self.flip_v:
            v = self.n_v - v
        return (self.x0 + u * self.width / self.n_u, self.y0 + v * self.height / self.n_v)

    def voxel_at(self, x: float, y: float) -> tuple[int, int]:
        """The voxel ``(u, v)`` shown by the view pixel that contains position ``(x, y)``.

        Going through the pixel (then its centre) treats a coordinate the same way whatever the tile's scale or
        flip: ``x = 20`` means pixel column 20, so a flipped tile cannot move it to the voxel of the row above.
        Positions on the tile's far edge belong to its last pixel.
        """
        px = min(max(math.floor(x), self.x0), self.x0 + self.width - 1)
        py = min(max(math.floor(y), self.y0), self.y0 + self.height - 1)
        return self.voxel_index(*self.to_plane(px + 0.5, py + 0.5))

    def voxels_under(self, x: float, y: float) -> tuple[tuple[int, int], tuple[int, int]]:
        """The first and last voxel ``(u, v)`` that the pixel containing ``(x, y)`` covers.

        On a downscaled montage tile one pixel covers several voxels: a box corner must take the outermost of them,
        so the box covers everything its pixels show. At scale 1 (or when stretched) both are one voxel.
        """
        px = min(max(math.floor(x), self.x0), self.x0 + self.width - 1)
        py = min(max(math.floor(y), self.y0), self.y0 + self.height - 1)
        (ua, va), (ub, vb) = self.to_plane(px, py), self.to_plane(px + 1, py + 1)
        eps = 1e-9
        u_lo, u_hi = _covered(min(ua, ub), max(ua, ub), self.n_u, eps)
        v_lo, v_hi = _covered(min(va, vb), max(va, vb), self.n_v, eps)
        return (u_lo, v_lo), (u_hi, v_hi)

    def voxel_index(self, u: float, v: float) -> tuple[int, int]:
        """The voxel containing a continuous plane position; the far edge belongs to the last voxel."""
        return (_index(u, self.n_u), _index(v, self.n_v))

    @property
    def caption(self) -> str:
        return f"{self.orientation} slice {self.slice}"


def _covered(lo: float, hi: float, n: int, eps: float) -> tuple[int, int]:
    first = _index(lo + eps, n)
    return first, max(first, _index(math.ceil(hi - eps) - 1, n))


def _index(coordinate: float, n: int) -> int:
    return int(min(max(math.floor(coordinate), 0), n - 1))


@dataclass(frozen=True, eq=False)
class View:
    """One image given to the reasoner: ``image`` (H, W, 3) uint8 and the tiles that map it back to voxels."""

    image: np.ndarray
    tiles: tuple[Tile, ...]
    kind: Literal["montage", "slice"]
    columns: int = 1

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    def tile_at(self, x: float, y: float) -> Tile | None:
        for tile in self.tiles:
            if tile.contains(x, y):
                return tile
        return None

    def tile_showing(self, slice_index: int) -> Tile | None:
        for tile in self.tiles:
            if tile.slice == slice_index:
                return tile
        return None

    @property
    def slices(self) -> tuple[int, ...]:
        return tuple(t.slice for t in self.tiles)

    @property
    def orientation(self) -> Orientation:
        return self.tiles[0].orientation


@dataclass(frozen=True, eq=False)
class ViewSet:
    """Everything a reasoner call sees besides the question: the views, the task, and the volume's extent.

    ``expected`` carries the labels the key-slice step found, so the refine prompt can name them.
    ``refine_next`` tells a key-slice prompt whether a refine step follows (else it must ask for the box too).
    ``modality`` is the volume's modality when it is one of the plain DICOM modality codes (never free text).
    """

    task: Task
    views: tuple[View, ...]
    volume_shape: tuple[int, int, int]  # (nk, nj, ni)
    modality: str = ""
    expected: tuple[str, ...] = field(default=())
    refine_next: bool = True

    def __len__(self) -> int:
        return len(self.views)

    def slice_count(self, orientation: Orientation) -> int:
        """Number of slices along the normal of ``orientation`` (axial: nk, coronal: nj, sagittal: ni)."""
        nk, nj, ni = self.volume_shape
        return {"axial": nk, "coronal": nj, "sagittal": ni}[orientation]


_SAFE_MODALITIES = frozenset({"CT", "MR", "PT", "NM", "US", "CR", "DX", "MG", "XA", "RF", "OT"})


def safe_modality(volume: Volume) -> str:
    """The modality code when it is a plain DICOM code; anything else (free text) is dropped from prompts."""
    code = (volume.modality or "").strip().upper()
    return code if code in _SAFE_MODALITIES else ""


# ---------------------------------------------------------------------------------------------------------------
# Rendering


def candidate_slices(n_slices: int, count: int, include: int | None = None) -> list[int]:
    """``count`` evenly spaced slice indices from first to last; ``include`` replaces the nearest one."""
    if n_slices <= count:
        chosen = list(range(n_slices))
    else:
        chosen = sorted({int(round(x)) for x in np.linspace(0, n_slices - 1, count)})
    if include is not None and 0 <= include < n_slices and include not in chosen:
        nearest = min(range(len(chosen)), key=lambda n: abs(chosen[n] - include))
        chosen[nearest] = include
        chosen.sort()
    return chosen


def render_plane(
    volume: Volume, orientation: Orientation, index: int, window: Window, stretch: bool = True
) -> tuple[np.ndarray, Tile]:
    """One slice of any orientation as an RGB image and the tile mapping its pixels to voxels.

    Axial is ``render_slice`` itself (x = i, y = j). Coronal (fixed j) and sagittal (fixed i) planes are the
    array transposed and rendered by the same function, so the windowing is identical across orientations.
    """
    nk, nj, ni = volume.shape
    count = {"axial": nk, "coronal": nj, "sagittal": ni}[orientation]
    if not 0 <= index < count:
        raise InputError(
            f"{orientation} slice {index} is outside the volume, which has {orientation} slices 0 to {count - 1}."
        )
    if orientation == "axial":
        image = render_slice(volume, index, window)
        return image, Tile("axial", index, 0, 0, ni, nj, ni, nj)
    # Move the fixed axis first so that render_slice's "slice k" is our plane: rows = k, columns = u.
    axis = 1 if orientation == "coronal" else 2
    moved = Volume(np.moveaxis(volume.array, axis, 0), volume.geometry, volume.modality)
    image = render_slice(moved, index, window)  # (nk, n_u, 3)
    n_u = image.shape[1]
    flip = _superior_is_higher_k(volume)
    if flip:
        image = image[::-1]
    repeat = _row_repeat(volume, orientation) if stretch else 1
    if repeat > 1:
        image = np.repeat(image, repeat, axis=0)
    image = np.ascontiguousarray(image)
    return image, Tile(orientation, index, 0, 0, n_u, image.shape[0], n_u, nk, flip)


def _superior_is_higher_k(volume: Volume) -> bool:
    """In LPS, +z is superior: show the highest k at the top when k points that way."""
    return float(volume.geometry.direction_matrix[2, 2]) > 0.0


def _row_repeat(volume: Volume, orientation: Orientation) -> int:
    """How many times to repeat each row (one k) so that a 5 mm slice is not drawn as thin as a 0.7 mm pixel."""
    si, sj, sk = volume.geometry.spacing
    in_plane = si if orientation == "coronal" else sj
    if in_plane <= 0:
        return 1
    return int(min(max(round(sk / in_plane), 1), _MAX_STRETCH))


def slice_view(
    volume: Volume, orientation: Orientation, index: int, window: Window, stretch: bool = True, pad_to: int = 0
) -> View:
    """A single slice at full resolution (the refine step, or the caller's current view)."""
    image, tile = render_plane(volume, orientation, index, window, stretch)
    return View(image=pad_image(image, pad_to, 0), tiles=(tile,), kind="slice")


def pad_image(image: np.ndarray, multiple: int, value: int) -> np.ndarray:
    """``image`` padded right and bottom with ``value`` to multiples of ``multiple`` pixels (0: unchanged).

    Tiles keep their pixel positions, so every pixel -> voxel mapping stays exact.
    """
    if multiple <= 1:
        return image
    height, width = image.shape[:2]
    pad_h, pad_w = -height % multiple, -width % multiple
    if not pad_h and not pad_w:
        return image
    return np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), constant_values=value)


def montage_view(volume: Volume, slices: list[int], window: Window, tile_size: int, pad_to: int = 0) -> View:
    """Axial ``slices`` scaled to ``tile_size`` and laid out in reading order, each labelled with its number.

    Built in 8-bit grey and made RGB once at the end: the views are grey, and one channel is a third of the work
    (the montage is most of our per-question time).
    """
    from PIL import Image, ImageDraw

    if not slices:
        raise InputError("a montage needs at least one slice.")
    nk, nj, ni = volume.shape
    scale = tile_size / max(ni, nj)
    tile_w, tile_h = max(1, round(ni * scale)), max(1, round(nj * scale))
    columns = math.ceil(math.sqrt(len(slices)))
    rows = math.ceil(len(slices) / columns)
    width = columns * tile_w + (columns - 1) * _GUTTER
    height = rows * tile_h + (rows - 1) * _GUTTER
    canvas = Image.new("L", (width, height), _GUTTER_GREY)
    draw = ImageDraw.Draw(canvas)
    font = _label_font(max(10, tile_size // 12))
    tiles = []
    for n, k in enumerate(slices):
        x0 = (n % columns) * (tile_w + _GUTTER)
        y0 = (n // columns) * (tile_h + _GUTTER)
        plane = _scaled(Image.fromarray(render_slice(volume, k, window)[..., 0]), tile_w, tile_h)
        canvas.paste(plane, (x0, y0))
        _draw_label(draw, font, x0, y0, str(k))
        tiles.append(Tile("axial", k, x0, y0, tile_w, tile_h, ni, nj))
    grey = pad_image(np.asarray(canvas)[..., None], pad_to, _GUTTER_GREY)
    return View(image=np.repeat(grey, 3, axis=2), tiles=tuple(tiles), kind="montage", columns=columns)


def _scaled(plane, width: int, height: int):
    """Area-average when shrinking (``reduce`` for whole factors, the fast path for 512 -> 256), nearest when growing."""
    from PIL import Image

    w, h = plane.size
    if (w, h) == (width, height):
        return plane
    if w % width == 0 and h % height == 0 and w // width == h // height:
        return plane.reduce(w // width)
    resample = Image.Resampling.BOX if width < w else Image.Resampling.NEAREST
    return plane.resize((width, height), resample)


def _label_font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _draw_label(draw, font, x0: int, y0: int, text: str) -> None:
    """White number on a black box in the tile's top-left corner: readable on any grey level."""
    left, top, right, bottom = draw.textbbox((x0 + 3, y0 + 2), text, font=font)
    draw.rectangle((x0, y0, right + 3, bottom + 3), fill=0)
    draw.text((x0 + 3, y0 + 2), text, fill=255, font=font)


# ---------------------------------------------------------------------------------------------------------------
# Known entities drawn on the views

DEFAULT_ENTITY_COLOR = (255, 255, 0)


class DrawableEntity(Protocol):
    """What drawing needs of an entity (``base.EntityRef`` fits; a Protocol keeps this module free of it)."""

    id: str
    slice: int | None
    box: tuple[int, int, int, int] | None
    color: tuple[int, int, int] | None
    slices: tuple[int, int] | None
    slice_mask: Callable[[int], np.ndarray | None] | None


def draw_entities(views: ViewSet, entities: Sequence[DrawableEntity]) -> ViewSet:
    """``views`` with every known entity drawn where it meets a shown slice: outline in its colour + id tag.

    The reasoner refers to earlier results by what it sees, so "E1" must be on the image, not only in the prompt.
    Only pixels change: the tiles (the pixel -> voxel mapping) are the same objects, so answers read back exactly
    as on the bare views. On a coronal or sagittal view an entity's outline is cut from its 3D mask (one row of
    each axial slice it spans), whatever plane it was segmented on; its key-slice box is drawn on axial views only.
    """
    if not entities:
        return views
    return replace(views, views=tuple(_draw_on_view(view, entities) for view in views.views))


def _draw_on_view(view: View, entities: Sequence[DrawableEntity]) -> View:
    from PIL import Image, ImageDraw

    image = view.image.copy()
    boxes: list[tuple[tuple[float, float, float, float], tuple[int, int, int]]] = []
    tags: list[tuple[float, float, str, tuple[int, int, int], Tile]] = []
    for tile in view.tiles:
        for entity in entities:
            color = tuple(entity.color) if entity.color else DEFAULT_ENTITY_COLOR
            outline = _outline_on_tile(entity, tile)
            if outline is not None:
                rows, cols = np.nonzero(outline)
                image[tile.y0 + rows, tile.x0 + cols] = color
                tags.append((tile.x0 + cols.min(), tile.y0 + rows.min(), entity.id, color, tile))  # type: ignore[arg-type]
                continue
            rect = _box_on_tile(entity, tile)
            if rect is not None:
                boxes.append((rect, color))  # type: ignore[arg-type]
                tags.append((rect[0], rect[1], entity.id, color, tile))  # type: ignore[arg-type]
    if not boxes and not tags:
        return view
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    for rect, color in boxes:
        draw.rectangle(rect, outline=color, width=1)
    font = _label_font(max(10, min(view.tiles[0].width, view.tiles[0].height) // 24))
    for x, y, text, color, tile in tags:
        _draw_tag(draw, font, x, y, text, color, tile)
    return replace(view, image=np.asarray(canvas).copy())


def _shows(entity: DrawableEntity, k: int) -> bool:
    if entity.slices is not None:
        return entity.slices[0] <= k <= entity.slices[1]
    return entity.slice == k


def _plane_mask(entity: DrawableEntity, tile: Tile) -> np.ndarray | None:
    """The entity's mask on the tile's plane, ``(n_v, n_u)`` in voxels, or None where it does not reach.

    Axial: ``slice_mask(k)``. Coronal/sagittal: row j (column i) of each axial slice the entity spans, so only
    those slices are decoded.
    """
    if entity.slice_mask is None:
        return None
    if tile.orientation == "axial":
        return entity.slice_mask(tile.slice) if _shows(entity, tile.slice) else None
    if entity.slices is None:
        return None
    plane = np.zeros((tile.n_v, tile.n_u), dtype=bool)
    for k in range(max(entity.slices[0], 0), min(entity.slices[1], tile.n_v - 1) + 1):
        axial = entity.slice_mask(k)
        if axial is not None:
            plane[k] = axial[tile.slice, :] if tile.orientation == "coronal" else axial[:, tile.slice]
    return plane


def _outline_on_tile(entity: DrawableEntity, tile: Tile) -> np.ndarray | None:
    """The entity's boundary pixels on ``tile`` (tile-sized bool array), or None when no mask reaches it."""
    mask = _plane_mask(entity, tile)
    if mask is None or not mask.any():
        return None
    if tile.flip_v:
        mask = mask[::-1]
    if mask.shape != (tile.height, tile.width):
        from PIL import Image

        scaled = Image.fromarray(mask.astype(np.uint8) * 255).resize(
            (tile.width, tile.height), Image.Resampling.NEAREST
        )
        mask = np.asarray(scaled) > 127
        if not mask.any():
            return None
    return mask & ~_eroded(mask)


def _eroded(mask: np.ndarray) -> np.ndarray:
    """4-neighbour erosion; outside the tile counts as background, so a mask touching the edge is outlined there."""
    padded = np.pad(mask, 1, constant_values=False)
    return padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]


def _box_on_tile(entity: DrawableEntity, tile: Tile) -> tuple[float, float, float, float] | None:
    """The entity's key-slice box as a pixel rectangle on ``tile`` (used when its mask is not at hand)."""
    if entity.box is None or entity.slice != tile.slice or tile.orientation != _orientation(entity):
        return None
    i0, j0, i1, j1 = entity.box
    xa, ya = tile.from_plane(i0, j0)
    xb, yb = tile.from_plane(i1 + 1, j1 + 1)  # the box's voxels are inclusive: draw around the last one
    x0, x1 = sorted((xa, xb))
    y0, y1 = sorted((ya, yb))
    right, bottom = tile.x0 + tile.width - 1, tile.y0 + tile.height - 1
    return (max(x0, tile.x0), max(y0, tile.y0), min(x1 - 1, right), min(y1 - 1, bottom))


def _orientation(entity: DrawableEntity) -> str:
    return str(getattr(entity, "orientation", "axial"))


def _draw_tag(draw, font, x: float, y: float, text: str, color: tuple[int, int, int], tile: Tile) -> None:
    """The id in black on a box of the entity's colour, just above the outline (below its top when no room)."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    w, h = right - left + 4, bottom - top + 4
    tx = min(max(int(x), tile.x0), tile.x0 + tile.width - w)
    ty = int(y) - h - 1 if int(y) - h - 1 >= tile.y0 else int(y) + 1
    draw.rectangle((tx, ty, tx + w - 1, ty + h - 1), fill=color)
    draw.text((tx + 2 - left, ty + 2 - top), text, fill=(0, 0, 0), font=font)


# ---------------------------------------------------------------------------------------------------------------
# Choosing what to show

_THIS_VIEW = re.compile(
    r"\b(this|current|displayed|shown|visible|present)\s+(slice|image|view|section|plane|frame|cut)\b"
    r"|\b(on|in)\s+(the\s+)?screen\b|\bhere\b",
    re.IGNORECASE,
)


def refers_to_current_view(question: str) -> bool:
    """True for questions about what the user is looking at ("what is this mass on the current slice?")."""
    return bool(_THIS_VIEW.search(question))


def wants_current_view(strategy: ReasoningStrategy, question: str, current: CurrentView | None) -> bool:
    if current is None or strategy.use_current_view == "never":
        return False
    return strategy.use_current_view == "always" or refers_to_current_view(question)


def key_slice_views(
    volume: Volume, window: Window, strategy: ReasoningStrategy, current: CurrentView | None = None
) -> ViewSet:
    """Step 1: the montage. An axial current view's slice is always one of the candidates."""
    include = current.slice if current is not None and current.orientation == "axial" else None
    slices = candidate_slices(volume.shape[0], strategy.montage_slices, include)
    view = montage_view(volume, slices, window, strategy.tile_size, strategy.pad_to_multiple)
    return ViewSet("pick_slice", (view,), volume.shape, safe_modality(volume), refine_next=strategy.refine)


def refine_views(
    volume: Volume,
    window: Window,
    strategy: ReasoningStrategy,
    orientation: Orientation,
    index: int,
    expected: tuple[str, ...] = (),
) -> ViewSet:
    """Step 2: one slice at full resolution."""
    view = slice_view(volume, orientation, index, window, strategy.stretch_reformats, strategy.pad_to_multiple)
    return ViewSet("locate", (view,), volume.shape, safe_modality(volume), expected)
