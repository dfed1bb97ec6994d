"""Rendering views: one plane (coronal and sagittal as the array transposed, thick slices undone by repeating rows,
superior up), and the montage of labelled tiles the model picks the key slice from.
"""

from __future__ import annotations

import math

import numpy as np

from ...volume.core import Orientation, Volume
from ...volume.windowing import Window, render_slice
from ...wire.errors import InputError
from .model import Tile, View

_GUTTER = 4  # pixels between montage tiles: the model must see where one slice ends
_GUTTER_GREY = 96
_MAX_STRETCH = 8


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
