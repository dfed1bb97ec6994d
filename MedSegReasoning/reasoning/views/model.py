"""The view types: the strategy of looks, what the user is looking at, and views made of tiles, each tile with its
exact pixel -> voxel mapping (the package docstring says why views are never resampled).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ...volume.core import PLANE_ORIENTATIONS, Orientation
from ...wire.errors import InputError

Task = Literal["pick_slice", "locate"]
_MIN_TILE = 64


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
        if self.orientation not in PLANE_ORIENTATIONS:
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
