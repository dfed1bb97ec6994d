"""One target, from a prompt in voxel indices to a 3D mask: the step the CLI, the dialogue and the server share.

Prompts arrive in the volume's own voxel indices (i column, j row, k slice; box corners inclusive), whoever
made them: a user on the command line, a reasoner after its coordinate conversion, a click in Slicer. They
are checked against the volume here, once, so every caller gets the same clear error for a box outside the
volume or on an empty region.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np

from .propagation import (
    DEFAULT_PROPAGATION,
    ProgressCallback,
    PropagationConfig,
    PropagationResult,
    propagate,
    segment_slice,
)
from .segmentation.base import Prompt2D, Segmenter, TargetWork, embedding_mark, work_since
from .volume.core import (
    PLANE_ORIENTATIONS,
    Orientation,
    Volume,
    flips_to_superior_up,
    from_plane_array,
    plane_array_axes,
    plane_shape,
    plane_to_ijk,
    plane_volume,
)
from .volume.windowing import Window, render_slice
from .wire.errors import InputError


@dataclass(frozen=True)
class VoxelPrompt:
    """A prompt on one slice plane, in the volume's voxel indices.

    ``orientation`` names the plane (axial: fixed k, coronal: fixed j, sagittal: fixed i) and ``k`` its index along
    the plane's normal (the axial slice k for the default axial prompt; named ``k`` because it is the slice index
    of the re-sliced view the plane is segmented on, see ``volume.core.plane_volume``). ``box`` is
    ``(u0, v0, u1, v1)`` inclusive and ``points`` are ``(u, v)`` in the plane's own two voxel axes, as in
    ``reasoning.answer.Target``: (i, j) axial, (i, k) coronal, (j, k) sagittal.
    """

    k: int
    box: tuple[int, int, int, int] | None = None
    points: tuple[tuple[int, int], ...] = ()
    labels: tuple[int, ...] = ()
    orientation: Orientation = "axial"

    def __post_init__(self) -> None:
        if self.orientation not in PLANE_ORIENTATIONS:
            raise InputError(f"unknown orientation '{self.orientation}': use axial, coronal or sagittal.")

    @property
    def is_axial(self) -> bool:
        return self.orientation == "axial"

    def plane_to_ijk(self, u: int, v: int) -> tuple[int, int, int]:
        """A point of this prompt's plane as volume indices ``(i, j, k)``."""
        return plane_to_ijk(self.orientation, self.k, u, v)

    def to_prompt2d(self) -> Prompt2D:
        """The same prompt in the pixel coordinates of its plane (x = u, y = v), as the segmenter takes it."""
        return Prompt2D(
            box=tuple(float(v) for v in self.box) if self.box else None,  # type: ignore[arg-type]  # the 4-tuple box, as floats
            points=tuple((float(i), float(j)) for i, j in self.points),
            labels=tuple(self.labels),
        )

    def to_dict(self) -> dict:
        """``slice`` is the index along the plane's normal, ``box`` in the plane's axes, points as (i, j, k, label)."""
        return {
            "orientation": self.orientation,
            "slice": self.k,
            "box": list(self.box) if self.box else None,
            "points": [[*self.plane_to_ijk(u, v), lab] for (u, v), lab in zip(self.points, self.labels, strict=True)],
        }


@dataclass
class TargetResult:
    """A segmented target: its 3D mask on the volume's grid plus what a reviewer needs to trust it."""

    value: int
    label: str
    prompt: VoxelPrompt
    mask: np.ndarray  # bool [k, j, i]
    score: float
    propagation: PropagationResult | None
    timings: dict[str, float] = field(default_factory=dict)
    work: TargetWork | None = None

    @property
    def voxels(self) -> int:
        return int(self.mask.sum())

    @property
    def key_slice(self) -> int:
        """The axial key slice: the prompt's k, or for a coronal/sagittal prompt the axial slice where the mask is
        largest (readers of ``key_slice`` take it as an axial index; the prompt's own plane is in ``prompt``)."""
        return axial_key_slice(self.mask, self.prompt)


def axial_key_slice(mask: np.ndarray, prompt: VoxelPrompt) -> int:
    """``prompt.k`` for an axial prompt; else the axial slice with the most mask voxels (of equals, the one nearest
    the middle of the mask's extent, as ``dialogue.findings.largest_slice`` picks it), or the one through the
    prompt's centre when the mask is empty."""
    if prompt.is_axial:
        return int(prompt.k)
    areas = mask.sum(axis=(1, 2))
    if not areas.any():
        return int(prompt.plane_to_ijk(*_box_centre(prompt))[2])
    present = np.flatnonzero(areas)
    best = np.flatnonzero(areas == areas.max())
    middle = (present[0] + present[-1]) / 2.0
    return int(best[np.argmin(np.abs(best - middle))])


def _box_centre(prompt: VoxelPrompt) -> tuple[int, int]:
    if prompt.box is not None:
        u0, v0, u1, v1 = prompt.box
        return ((u0 + u1) // 2, (v0 + v1) // 2)
    return prompt.points[0] if prompt.points else (0, 0)


_AXIS_NAMES = {"axial": ("I", "J", "K"), "coronal": ("I", "K", "J"), "sagittal": ("J", "K", "I")}
"""Per orientation: the names of the plane's u axis, v axis, and normal (its slice index)."""


def check_prompt(volume: Volume, prompt: VoxelPrompt, window: Window | None = None) -> None:
    """Refuse prompts that do not fit the volume, with the volume's valid ranges in the message.

    With a ``window``, also refuse a box over a region that is uniform in that window (nothing to segment).
    Callers run this before loading a model, so a wrong prompt costs nothing. Coronal and sagittal prompts are
    checked against their plane (box and points in its (u, v) axes, named in the message).
    """
    n_slices, n_v, n_u = plane_shape(volume.shape, prompt.orientation)
    u_name, v_name, normal = _AXIS_NAMES[prompt.orientation]
    plane = "" if prompt.is_axial else f"{prompt.orientation} "
    if not 0 <= prompt.k < n_slices:
        raise InputError(
            f"{plane}slice {normal}={prompt.k} does not exist: this volume has {plane}slices 0 to {n_slices - 1}."
        )
    if prompt.box is not None:
        i0, j0, i1, j1 = prompt.box
        if i0 > i1 or j0 > j1:
            raise InputError(
                f"the box {prompt.box} is inverted: give it as {u_name}0,{v_name}0,{u_name}1,{v_name}1 with "
                f"{u_name}0 <= {u_name}1 and {v_name}0 <= {v_name}1."
            )
        if i0 < 0 or j0 < 0 or i1 >= n_u or j1 >= n_v:
            raise InputError(
                f"the box {prompt.box} lies outside the {plane}slice: {u_name} must be within 0..{n_u - 1} and "
                f"{v_name} within 0..{n_v - 1}."
            )
    for u, v in prompt.points:
        if not (0 <= u < n_u and 0 <= v < n_v):
            raise InputError(
                f"the point {prompt.plane_to_ijk(u, v)} lies outside the {plane}slice: {u_name} must be within "
                f"0..{n_u - 1} and {v_name} within 0..{n_v - 1}."
            )
    if prompt.labels and not any(lab == 1 for lab in prompt.labels) and prompt.box is None:
        raise InputError("the prompt has only background points: add a box or at least one foreground point.")
    if window is not None:
        view = PlaneView.of(volume, prompt)
        _check_region_has_content(render_slice(view.volume, view.prompt.k, window), view.prompt.box, prompt)


def _check_region_has_content(image: np.ndarray, box: tuple[int, int, int, int] | None, prompt: VoxelPrompt) -> None:
    """A box over uniform background (air, padding) cannot contain a structure: say so instead of guessing."""
    if box is None:
        return
    i0, j0, i1, j1 = box
    if i0 == i1 or j0 == j1:  # a line or a single pixel has no inside to segment, whatever the image shows
        plane = "" if prompt.is_axial else f"{prompt.orientation} "
        raise InputError(
            f"the box {prompt.box} on {plane}slice {prompt.k} is {i1 - i0 + 1} x {j1 - j0 + 1} pixel(s), too thin to "
            "hold a structure: draw it around the structure (corners are inclusive), or give a --point instead."
        )
    region = image[j0 : j1 + 1, i0 : i1 + 1, 0]
    if int(region.max()) - int(region.min()) == 0:
        plane = "" if prompt.is_axial else f"{prompt.orientation} "
        raise InputError(
            f"the box {prompt.box} on {plane}slice {prompt.k} covers a uniform region (no image content in this "
            "window): place the box on the structure, or choose another --window."
        )


@dataclass(frozen=True)
class PlaneView:
    """A prompt's plane as slice ``prompt.k`` of a re-sliced view (``volume.core.plane_volume``), where the prompt
    is an ordinary axial prompt; ``to_volume`` brings arrays on the view's grid back to ``[k, j, i]``.

    Coronal and sagittal views show superior at the top (rows reversed where k points superior), as the reasoner
    saw them: the prompt's v is mirrored onto the view's rows accordingly. Axial: the volume and prompt as they are.
    """

    volume: Volume
    prompt: VoxelPrompt
    orientation: str
    flipped: bool = False

    @staticmethod
    def of(volume: Volume, prompt: VoxelPrompt) -> PlaneView:
        if prompt.is_axial:
            return PlaneView(volume, prompt, "axial")
        flipped = flips_to_superior_up(volume, prompt.orientation)
        view = plane_volume(volume, prompt.orientation, superior_up=True)
        on_view = replace(prompt, orientation="axial")
        if flipped:
            last = view.shape[1] - 1
            if prompt.box is not None:
                u0, v0, u1, v1 = prompt.box
                on_view = replace(on_view, box=(u0, last - v1, u1, last - v0))
            on_view = replace(on_view, points=tuple((u, last - v) for u, v in prompt.points))
        return PlaneView(view, on_view, prompt.orientation, flipped)

    def to_view(self, array: np.ndarray) -> np.ndarray:
        """A (mask) array on the volume's ``[k, j, i]`` grid on the view's grid (the inverse of ``to_volume``)."""
        if self.orientation == "axial":
            return array
        view = np.transpose(array, plane_array_axes(self.orientation))
        return np.ascontiguousarray(view[:, ::-1, :] if self.flipped else view)

    def to_volume(self, array: np.ndarray) -> np.ndarray:
        """A (mask) array of the view's grid on the volume's ``[k, j, i]`` grid, C-ordered like every engine array."""
        if self.orientation == "axial":
            return array
        return np.ascontiguousarray(from_plane_array(array, self.orientation, flipped=self.flipped))


@dataclass
class PlaneSegmentation:
    """A prompt's key-plane mask and (optionally) its propagation, both already on the volume's ``[k, j, i]`` grid."""

    key_mask: np.ndarray  # bool [k, j, i]: the key plane only
    score: float
    propagation: PropagationResult | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.key_mask.any()

    @property
    def mask(self) -> np.ndarray:
        """The propagated 3D mask, or the key plane's when there was no propagation."""
        return self.propagation.mask if self.propagation is not None else self.key_mask

    @property
    def slice_counts(self) -> tuple[int, int]:
        """``(segmented, interpolated)`` slices: those the segmenter ran on (the key plane and every slice propagation
        visited, or probed as the far end of a skip that was then walked instead) and those skip-and-interpolate filled
        without it."""
        if self.propagation is None:
            return 1, 0
        segmented = set(self.propagation.visited_slices) | set(self.propagation.probed_slices)
        return len(segmented), len(self.propagation.interpolated_slices)


def segment_prompt(
    volume: Volume,
    segmenter: Segmenter,
    window: Window,
    prompt: VoxelPrompt,
    *,
    propagate_3d: bool = True,
    config: PropagationConfig = DEFAULT_PROPAGATION,
    progress: ProgressCallback | None = None,
) -> PlaneSegmentation:
    """Segment the prompt's plane and, unless told not to (or it came back empty), propagate along its normal.

    Any orientation: the plane is "slice k" of a re-sliced view (``PlaneView``), so the axial machinery (rendering
    with the same window, superior up as the reasoner saw it, the embedding cache, the physically proportioned
    segmenter input of ``segment_slice``, propagation) runs on that view; masks come back by the inverse axis
    permutation. A coronal
    or sagittal propagation visits slices along j or i: on a 512x512 CT many more than along k (see
    docs/reasoning.md); ``config.max_slices`` caps it. The prompt is not checked here (callers run ``check_prompt``).
    """
    t0 = time.perf_counter()
    plane = PlaneView.of(volume, prompt)
    view, on_view = plane.volume, plane.prompt
    prediction = segment_slice(view, segmenter, window, on_view.k, on_view.to_prompt2d(), config.key_zoom)
    key_view = np.zeros(view.shape, dtype=bool)
    key_view[on_view.k] = prediction.mask
    result = PlaneSegmentation(plane.to_volume(key_view), prediction.score)
    t1 = time.perf_counter()
    result.timings["segment_s"] = t1 - t0
    if propagate_3d and prediction.mask.any():
        prop = propagate(view, segmenter, window, on_view.k, prediction.mask, config, progress)
        prop.mask = plane.to_volume(prop.mask)
        prop.orientation = prompt.orientation
        result.propagation = prop
        result.timings["propagate_s"] = time.perf_counter() - t1
    return result


def segment_target(
    volume: Volume,
    segmenter: Segmenter,
    window: Window,
    prompt: VoxelPrompt,
    *,
    value: int = 1,
    label: str = "Segment 1",
    propagate_3d: bool = True,
    config: PropagationConfig = DEFAULT_PROPAGATION,
    progress: ProgressCallback | None = None,
) -> TargetResult:
    """Segment the key slice from ``prompt`` and, unless told not to, propagate it through the volume.

    The key slice may be axial, coronal or sagittal (``prompt.orientation``); the mask is always on the volume's
    own ``[k, j, i]`` grid.
    """
    check_prompt(volume, prompt, window)
    mark = embedding_mark(segmenter)
    seg = segment_prompt(volume, segmenter, window, prompt, propagate_3d=propagate_3d, config=config, progress=progress)
    work = work_since(segmenter, mark, *seg.slice_counts)
    if seg.empty:
        plane = "" if prompt.is_axial else f"{prompt.orientation} "
        raise InputError(
            f"the segmenter found nothing for the prompt on {plane}slice {prompt.k}: check that the box or points lie "
            "on the structure (indices are I column, J row, K slice, 0-based)."
        )
    return TargetResult(value, label, prompt, seg.mask, seg.score, seg.propagation, dict(seg.timings), work)
