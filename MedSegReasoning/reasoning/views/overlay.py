"""Known entities drawn on the views (outline, box and id tag), so a question can refer to what earlier rounds found."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Protocol

import numpy as np

from .model import Tile, View, ViewSet
from .render import _label_font

# ---------------------------------------------------------------------------------------------------------------
# Known entities drawn on the views

DEFAULT_ENTITY_COLOR = (255, 255, 0)


class DrawableEntity(Protocol):
    """What drawing needs of an entity (``base.EntityRef`` fits; a Protocol keeps this module free of it)."""

    @property
    def id(self) -> str: ...
    @property
    def slice(self) -> int | None: ...
    @property
    def box(self) -> tuple[int, int, int, int] | None: ...
    @property
    def color(self) -> tuple[int, int, int] | None: ...
    @property
    def slices(self) -> tuple[int, int] | None: ...
    @property
    def slice_mask(self) -> Callable[[int], np.ndarray | None] | None: ...


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
            color: tuple[int, int, int] = tuple(entity.color) if entity.color else DEFAULT_ENTITY_COLOR  # type: ignore[assignment]  # a copy of the entity's (R, G, B)
            outline = _outline_on_tile(entity, tile)
            if outline is not None:
                rows, cols = np.nonzero(outline)
                image[tile.y0 + rows, tile.x0 + cols] = color
                tags.append((tile.x0 + cols.min(), tile.y0 + rows.min(), entity.id, color, tile))
                continue
            rect = _box_on_tile(entity, tile)
            if rect is not None:
                boxes.append((rect, color))
                tags.append((rect[0], rect[1], entity.id, color, tile))
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
