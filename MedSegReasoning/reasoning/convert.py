"""Model coordinates -> voxel indices: the one place where a parsed answer meets the images it was about.

For each target: choose the view it refers to, convert its coordinates through the convention to view pixels,
find the tile (the slice) they lie on, and map them to voxel indices of that slice plane. Everything that only
becomes checkable here (a box outside the image, a box across two montage tiles, a slice number that
contradicts the image, a reference to an unknown entity) is a ``ReasonerOutputError`` naming the target.
"""

from __future__ import annotations

from collections.abc import Sequence

from .answer import Answer, GenerationStats, ParsedAnswer, ParsedTarget, ReasonerOutputError, Target
from .base import ReasoningContext
from .coords import Convention
from .views import Tile, View, ViewSet


def to_answer(
    parsed: ParsedAnswer,
    views: ViewSet,
    convention: Convention,
    context: ReasoningContext,
    stats: GenerationStats | None = None,
) -> Answer:
    """The voxel-level ``Answer`` for ``parsed``, which the reasoner gave about ``views``."""
    targets = tuple(
        _convert_target(t, n, parsed.raw, views, convention, context) for n, t in enumerate(parsed.targets, 1)
    )
    return Answer(
        reasoning=parsed.reasoning,
        targets=targets,
        clarification=parsed.clarification,
        raw=parsed.raw,
        stats=stats,
    )


def _convert_target(
    target: ParsedTarget, n: int, raw: str, views: ViewSet, convention: Convention, context: ReasoningContext
) -> Target:
    where = f"target {n}" + (f" ('{target.label}')" if target.label else "")
    view_index = _choose_view(target, where, raw, views)
    view = views.views[view_index]
    fw, fh = convention.frame(view.width, view.height)

    def to_pixels(x: float, y: float, what: str) -> tuple[float, float]:
        if x > fw or y > fh:
            raise ReasonerOutputError(
                f"{what} of {where} ({_fmt(x)}, {_fmt(y)}) lies outside the image, whose coordinates run to "
                f"({_fmt(fw)}, {_fmt(fh)}) in the {convention.name} convention",
                raw,
            )
        return convention.to_view_pixels(x, y, view.width, view.height)

    box_px = None
    if target.bbox is not None:
        x1, y1, x2, y2 = target.bbox
        box_px = (*to_pixels(x1, y1, "the bbox"), *to_pixels(x2, y2, "the bbox"))
    positives = [to_pixels(x, y, "a point") for x, y in target.points]
    negatives = [to_pixels(x, y, "a negative point") for x, y in target.negative_points]

    tile = _choose_tile(target, where, raw, view, box_px, positives + negatives, views)
    if tile is None:  # a key-slice answer that names only a slice
        return Target(
            slice=_checked_slice(target, where, raw, views, view),
            orientation=view.orientation,
            label=target.label,
            ref=_checked_ref(target, where, raw, context),
            view=view_index,
        )
    box = None
    if box_px is not None:
        corners = [*tile.voxels_under(box_px[0], box_px[1]), *tile.voxels_under(box_px[2], box_px[3])]
        us, vs = [u for u, _ in corners], [v for _, v in corners]
        box = (min(us), min(vs), max(us), max(vs))  # all voxels the corner pixels show; a flipped tile swaps v
    points = [tile.voxel_at(x, y) for x, y in positives + negatives]
    return Target(
        slice=tile.slice,
        orientation=tile.orientation,
        box=box,
        points=tuple(points),
        point_labels=(1,) * len(positives) + (0,) * len(negatives),
        label=target.label,
        ref=_checked_ref(target, where, raw, context),
        view=view_index,
    )


def _choose_view(target: ParsedTarget, where: str, raw: str, views: ViewSet) -> int:
    if target.view is not None:
        if target.view >= len(views.views):
            raise ReasonerOutputError(
                f'"view" {target.view} of {where} does not exist: there are {len(views.views)} images (0 to '
                f"{len(views.views) - 1})",
                raw,
            )
        return target.view
    if len(views.views) == 1:
        return 0
    if target.slice is not None:
        showing = [n for n, v in enumerate(views.views) if v.tile_showing(target.slice) is not None]
        if len(showing) == 1:
            return showing[0]
    raise ReasonerOutputError(
        f'{where} does not say which of the {len(views.views)} images it is on (give "view": 0 to '
        f"{len(views.views) - 1})",
        raw,
    )


def _choose_tile(
    target: ParsedTarget,
    where: str,
    raw: str,
    view: View,
    box_px: tuple[float, float, float, float] | None,
    points_px: Sequence[tuple[float, float]],
    views: ViewSet,
) -> Tile | None:
    """The tile all of the target's coordinates lie on; ``None`` when it has no coordinates at all."""
    corners = [] if box_px is None else [(box_px[0], box_px[1]), (box_px[2], box_px[3])]
    positions = corners + list(points_px)
    if not positions:
        return None
    if len(view.tiles) == 1:
        tile = view.tiles[0]
        if target.slice is not None and target.slice != tile.slice:
            raise ReasonerOutputError(
                f"{where} names slice {target.slice}, but the image it points into shows {tile.caption}", raw
            )
        return tile
    hit = {view.tile_at(x, y) for x, y in positions}
    if None in hit:
        raise ReasonerOutputError(f"{where} points between the tiles of the montage, not onto a slice", raw)
    if len(hit) > 1:
        captions = ", ".join(sorted(t.caption for t in hit if t is not None))
        raise ReasonerOutputError(f"{where} spreads over several montage tiles ({captions})", raw)
    found = hit.pop()
    assert found is not None  # None was refused above
    tile = found
    if target.slice is not None and target.slice != tile.slice:
        raise ReasonerOutputError(
            f"{where} names slice {target.slice}, but its coordinates lie on the tile of {tile.caption}", raw
        )
    return tile


def _checked_slice(target: ParsedTarget, where: str, raw: str, views: ViewSet, view: View) -> int:
    assert target.slice is not None  # the parser refuses targets with neither coordinates nor slice
    count = views.slice_count(view.orientation)
    if target.slice >= count:
        raise ReasonerOutputError(
            f"{where} names {view.orientation} slice {target.slice}, but the volume has slices 0 to {count - 1}", raw
        )
    return target.slice


def _checked_ref(target: ParsedTarget, where: str, raw: str, context: ReasoningContext) -> str | None:
    if target.ref is None:
        return None
    known = [e.id for e in context.entities]
    if target.ref not in known:
        listed = ", ".join(known) if known else "none yet"
        raise ReasonerOutputError(f'"ref" {target.ref!r} of {where} names no known structure (known: {listed})', raw)
    return target.ref


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.4g}"
