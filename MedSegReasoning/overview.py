"""``overview.png``: one picture to check an ``ask`` result at a glance, without a viewer.

Row 0 is the key slice with every target's outline and a legend; then one row per target with the axial, coronal
and sagittal planes through the target's centre. The grey levels are the ``render_slice`` output for the ask's
window, i.e. what the segmenter and the reasoner saw, and coronal/sagittal planes are shown head up like the
reasoner's views (``plane_volume(..., superior_up=True)``). Only array axes and spacings are used, so any grid
orientation works. Each panel is resampled to physical proportions: a coronal plane of 3 mm slices drawn one
pixel per voxel would look three times flatter than the anatomy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .dialogue.records import PALETTE
from .volume.core import PLANE_ORIENTATIONS, Orientation, Volume, flips_to_superior_up, plane_array_axes, plane_volume
from .volume.windowing import Window, render_slice

PANEL_HEIGHT = 256  # pixels; a panel is narrower or wider as its physical extent requires
MAX_PANEL_WIDTH = 2 * PANEL_HEIGHT  # a thin slab (3 slices) would otherwise make a panel thousands of pixels wide
GAP = 8  # between panels and around the picture
CAPTION = 16  # text strip above each panel (never on the image: it would hide or mimic outline pixels)
TITLE = 20
LEGEND_WIDTH = 220
_CENTRE_SAMPLES = 200_000  # mask voxels searched for the one nearest the centroid
BACKGROUND = (32, 32, 32)
TEXT = (230, 230, 230)
# Targets without a colour cycle through the palette seg.dcm uses, so segment n looks the same in both.
DEFAULT_COLORS: tuple[tuple[int, int, int], ...] = PALETTE


class OverviewTarget(NamedTuple):
    """What the overview needs of a target: its label, its bool ``[k, j, i]`` mask and an optional RGB colour."""

    label: str
    mask: np.ndarray
    color: tuple[int, int, int] | None = None


@dataclass(frozen=True)
class Panel:  # not a NamedTuple: its ``index`` field would shadow tuple.index
    """Where a panel lies in the picture (``x0, y0, width, height``) and which plane of which orientation it shows."""

    orientation: Orientation
    index: int
    box: tuple[int, int, int, int]


def render_overview(
    volume: Volume, window: Window, targets: Sequence[OverviewTarget], key_slice: int | None = None
) -> Image.Image:
    """The overview picture (RGB). ``key_slice`` is an axial K; None: the slice where the targets are largest."""
    return render_overview_panels(volume, window, targets, key_slice)[0]


def render_overview_panels(
    volume: Volume, window: Window, targets: Sequence[OverviewTarget], key_slice: int | None = None
) -> tuple[Image.Image, list[Panel]]:
    """The picture and its panels: row 0 the key slice, then per target axial, coronal and sagittal."""
    colors = [t.color or DEFAULT_COLORS[n % len(DEFAULT_COLORS)] for n, t in enumerate(targets)]
    masks = [np.asarray(t.mask, dtype=bool) for t in targets]
    if key_slice is None:
        areas = sum((m.sum(axis=(1, 2)) for m in masks), np.zeros(volume.shape[0], dtype=np.int64))
        key_slice = int(np.argmax(areas))
    key_slice = min(max(int(key_slice), 0), volume.shape[0] - 1)
    views = {o: plane_volume(volume, o, superior_up=True) for o in PLANE_ORIENTATIONS}
    flips = {o: flips_to_superior_up(volume, o) for o in PLANE_ORIENTATIONS}
    rows: list[list[tuple[Orientation, int, str]]] = [[("axial", key_slice, f"key slice: axial K={key_slice}")]]
    for target, mask in zip(targets, masks, strict=True):
        centre = _centre(mask, volume.geometry.spacing)
        rows.append(
            [(o, centre[plane_array_axes(o)[0]], _caption(o, centre, target.label)) for o in PLANE_ORIENTATIONS]
        )
    sizes = [[_panel_size(views[o]) for o, _, _ in row] for row in rows]
    width = max(sum(w for w, _ in row) + GAP * (len(row) + 1) for row in sizes)
    width = max(width, sizes[0][0][0] + 2 * GAP + LEGEND_WIDTH)
    height = TITLE + sum(CAPTION + max(h for _, h in row) + GAP for row in sizes) + GAP
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    draw.text((GAP, 4), f"{volume.display_name}  window {window.name} {window.level:g}/{window.width:g}", TEXT, font)
    panels: list[Panel] = []
    y = TITLE
    for row, row_sizes in zip(rows, sizes, strict=True):
        x = GAP
        for n, ((orientation, index, caption), (w, h)) in enumerate(zip(row, row_sizes, strict=True)):
            room = w + GAP if n + 1 < len(row) else width - x - GAP  # the last caption may use the row's rest
            draw.text((x, y + 2), _fit(draw, font, caption, room), TEXT, font)
            image = _panel(views[orientation], index, window, masks, colors, orientation, flips[orientation], (w, h))
            canvas.paste(image, (x, y + CAPTION))
            panels.append(Panel(orientation, index, (x, y + CAPTION, w, h)))
            x += w + GAP
        y += CAPTION + max(h for _, h in row_sizes) + GAP
    _legend(draw, font, GAP + sizes[0][0][0] + GAP, TITLE + CAPTION, targets, colors, key_slice, masks)
    return canvas, panels


def _panel_size(view: Volume) -> tuple[int, int]:
    """Pixel size of a plane of ``view`` at physical proportions: PANEL_HEIGHT tall unless too wide."""
    _, n_rows, n_cols = view.shape
    si, sj, _ = view.geometry.spacing
    width_mm, height_mm = n_cols * abs(si), n_rows * abs(sj)
    scale = min(PANEL_HEIGHT / height_mm, MAX_PANEL_WIDTH / width_mm)
    return max(1, round(width_mm * scale)), max(1, round(height_mm * scale))


def _panel(
    view: Volume,
    index: int,
    window: Window,
    masks: Sequence[np.ndarray],
    colors: Sequence[tuple[int, int, int]],
    orientation: str,
    flip: bool,
    size: tuple[int, int],
) -> Image.Image:
    """One plane, windowed and resampled to ``size``, with each mask's boundary in its colour."""
    grey = Image.fromarray(render_slice(view, index, window))
    shrink = size[0] < grey.width or size[1] < grey.height
    image = grey.resize(size, Image.Resampling.BOX if shrink else Image.Resampling.NEAREST)
    pixels = np.array(image)
    for mask, color in zip(masks, colors, strict=True):
        plane = np.transpose(mask, plane_array_axes(orientation))[index]
        if flip:
            plane = plane[::-1]
        if plane.any():
            scaled = Image.fromarray(plane.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)
            pixels[_outline(np.asarray(scaled) > 127)] = color
    return Image.fromarray(pixels)


def _outline(mask: np.ndarray) -> np.ndarray:
    """Mask pixels with a 4-neighbour outside (the picture's edge counts as outside): a 1 px boundary, inside."""
    p = np.pad(mask, 1, constant_values=False)
    return mask & ~(p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:])


def _centre(mask: np.ndarray, spacing: tuple[float, float, float]) -> tuple[int, int, int]:
    """The mask voxel ``(k, j, i)`` nearest (in mm) its centroid, so all three planes cut the target even when it
    is not convex; the volume's centre for an empty mask. A large mask is searched on a coarser lattice (its
    voxels are still mask voxels): listing every voxel of a liver would take hundreds of MB."""
    count = int(np.count_nonzero(mask))
    if count == 0:
        return tuple(n // 2 for n in mask.shape)
    axes = ((1, 2), (0, 2), (0, 1))
    centroid = np.array([np.arange(n) @ mask.sum(axis=a) / count for n, a in zip(mask.shape, axes, strict=True)])
    step = max(1, int(np.ceil((count / _CENTRE_SAMPLES) ** (1.0 / 3.0))))
    points = np.argwhere(mask[::step, ::step, ::step]) * step
    mm = np.asarray(spacing, dtype=float)[::-1]  # (sk, sj, si) for (k, j, i)
    nearest = points[np.argmin((((points - centroid) * mm) ** 2).sum(axis=1))]
    k, j, i = nearest  # a row of argwhere on the 3-D mask
    return (int(k), int(j), int(i))


def _caption(orientation: str, centre: tuple[int, int, int], label: str) -> str:
    index = centre[plane_array_axes(orientation)[0]]
    return f"{label}: {orientation} {'KJI'[plane_array_axes(orientation)[0]]}={index}"


def _fit(draw, font, text: str, width: int) -> str:
    """``text`` shortened to ``width`` pixels, so a narrow panel's caption does not run into its neighbour's."""
    while len(text) > 1 and draw.textlength(text, font=font) > width:
        text = text[:-2] + "…"
    return text


def _legend(draw, font, x: int, y: int, targets, colors, key_slice: int, masks) -> None:
    """A swatch and label per target beside the key slice (noted when the target is not on that slice)."""
    for n, (target, color, mask) in enumerate(zip(targets, colors, masks, strict=True)):
        top = y + n * 16
        draw.rectangle((x, top + 2, x + 10, top + 12), fill=color)
        shown = "" if mask[key_slice].any() else " (not on this slice)"
        draw.text((x + 16, top + 1), f"{target.label}{shown}", TEXT, font)
