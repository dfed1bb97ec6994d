"""Known entities drawn on what the reasoner sees: outline (or box) in the entity's colour, tagged with its id.

The views are grey (R = G = B), so any pixel whose channels differ was drawn by the overlay: that lets the tests say
exactly where the overlay went, and that it went nowhere else.
"""

from __future__ import annotations

import numpy as np
from support.reasoning import blob_volume

from MedSegReasoning.reasoning import DEFAULT_STRATEGY, Answer, EntityRef, ReasoningContext, run_reasoning
from MedSegReasoning.reasoning.base import ReasonerIdentity
from MedSegReasoning.reasoning.views import draw_entities, key_slice_views, refine_views
from MedSegReasoning.volume.windowing import default_window

RED = (255, 0, 0)
SLICES = (5, 9)
J0, J1, I0, I1 = 40, 80, 60, 120  # the entity's rectangle on every slice it spans (inclusive)


def entity_mask(k: int) -> np.ndarray | None:
    if not SLICES[0] <= k <= SLICES[1]:
        return None
    mask = np.zeros((217, 300), dtype=bool)  # blob_volume's (nj, ni)
    mask[J0 : J1 + 1, I0 : I1 + 1] = True
    return mask


def lesion(entity_id: str = "E1", with_mask: bool = True) -> EntityRef:
    return EntityRef(
        id=entity_id,
        label="lesion",
        slice=7,
        box=(I0, J0, I1, J1),
        color=RED,
        slices=SLICES,
        slice_mask=entity_mask if with_mask else None,
    )


def coloured(image: np.ndarray) -> np.ndarray:
    return (image[..., 0] != image[..., 1]) | (image[..., 1] != image[..., 2])


def rectangle_outline(shape: tuple[int, int]) -> np.ndarray:
    ring = np.zeros(shape, dtype=bool)
    ring[J0 : J1 + 1, I0 : I1 + 1] = True
    ring[J0 + 1 : J1, I0 + 1 : I1] = False
    return ring


def refine(k: int, entities):
    volume = blob_volume()
    bare = refine_views(volume, default_window(volume), DEFAULT_STRATEGY, "axial", k)
    return bare, draw_entities(bare, entities)


def test_outline_is_drawn_in_the_entity_colour_along_its_mask_and_nowhere_else():
    bare, drawn = refine(7, [lesion()])
    image = drawn.views[0].image
    ring = rectangle_outline(image.shape[:2])
    assert (image[ring] == RED).all()
    extra = coloured(image) & ~ring
    rows, cols = np.nonzero(extra)
    # everything else that was drawn is the id tag, just above the outline's top-left corner
    assert rows.max() < J0 and cols.min() >= I0 and cols.max() < I0 + 40
    tag = image[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    assert (tag == RED).all(axis=-1).mean() > 0.3
    assert (~(tag == RED).all(axis=-1)).any()  # the id's letters, in black on the colour
    untouched = ~coloured(image) & ~ring
    assert (image[untouched] == bare.views[0].image[untouched]).all()


def test_the_tag_spells_the_entity_id():
    _, first = refine(7, [lesion("E1")])
    _, second = refine(7, [lesion("E2")])
    assert not np.array_equal(first.views[0].image[:J0], second.views[0].image[:J0])
    assert np.array_equal(first.views[0].image[J0:], second.views[0].image[J0:])


def test_slices_the_entity_does_not_reach_stay_bare():
    bare, drawn = refine(2, [lesion()])
    assert np.array_equal(bare.views[0].image, drawn.views[0].image)


def test_pixel_to_voxel_mapping_is_unchanged():
    bare, drawn = refine(7, [lesion()])
    assert drawn.views[0].tiles == bare.views[0].tiles
    assert drawn.views[0].image.shape == bare.views[0].image.shape
    tile = drawn.views[0].tiles[0]
    assert tile.voxel_at(I0 + 0.5, J0 + 0.5) == (I0, J0)


def test_without_a_mask_the_box_is_drawn_on_the_key_slice_only():
    _, drawn = refine(7, [lesion(with_mask=False)])
    image = drawn.views[0].image
    assert (image[rectangle_outline(image.shape[:2])] == RED).all()
    _, other = refine(8, [lesion(with_mask=False)])
    assert not coloured(other.views[0].image).any()


def test_montage_tiles_show_the_entity_only_on_the_slices_it_spans():
    volume = blob_volume()
    bare = key_slice_views(volume, default_window(volume), DEFAULT_STRATEGY)
    drawn = draw_entities(bare, [lesion()])
    view = drawn.views[0]
    assert view.tiles == bare.views[0].tiles
    mask = coloured(view.image)
    for tile in view.tiles:
        inside = mask[tile.y0 : tile.y0 + tile.height, tile.x0 : tile.x0 + tile.width]
        assert inside.any() == (SLICES[0] <= tile.slice <= SLICES[1]), tile.slice


def test_dialogue_context_carries_colour_span_and_outline_to_the_reasoner():
    context = ReasoningContext.from_dict(
        {
            "entities": [
                {
                    "id": "E1",
                    "label": "lesion",
                    "key_slice": 7,
                    "box": [I0, J0, I1, J1],
                    "slices": [5, 9],
                    "color": list(RED),
                }
            ]
        },
        round_number=2,
        slice_mask=lambda entity_id, k: entity_mask(k) if entity_id == "E1" else None,
    )
    seen = []

    class Capture:
        identity = ReasonerIdentity("capture", "replay", "none", "pixels", "contract-v1")

        def reason(self, views, question, context, on_text=None, cancel=None):
            seen.append(views)
            return Answer(reasoning="", targets=(), clarification="which one?", raw="")

    volume = blob_volume()
    run_reasoning(volume, Capture(), "the lesion near E1", context=context)
    entity = context.entities[0]
    assert entity.color == RED and entity.slices == SLICES
    montage = seen[0].views[0]
    tile = montage.tile_showing(7)
    assert tile is not None
    assert coloured(montage.image[tile.y0 : tile.y0 + tile.height, tile.x0 : tile.x0 + tile.width]).any()
