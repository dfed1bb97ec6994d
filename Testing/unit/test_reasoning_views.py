"""What the reasoner sees, and the way back: view pixels -> voxel indices, for montages and all orientations."""

from __future__ import annotations

import json

import numpy as np
import pytest
from support.reasoning import blob_volume

from MedSegReasoning.reasoning import (
    DEFAULT_STRATEGY,
    EMPTY_CONTEXT,
    EntityRef,
    ReasonerOutputError,
    ReasoningContext,
    ReasoningStrategy,
    get_convention,
    parse_answer,
)
from MedSegReasoning.reasoning.convert import to_answer
from MedSegReasoning.reasoning.prompts import PromptSet, render_prompt
from MedSegReasoning.reasoning.views import (
    CurrentView,
    candidate_slices,
    key_slice_views,
    refers_to_current_view,
    refine_views,
    render_plane,
    wants_current_view,
)
from MedSegReasoning.volume.core import DicomSeriesInfo, Geometry, Volume, VolumeSource
from MedSegReasoning.volume.windowing import Window, default_window
from MedSegReasoning.wire.errors import InputError

PIXELS = get_convention("pixels")
WINDOW = Window("test", 0.0, 2000.0)


def marker_volume(spacing=(0.8, 0.8, 2.5), direction=None) -> tuple[Volume, tuple[int, int, int]]:
    """Zeros with one bright voxel at (i, j, k) = (30, 20, 2): its pixel in any view must map back to it."""
    array = np.zeros((6, 40, 48), dtype=np.int16)
    ijk = (30, 20, 2)
    array[ijk[2], ijk[1], ijk[0]] = 1000
    direction = np.eye(3) if direction is None else direction
    return Volume(array, Geometry.from_arrays((0, 0, 0), spacing, direction), "CT"), ijk


def test_candidate_slices_are_evenly_spaced_and_include_the_current_one():
    assert candidate_slices(21, 5) == [0, 5, 10, 15, 20]
    assert candidate_slices(4, 9) == [0, 1, 2, 3]
    assert candidate_slices(21, 5, include=7) == [0, 7, 10, 15, 20]
    assert candidate_slices(21, 5, include=10) == [0, 5, 10, 15, 20]


def test_montage_tiles_map_back_to_their_slices_and_carry_labels():
    volume = blob_volume((12, 217, 300))
    views = key_slice_views(volume, default_window(volume), ReasoningStrategy(montage_slices=4, tile_size=128))
    (view,) = views.views
    assert view.kind == "montage" and view.slices == (0, 4, 7, 11)
    assert view.columns == 2
    for tile in view.tiles:
        # the tile's centre pixel is the slice's centre voxel
        u, v = tile.to_plane(tile.x0 + tile.width / 2, tile.y0 + tile.height / 2)
        assert tile.voxel_index(u, v) == (150, 108)
        # the slice number is drawn white on black in the top-left corner of the tile
        corner = view.image[tile.y0 : tile.y0 + 12, tile.x0 : tile.x0 + 20, 0]
        assert corner.max() > 200 and corner.min() == 0
    tile7 = view.tile_showing(7)
    assert tile7 is not None and tile7.width == 128 and tile7.height == round(217 * 128 / 300)


def test_montage_box_picks_the_slice_of_its_tile():
    volume = blob_volume((12, 217, 300))
    views = key_slice_views(volume, default_window(volume), ReasoningStrategy(montage_slices=4, tile_size=128))
    tile = views.views[0].tile_showing(7)
    # a box over the tile's left half, in montage pixels
    box = [tile.x0, tile.y0, tile.x0 + tile.width / 2, tile.y0 + tile.height]
    answer = to_answer(
        parse_answer(json.dumps({"targets": [{"bbox": box, "label": "blob"}]})), views, PIXELS, EMPTY_CONTEXT
    )
    (target,) = answer.targets
    assert (target.slice, target.orientation) == (7, "axial")
    assert target.box == (0, 0, 152, 216)  # montage pixel 64 shows columns 150.0-152.3: the box takes them all


@pytest.mark.parametrize(
    ("make_box", "detail"),
    [
        (lambda a, b: [a.x0 + 5, a.y0 + 5, b.x0 + 5, b.y0 + 5], "spreads over several montage tiles"),
        (lambda a, b: [a.x0 + a.width + 1, a.y0 + 5, a.x0 + a.width + 2, a.y0 + 6], "between the tiles"),
    ],
)
def test_montage_box_across_tiles_or_in_a_gutter_is_refused(make_box, detail):
    volume = blob_volume((12, 217, 300))
    views = key_slice_views(volume, default_window(volume), ReasoningStrategy(montage_slices=4, tile_size=128))
    a, b = views.views[0].tiles[:2]
    raw = json.dumps({"targets": [{"bbox": make_box(a, b)}]})
    with pytest.raises(ReasonerOutputError, match=detail):
        to_answer(parse_answer(raw), views, PIXELS, EMPTY_CONTEXT)


def test_montage_slice_contradicting_its_box_is_refused():
    volume = blob_volume((12, 217, 300))
    views = key_slice_views(volume, default_window(volume), ReasoningStrategy(montage_slices=4, tile_size=128))
    tile = views.views[0].tile_showing(7)
    raw = json.dumps({"targets": [{"slice": 4, "bbox": [tile.x0, tile.y0, tile.x0 + 9, tile.y0 + 9]}]})
    with pytest.raises(
        ReasonerOutputError, match="names slice 4, but its coordinates lie on the tile of axial slice 7"
    ):
        to_answer(parse_answer(raw), views, PIXELS, EMPTY_CONTEXT)


def test_slice_only_answer_outside_the_volume_is_refused():
    volume = blob_volume((12, 217, 300))
    views = key_slice_views(volume, default_window(volume), DEFAULT_STRATEGY)
    with pytest.raises(ReasonerOutputError, match="names axial slice 40, but the volume has slices 0 to 11"):
        to_answer(parse_answer('{"targets": [{"slice": 40}]}'), views, PIXELS, EMPTY_CONTEXT)


@pytest.mark.parametrize("orientation", ["axial", "coronal", "sagittal"])
@pytest.mark.parametrize("direction", [np.eye(3), np.diag([1.0, 1.0, -1.0])], ids=["k-superior", "k-inferior"])
def test_the_marker_pixel_maps_back_to_the_marker_voxel(orientation, direction):
    volume, (i, j, k) = marker_volume(direction=direction)
    index = {"axial": k, "coronal": j, "sagittal": i}[orientation]
    image, tile = render_plane(volume, orientation, index, WINDOW)
    ys, xs = np.nonzero(image[..., 0] > 200)
    assert len(xs) >= 1
    for x, y in zip(xs, ys, strict=True):
        u, v = tile.voxel_index(*tile.to_plane(x + 0.5, y + 0.5))  # pixel centres
        ijk = {"axial": (u, v, index), "coronal": (u, index, v), "sagittal": (index, u, v)}[orientation]
        assert ijk == (i, j, k)
    if orientation != "axial":
        assert len(ys) == 3  # rows repeated round(2.5 / 0.8) = 3 times to undo the thick slices
        assert tile.flip_v == (direction[2, 2] > 0)  # superior at the top


def test_coronal_answer_becomes_a_coronal_target_with_ijk_corners():
    volume, _ = marker_volume()
    views = refine_views(volume, WINDOW, DEFAULT_STRATEGY, "coronal", 20)
    view = views.views[0]
    assert (view.tiles[0].width, view.tiles[0].height) == (48, 18)  # 6 slices x 3 repeated rows
    assert (view.width, view.height) == (56, 28)  # padded right and bottom to multiples of 28
    # rows are flipped (superior up): image rows 0-2 show k = 5, rows 3-5 k = 4, ..., rows 15-17 k = 0
    answer = to_answer(
        parse_answer('{"targets": [{"bbox": [10, 0, 20, 3], "label": "x"}]}'), views, PIXELS, EMPTY_CONTEXT
    )
    (target,) = answer.targets
    assert (target.orientation, target.slice) == ("coronal", 20)
    assert target.box == (10, 4, 20, 5)  # (i0, k0, i1, k1)
    assert target.box_ijk() == ((10, 20, 4), (20, 20, 5))
    prompt = target.to_voxel_prompt()  # coronal prompts segment on the re-sliced view (test_nonaxial_targets.py)
    assert (prompt.orientation, prompt.k, prompt.box) == ("coronal", 20, (10, 4, 20, 5))


def test_axial_target_becomes_a_voxel_prompt():
    volume = blob_volume()
    views = refine_views(volume, default_window(volume), DEFAULT_STRATEGY, "axial", 7)
    raw = '{"targets": [{"bbox": [75, 54, 150, 108], "points": [[112, 81]], "negative_points": [[5, 5]]}]}'
    prompt = to_answer(parse_answer(raw), views, PIXELS, EMPTY_CONTEXT).targets[0].to_voxel_prompt()
    assert (prompt.k, prompt.box, prompt.points, prompt.labels) == (7, (75, 54, 150, 108), ((112, 81), (5, 5)), (1, 0))


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        (
            '{"targets": [{"bbox": [1, 2, 309, 20]}]}',
            "(309, 20) lies outside the image, whose coordinates run to (308, 224)",
        ),
        ('{"targets": [{"points": [[10, 225]]}]}', "a point of target 1 (10, 225) lies outside the image"),
        (
            '{"targets": [{"slice": 3, "bbox": [1, 2, 3, 4]}]}',
            "names slice 3, but the image it points into shows axial slice 7",
        ),
        (
            '{"targets": [{"bbox": [1, 2, 3, 4], "ref": "e9"}]}',
            "\"ref\" 'e9' of target 1 names no known structure (known: e1)",
        ),
        ('{"targets": [{"view": 1, "bbox": [1, 2, 3, 4]}]}', '"view" 1 of target 1 does not exist: there are 1 images'),
    ],
)
def test_conversion_errors_name_the_target(raw, detail):
    volume = blob_volume()
    views = refine_views(volume, default_window(volume), DEFAULT_STRATEGY, "axial", 7)
    context = ReasoningContext(entities=(EntityRef("e1", "liver"),))
    with pytest.raises(ReasonerOutputError) as info:
        to_answer(parse_answer(raw), views, get_convention("qwen2.5-vl"), context)
    assert detail in info.value.detail


def test_box_on_the_far_edge_is_inside():
    volume = blob_volume()
    views = refine_views(volume, default_window(volume), DEFAULT_STRATEGY, "axial", 7)
    answer = to_answer(
        parse_answer('{"targets": [{"bbox": [0, 0, 1000, 1000]}]}'), views, get_convention("qwen3-vl"), EMPTY_CONTEXT
    )
    assert answer.targets[0].box == (0, 0, 299, 216)


def test_current_view_questions():
    assert refers_to_current_view("what is the mass on this slice?")
    assert refers_to_current_view("Segment the lesion shown here")
    assert refers_to_current_view("outline it in the current image")
    assert not refers_to_current_view("which structure explains the jaundice?")
    current = CurrentView("coronal", 10)
    assert wants_current_view(DEFAULT_STRATEGY, "this slice", current)
    assert not wants_current_view(DEFAULT_STRATEGY, "segment the liver", current)
    assert wants_current_view(ReasoningStrategy(use_current_view="always"), "segment the liver", current)
    assert not wants_current_view(ReasoningStrategy(use_current_view="never"), "this slice", current)
    with pytest.raises(InputError):
        CurrentView("oblique", 3)


def test_strategy_is_validated():
    with pytest.raises(InputError, match="at least 64 pixels"):
        ReasoningStrategy(tile_size=10)
    with pytest.raises(InputError, match="auto, always or never"):
        ReasoningStrategy(use_current_view="sometimes")  # type: ignore[arg-type]


def test_prompts_never_carry_dicom_header_text():
    volume = blob_volume()
    info = DicomSeriesInfo(
        study_instance_uid="1.2.3.4444",
        series_instance_uid="1.2.3.5555",
        frame_of_reference_uid="1.2.3.6666",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        sop_instance_uids=("1.2.3.7777",),
        files=("/data/DOE^JOHN/19700101/IM0001.dcm",),
        modality="CT",
    )
    volume.source = VolumeSource(kind="dicom-series", path="/data/DOE^JOHN/19700101", dicom=info)
    window = default_window(volume)
    question = "which structure explains the patient's jaundice?"
    texts = []
    for style in ("contract", "segzero"):
        for views in (
            key_slice_views(volume, window, DEFAULT_STRATEGY),
            key_slice_views(volume, window, ReasoningStrategy(refine=False)),
            refine_views(volume, window, DEFAULT_STRATEGY, "axial", 7, ("liver",)),
            refine_views(volume, window, DEFAULT_STRATEGY, "sagittal", 100),
        ):
            texts.append(render_prompt(PromptSet(style), views, question, EMPTY_CONTEXT, get_convention("qwen2.5-vl")))
    for text in texts:
        for secret in ("DOE", "JOHN", "19700101", "1.2.3.", "IM0001", "/data"):
            assert secret not in text
        assert question in text
        assert "$" not in text  # every template variable was filled
    assert "CT volume has 12 axial slices" in texts[0]


def test_free_text_modality_is_dropped_from_prompts():
    volume = blob_volume(modality="CT ABDOMEN SMITH")
    views = refine_views(volume, default_window(volume), DEFAULT_STRATEGY, "axial", 7)
    text = render_prompt(PromptSet(), views, "liver?", EMPTY_CONTEXT, PIXELS)
    assert "SMITH" not in text and "The volume has 12 axial slices" in text


def test_empty_question_is_an_input_error():
    volume = blob_volume()
    views = refine_views(volume, default_window(volume), DEFAULT_STRATEGY, "axial", 7)
    with pytest.raises(InputError, match="question is empty"):
        render_prompt(PromptSet(), views, "   ", EMPTY_CONTEXT, PIXELS)


@pytest.mark.parametrize("convention", ["qwen2.5-vl", "qwen3-vl", "fixed-840", "pixels"])
def test_dialogue_entities_are_shown_in_model_coordinates_and_read_back_exactly(convention):
    dialogue_context = {
        "entities": [
            {"id": "E1", "label": "lesion", "name": "Kidney lesion", "key_slice": 7, "box": [75, 54, 150, 108]},
            {"id": "E2", "label": "liver", "name": None, "key_slice": 3, "box": [1, 2, 3, 4]},
        ],
        "text": "E1: ...",
    }
    context = ReasoningContext.from_dict(dialogue_context, round_number=2)
    assert context.round == 2 and [e.label for e in context.entities] == ["Kidney lesion", "liver"]
    volume = blob_volume()
    views = refine_views(volume, default_window(volume), DEFAULT_STRATEGY, "axial", 7)
    conv = get_convention(convention)
    text = render_prompt(PromptSet(), views, "is E1 bigger?", context, conv)
    line = next(line for line in text.splitlines() if line.startswith("- E1: Kidney lesion, axial slice 7, box "))
    box = json.loads(line.split("box ", 1)[1].split(" on this image")[0])
    assert "- E2: liver, axial slice 3" in text and "E2: liver, axial slice 3, box" not in text  # not on this view
    read_back = to_answer(parse_answer(json.dumps({"targets": [{"bbox": box, "ref": "E1"}]})), views, conv, context)
    assert read_back.targets[0].box == (75, 54, 150, 108)
    assert read_back.targets[0].ref == "E1"
