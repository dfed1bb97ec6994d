"""The answer text SFT teaches: what the product's parser reads, in the coordinates of the model family.

``<think>…</think><answer>{json}</answer>``, the JSON in the dialect of the prompt style the model is trained with
(``segzero``: MedReasoner's ``bbox``/``points_1``/``points_2``; ``contract``: our ``targets`` object), the numbers
written through ``reasoning.prompts.model_point``, the exact inverse of how ``reasoning.convert`` reads an answer
back. So an answer learnt here lands, at run time, on the truth's voxels (``Testing/unit/test_training_targets.py``
reads every target back through ``parse_answer`` and ``to_answer``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from ..reasoning.coords import Convention
from ..reasoning.prompts import model_point
from ..reasoning.views import Tile, View, ViewSet
from .rewards import MIN_POINT_SPREAD_PX

VoxelBox = tuple[int, int, int, int]
VoxelPoint = tuple[int, int]


def mask_box(mask: np.ndarray) -> VoxelBox:
    """The inclusive voxel box ``(u0, v0, u1, v1)`` of a non-empty 2D mask (rows v, columns u)."""
    vs, us = np.nonzero(mask)
    return int(us.min()), int(vs.min()), int(us.max()), int(vs.max())


def inner_points(mask: np.ndarray) -> tuple[VoxelPoint, VoxelPoint]:
    """Two points inside a non-empty 2D mask: its deepest pixel, and the deepest one at least
    ``MIN_POINT_SPREAD_PX`` away from it (the farthest mask pixel when the mask is narrower than that).

    Deep points survive a model's few-pixel error; two distant ones tell the segmenter the structure's extent, and
    the points reward penalises a pair closer than 10 pixels (MedReasoner's rule).
    """
    from scipy.ndimage import distance_transform_edt

    mask = np.asarray(mask, dtype=bool)
    depth = distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    first = np.unravel_index(int(np.argmax(depth)), depth.shape)
    vs, us = np.nonzero(mask)
    far = np.hypot(vs - first[0], us - first[1])
    spread = far >= MIN_POINT_SPREAD_PX
    if spread.any():
        pick = int(np.argmax(np.where(spread, depth[vs, us], -1.0)))
    else:
        pick = int(np.argmax(far))
    return (int(first[1]), int(first[0])), (int(us[pick]), int(vs[pick]))


def model_box(tile: Tile, view: View, convention: Convention, box: VoxelBox) -> list[int]:
    """A voxel box as the model writes it: the corner voxels' model coordinates."""
    (a0, b0), (a1, b1) = (
        model_point(tile, view, convention, box[0], box[1]),
        model_point(tile, view, convention, box[2], box[3]),
    )
    return [min(a0, a1), min(b0, b1), max(a0, a1), max(b0, b1)]


def think_text(task: str, name: str, where: str) -> str:
    """A short, true reasoning: SFT teaches the form; GRPO, not a template, is meant to teach the thinking."""
    if task == "pick_slice":
        return f"The question is about {name}. It is best seen on {where}."
    return f"The question is about {name}. On {where} it is the region the box encloses."


def answer_label(label: str) -> str:
    """The structure's name as a contract answer gives it (``"target"`` where the dataset names none): at run time
    the refine step's prompt repeats what the pick answer named, so training must know it too."""
    return label or "target"


def answer_text(
    style: str,
    views: ViewSet,
    convention: Convention,
    slice_index: int,
    box: VoxelBox | None,
    points: Sequence[VoxelPoint],
    label: str,
    ref: str | None = None,
) -> str:
    """The completion for one training sample of ``views`` (one view: the montage, or one slice).

    ``box``/``points`` are voxel coordinates on axial slice ``slice_index``; on a key-slice montage with the contract
    style (a refine step follows) only the slice is named, as the contract's pick prompt asks. ``ref`` is the id of
    the earlier entity the question refers to (the contract's ``"ref"``; the segzero answer has no such field).
    """
    view = views.views[0]
    slice_only = style == "contract" and views.task == "pick_slice" and views.refine_next
    tile = view.tile_showing(slice_index)
    if tile is None and not slice_only:
        raise ValueError(f"the view does not show slice {slice_index}")
    think = think_text(views.task, label or "the target", f"axial slice {slice_index}")
    if style == "segzero":
        assert tile is not None
        if box is None or len(points) < 2:
            raise ValueError("a segzero answer needs a box and two points")
        p1, p2 = (model_point(tile, view, convention, u, v) for u, v in points[:2])
        payload: dict = {"bbox": model_box(tile, view, convention, box), "points_1": list(p1), "points_2": list(p2)}
    else:
        target: dict = {"slice": slice_index}
        if not slice_only:
            assert tile is not None
            if box is None:
                raise ValueError("a locate answer needs a box")
            target["bbox"] = model_box(tile, view, convention, box)
            target["points"] = [list(model_point(tile, view, convention, u, v)) for u, v in points]
        target.update(label=answer_label(label), ref=ref)
        payload = {"reasoning": think, "targets": [target], "clarification": None}
    return f"<think>{think}</think><answer>{json.dumps(payload)}</answer>"
