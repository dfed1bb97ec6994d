"""Targets on coronal and sagittal key slices: re-sliced views, segmentation, propagation, records (issue 3, item 8).

The geometry is checked voxel by voxel through physical space on an oblique, flipped, anisotropic volume; the
segmentation path with a deterministic image-reading segmenter (exact masks expected); the real LiteMedSAM on the
real CT for the quality floors; and the command line with a replayed sagittal answer.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from MedSegReasoning.dialogue import RoundConfig, RoundPlan, Session, TargetSpec, load_session, run_round
from MedSegReasoning.pipeline import VoxelPrompt, check_prompt, segment_target
from MedSegReasoning.propagation import PropagationConfig, segmenter_input, slice_cache_key
from MedSegReasoning.result import target_record
from MedSegReasoning.segmentation.base import ModelIdentity, Prediction, Prompt2D, SegmenterStats
from MedSegReasoning.volume.core import (
    Geometry,
    Volume,
    flips_to_superior_up,
    from_plane_array,
    plane_shape,
    plane_volume,
)
from MedSegReasoning.volume.windowing import Window
from MedSegReasoning.wire.errors import InputError

WINDOW = Window("test", 40.0, 400.0)
SHAPE = (12, 40, 48)  # k, j, i
SPACING = (0.8, 1.0, 3.0)  # si, sj, sk: thick slices, non-square axial pixels too

FULL = PropagationConfig(
    skip=1
)  # exact voxels through the views: slice-by-slice (the skip default is tested elsewhere)
FULL_ROUND = RoundConfig(propagation=FULL)


def _oblique_flipped_direction() -> np.ndarray:
    """Rotated about two axes, with the j axis flipped: every index axis mixes L, P and S."""
    a, b = np.deg2rad(25.0), np.deg2rad(-12.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx @ np.diag([1.0, -1.0, 1.0])


def _geometry() -> Geometry:
    return Geometry.from_arrays((-31.5, 12.25, 80.0), SPACING, _oblique_flipped_direction())


def slanted_truth() -> np.ndarray:
    """A block whose i range drifts by one voxel every 4 rows: asymmetric in every plane (k 2-8 of 0-11 too, so a
    flipped plane differs), and followed by propagation."""
    truth = np.zeros(SHAPE, dtype=bool)
    for j in range(10, 30):
        shift = (j - 10) // 4
        truth[2:9, j, 10 + shift : 30 + shift] = True
    return truth


def slanted_volume() -> tuple[Volume, np.ndarray]:
    truth = slanted_truth()
    array = np.where(truth, 200, -1000).astype(np.int16)
    return Volume(array, _geometry(), modality="CT"), truth


class ThresholdSegmenter:
    """Bright pixels (grey > 128) inside the box of the image it was given: reads the image, nothing else.

    So its mask is right exactly when the image it saw, the box mapped onto that image and the mask mapped back all
    are. Records every image shape and cache key.
    """

    identity = ModelIdentity(name="threshold", weights="none", sha256="0" * 64)

    def __init__(self) -> None:
        self.stats = SegmenterStats()
        self.shapes: list[tuple[int, int]] = []
        self.keys: list = []
        self._image: np.ndarray | None = None

    def set_image(self, image: np.ndarray, cache_key=None) -> None:
        self.stats.encoder_calls += 1
        self.shapes.append(image.shape[:2])
        self.keys.append(cache_key)
        self._image = image

    def predict(self, prompt: Prompt2D) -> Prediction:
        assert self._image is not None and prompt.box is not None
        self.stats.decoder_calls += 1
        x0, y0, x1, y1 = (int(round(v)) for v in prompt.box)
        mask = np.zeros(self._image.shape[:2], dtype=bool)
        mask[y0 : y1 + 1, x0 : x1 + 1] = self._image[y0 : y1 + 1, x0 : x1 + 1, 0] > 128
        return Prediction(mask, 0.9)


# --- geometry ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", ["axial", "coronal", "sagittal"])
@pytest.mark.parametrize("k_points", ["superior", "inferior"])
@pytest.mark.parametrize("superior_up", [False, True])
def test_plane_view_keeps_every_voxel_at_its_physical_position(orientation, k_points, superior_up):
    rng = np.random.default_rng(3)
    geometry = _geometry()
    if k_points == "inferior":  # a series sorted feet-first: no flip is needed to show superior at the top
        geometry = Geometry.from_arrays(geometry.origin, SPACING, geometry.direction_matrix @ np.diag([1, 1, -1]))
    volume = Volume(rng.integers(-1000, 1000, SHAPE).astype(np.int16), geometry, modality="CT")
    flipped = superior_up and flips_to_superior_up(volume, orientation)
    assert flipped == (superior_up and orientation != "axial" and k_points == "superior")
    view = plane_volume(volume, orientation, superior_up=superior_up)
    assert view.shape == plane_shape(volume.shape, orientation)
    assert view.array.base is not None or view.array is volume.array, "a view, not a copy"
    nk, nj, ni = view.shape
    kk, jj, ii = np.meshgrid(np.arange(nk), np.arange(nj), np.arange(ni), indexing="ij")
    view_ijk = np.stack([ii.ravel(), jj.ravel(), kk.ravel()], axis=1)
    lps = view.geometry.index_to_physical(view_ijk)
    back = volume.geometry.physical_to_index(lps)  # the original voxel at the same physical point
    np.testing.assert_allclose(back, np.round(back), atol=1e-6)
    i, j, k = np.round(back).astype(int).T
    np.testing.assert_array_equal(volume.array[k, j, i], view.array[kk.ravel(), jj.ravel(), ii.ravel()])
    if flipped:  # row 0 of every plane is the most superior voxel row
        z = lps[:, 2].reshape(view.shape)
        assert (np.diff(z, axis=1) < 0).all()
    # a mask made on the view lands, transposed back, on the voxels at the same physical points
    marks = rng.random(view.shape) < 0.05
    back_mask = from_plane_array(marks, orientation, flipped=flipped)
    assert back_mask.shape == volume.shape
    expected = np.zeros(volume.shape, dtype=bool)
    expected[k, j, i] = marks[kk.ravel(), jj.ravel(), ii.ravel()]
    np.testing.assert_array_equal(back_mask, expected)


def test_plane_view_maps_the_target_planes_axes():
    """Coronal: the view's slice n is j = n, its rows k, its columns i; sagittal: slice i, rows k, columns j."""
    volume, _ = slanted_volume()
    coronal, sagittal = plane_volume(volume, "coronal"), plane_volume(volume, "sagittal")
    np.testing.assert_array_equal(coronal.array[20], volume.array[:, 20, :])
    np.testing.assert_array_equal(sagittal.array[15], volume.array[:, :, 15])
    si, sj, sk = SPACING
    assert coronal.geometry.spacing == (si, sk, sj) and sagittal.geometry.spacing == (sj, sk, si)
    assert plane_volume(volume, "axial") is volume
    up = plane_volume(volume, "coronal", superior_up=True)  # k points superior here: rows reversed
    np.testing.assert_array_equal(up.array[20], volume.array[::-1, 20, :])


def test_views_have_their_own_content_hash_and_cache_keys():
    volume, _ = slanted_volume()
    hashes = {o: plane_volume(volume, o).content_hash() for o in ("axial", "coronal", "sagittal")}
    assert len(set(hashes.values())) == 3 and hashes["axial"] == volume.content_hash()
    keys = {slice_cache_key(plane_volume(volume, o), 5, WINDOW) for o in ("axial", "coronal", "sagittal")}
    assert len(keys) == 3, "slice 5 of each orientation must be cached apart"
    assert plane_volume(volume, "coronal").content_hash() == hashes["coronal"], "stable across views"


def test_segmenter_input_is_physically_proportioned():
    image = np.zeros((12, 48, 3), dtype=np.uint8)
    image[3:9, 10:30] = 255
    seen = segmenter_input(image, 0.8, 3.0)  # a coronal plane: 0.8 mm columns, 3 mm rows
    assert seen.image.shape == (45, 48, 3) and seen.scale_y == pytest.approx(3.75)
    box = seen.prompt(Prompt2D(box=(10.0, 3.0, 29.0, 8.0)))
    assert box.box == (10.0, 11.0, 29.0, 33.0)  # rows 3..8 cover 11.25..33.75 after scaling
    back = seen.mask_back(seen.image[..., 0] > 128, (12, 48))
    np.testing.assert_array_equal(back, image[..., 0] > 128)
    assert not segmenter_input(image, 0.8, 1.0).resampled, "below the 1.5 ratio the slice is given as it is"


def test_prompts_are_checked_against_their_plane():
    volume, _ = slanted_volume()
    nk, nj, ni = SHAPE
    check_prompt(volume, VoxelPrompt(k=nj - 1, box=(0, 0, ni - 1, nk - 1), orientation="coronal"))
    with pytest.raises(InputError, match=f"outside the coronal slice: I must be within 0..{ni - 1} and K within"):
        check_prompt(volume, VoxelPrompt(k=5, box=(0, 0, 10, nk), orientation="coronal"))
    with pytest.raises(InputError, match=f"sagittal slice I={ni} does not exist: .* sagittal slices 0 to {ni - 1}"):
        check_prompt(volume, VoxelPrompt(k=ni, box=(0, 0, 5, 5), orientation="sagittal"))
    with pytest.raises(InputError, match="unknown orientation"):
        VoxelPrompt(k=1, box=(0, 0, 1, 1), orientation="oblique")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="uniform region"):
        check_prompt(volume, VoxelPrompt(k=2, box=(0, 0, 5, 5), orientation="sagittal"), WINDOW)


# --- segmentation and propagation on the re-sliced view ----------------------------------------------------------


@pytest.mark.parametrize(
    ("orientation", "index", "box", "image_shape"),
    [
        ("coronal", 20, (12, 2, 32, 8), (45, 48)),  # (i0, k0, i1, k1); rows 12 x 3 mm / 0.8 mm
        ("sagittal", 20, (8, 2, 31, 9), (36, 40)),  # (j0, k0, j1, k1); rows 12 x 3 mm / 1.0 mm
    ],
)
def test_nonaxial_target_segments_and_propagates_onto_the_right_voxels(orientation, index, box, image_shape):
    volume, truth = slanted_volume()
    segmenter = ThresholdSegmenter()
    prompt = VoxelPrompt(k=index, box=box, orientation=orientation)
    result = segment_target(volume, segmenter, WINDOW, prompt, label="block", config=FULL)
    np.testing.assert_array_equal(result.mask, truth)  # every voxel, through the view and back
    assert set(segmenter.shapes) == {image_shape}, "the segmenter saw physically proportioned planes"
    seen = plane_volume(volume, orientation, superior_up=True).content_hash()
    assert segmenter.keys[0][0] == seen, "it saw the planes superior up, as the reasoner did"
    assert result.propagation is not None and result.propagation.orientation == orientation
    stops = result.propagation.stop_reasons
    assert all("the structure ended" in why for why in stops.values()), stops
    record = target_record(volume, result)
    assert record["key_plane"] == {"orientation": orientation, "slice": index}
    assert record["key_slice"] == 5, "key_slice stays axial for v1 readers: the largest, nearest the middle (2-8)"
    assert record["prompt"]["orientation"] == orientation
    assert record["propagation"]["orientation"] == orientation
    assert record["slice_range"] == [2, 8]
    key_only = segment_target(volume, ThresholdSegmenter(), WINDOW, prompt, propagate_3d=False)
    expected = np.zeros_like(truth)
    if orientation == "coronal":
        expected[:, index, :] = truth[:, index, :]
    else:
        expected[:, :, index] = truth[:, :, index]
    np.testing.assert_array_equal(key_only.mask, expected)


def test_propagation_along_the_normal_can_be_capped():
    volume, truth = slanted_volume()
    segmenter = ThresholdSegmenter()
    prompt = VoxelPrompt(k=20, box=(12, 2, 32, 8), orientation="coronal")
    result = segment_target(volume, segmenter, WINDOW, prompt, config=PropagationConfig(skip=1, max_slices=5))
    assert segmenter.stats.encoder_calls == 5
    assert result.propagation is not None and result.propagation.visited_slices == [20, 21, 22, 23, 24]
    assert np.flatnonzero(result.mask.any(axis=(0, 2))).tolist() == [20, 21, 22, 23, 24]  # rows j
    np.testing.assert_array_equal(result.mask[:, 20:25], truth[:, 20:25])


def test_a_coronal_born_entity_is_an_ordinary_entity_in_later_rounds(tmp_path):
    volume, truth = slanted_volume()
    segmenter = ThresholdSegmenter()
    session = Session.for_volume(volume, folder=tmp_path / "s")
    # labels with an exact terminology entry and no typical volume: no embedding model, no size check
    coronal = TargetSpec("small intestine", VoxelPrompt(k=20, box=(12, 2, 32, 8), orientation="coronal"))
    first = run_round(
        session, volume, segmenter, WINDOW, "segment the bowel loop", RoundPlan(targets=(coronal,)), config=FULL_ROUND
    )
    (record,) = first.targets
    assert record.status == "accepted", record.judgments[-1].to_dict()
    assert record.prompt["orientation"] == "coronal"
    e1 = session.entities["E1"]
    np.testing.assert_array_equal(e1.mask.to_dense(volume.shape), truth)
    assert e1.key_plane == ("coronal", 20)
    assert truth[e1.key_slice].any() and e1.box is not None, "key_slice and box are axial, on the mask"
    context = session.reasoning_context().to_dict()["entities"][0]
    assert (context["key_slice"], context["box"]) == (e1.key_slice, list(e1.box))

    # the next question's coronal view shows E1's outline, cut from its 3D mask (superior up, rows stretched)
    from scipy import ndimage

    from MedSegReasoning.reasoning.views import DEFAULT_STRATEGY, draw_entities, refine_views

    ctx = session.reasoning_context(2)
    for orientation, index, plane in (("coronal", 15, truth[:, 15, :]), ("sagittal", 25, truth[:, :, 25])):
        view = draw_entities(refine_views(volume, WINDOW, DEFAULT_STRATEGY, orientation, index), ctx.entities)
        (tile,) = view.views[0].tiles
        assert tile.flip_v
        shown = np.repeat(plane[::-1], tile.height // SHAPE[0], axis=0)
        outline = shown & ~ndimage.binary_erosion(shown, border_value=0)
        painted = (view.views[0].image[: tile.height, : tile.width] == np.array(e1.color)).all(axis=2)
        assert painted[outline].mean() > 0.9, "the outline is where the mask's plane has its boundary"
        tag_rows = np.flatnonzero((painted & ~outline).any(axis=1))  # the filled "E1" tag, at the outline's top
        assert tag_rows.size and tag_rows.min() >= np.flatnonzero(outline.any(axis=1)).min() and np.ptp(tag_rows) < 20

    # round 2 refers to it from an axial box inside it: the relation is judged on the 3D masks
    inner = TargetSpec("lymph node", VoxelPrompt(k=5, box=(14, 14, 20, 18)), ref="E1", relation="inside")
    second = run_round(
        session, volume, segmenter, WINDOW, "the part inside E1", RoundPlan(targets=(inner,)), config=FULL_ROUND
    )
    (record2,) = second.targets
    assert record2.status == "accepted" and record2.ref == "E1"
    relation = next(c for c in record2.judgments[-1].checks if c.name == "relation")
    assert (relation.status, relation.value) == ("pass", "inside")
    assert session.entities["E2"].key_plane == ("axial", 5)

    from MedSegReasoning.server.wire import entity_json  # what a server's "target" event carries

    assert entity_json(e1, with_mask=False)["key_plane"] == {"orientation": "coronal", "slice": 20}
    loaded = load_session(tmp_path / "s")
    assert loaded.entities["E1"].key_plane == ("coronal", 20)
    saved = json.loads((tmp_path / "s" / "session.json").read_text())
    assert saved["entities"][0]["key_plane"] == {"orientation": "coronal", "slice": 20}


# --- the real LiteMedSAM on the real CT ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_ct(shared_ct):
    from support.ct_reference import reference_labels_on_ct_grid

    from MedSegReasoning.volume.loader import load_volume
    from MedSegReasoning.volume.windowing import default_window

    volume = load_volume(shared_ct / "dicom")
    names = {v: int(k) for k, v in json.loads((shared_ct / "labels.json").read_text()).items()}
    labels = reference_labels_on_ct_grid(shared_ct, volume)
    return volume, default_window(volume), {name: labels == value for name, value in names.items()}


def _largest_plane(mask: np.ndarray, axis: int) -> int:
    return int(np.argmax(mask.sum(axis=tuple(a for a in range(3) if a != axis))))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2.0 * (a & b).sum() / (a.sum() + b.sum()))


@pytest.mark.slow
def test_real_litemedsam_on_a_coronal_liver_slice_and_along_j(real_ct, litemedsam):
    """2D floor 0.95: measured 0.977 (coronal j=276, reference box, superior up, square pixels; 0.931 without
    square pixels; the axial liver gives ~0.98). 3D floor 0.9 over the visited slab: measured 0.978 on j 276-280
    (propagation capped at 5 of 512 planes to keep the test at 5 encoder runs). The floors leave room for
    LiteMedSAM's drift between backends (torch / ONNX) and catch a degraded segmenter input; they cannot catch
    every geometry error (the liver fills all 20 slices: its plane mirrored in k still scores 0.95, the next plane
    1.0), which is why the exact voxel checks above use the synthetic volume."""
    volume, window, reference = real_ct
    liver = reference["liver"]
    j = _largest_plane(liver, 1)
    ks, is_ = np.nonzero(liver[:, j, :])
    prompt = VoxelPrompt(k=j, box=(int(is_.min()), int(ks.min()), int(is_.max()), int(ks.max())), orientation="coronal")
    t0 = time.perf_counter()
    key = segment_target(volume, litemedsam, window, prompt, label="liver", propagate_3d=False)
    assert not key.mask[:, np.arange(volume.shape[1]) != j, :].any(), "the mask is on coronal plane j only"
    dice_2d = _dice(key.mask[:, j, :], liver[:, j, :])
    assert dice_2d > 0.95, dice_2d

    config = PropagationConfig(skip=1, max_slices=5)
    result = segment_target(volume, litemedsam, window, prompt, label="liver", config=config)
    assert result.propagation is not None
    visited = result.propagation.visited_slices
    assert len(visited) == 5 and j in visited
    slab = slice(min(visited), max(visited) + 1)
    assert not result.mask[:, : slab.start].any() and not result.mask[:, slab.stop :].any()
    dice_3d = _dice(result.mask[:, slab], liver[:, slab])
    assert dice_3d > 0.9, dice_3d
    print(
        f"coronal liver j={j}: 2D Dice {dice_2d:.3f}, 3D Dice {dice_3d:.3f} on j {visited}, {time.perf_counter() - t0:.1f} s"
    )


@pytest.mark.slow
def test_cli_ask_with_a_replayed_sagittal_answer(real_ct, shared_ct, litemedsam, tmp_path, monkeypatch, capsys):
    """``ask --view sagittal,I "... this slice"``: the replayed box on the sagittal view becomes a sagittal target;
    mask.nii.gz holds the spleen on that plane (2D Dice floor 0.95, measured 0.991), result.json says sagittal."""
    import SimpleITK as sitk

    from MedSegReasoning.cli import main
    from MedSegReasoning.reasoning.views import DEFAULT_STRATEGY, refine_views
    from MedSegReasoning.segmentation import factory

    volume, window, reference = real_ct
    spleen = reference["spleen"]
    i = _largest_plane(spleen, 2)
    ks, js = np.nonzero(spleen[:, :, i])
    tile = refine_views(volume, window, DEFAULT_STRATEGY, "sagittal", i).views[0].tiles[0]
    # the reference box drawn on the rendered view (flipped: superior up; rows repeated for 2 mm slices)
    xa, ya = tile.from_plane(int(js.min()), int(ks.min()))
    xb, yb = tile.from_plane(int(js.max()) + 1, int(ks.max()) + 1)
    bbox = [int(min(xa, xb)), int(min(ya, yb)), int(max(xa, xb)) - 1, int(max(ya, yb)) - 1]
    answer = {"reasoning": "The spleen, left upper quadrant.", "targets": [{"bbox": bbox, "label": "spleen"}]}
    replay = tmp_path / "answers.jsonl"
    replay.write_text(json.dumps({"step": "locate", "raw": json.dumps(answer)}) + "\n")
    monkeypatch.setattr(factory, "create_segmenter", lambda spec, **kw: litemedsam)
    out = tmp_path / "out"
    argv = ["ask", str(shared_ct / "dicom"), "segment the organ on this slice", "--view", f"sagittal,{i}"]
    argv += ["--reasoner", f"replay:{replay}", "--no-propagate", "--out", str(out)]
    assert main(argv) == 0, capsys.readouterr().err

    result = json.loads((out / "result.json").read_text())
    (target,) = result["targets"]
    assert target["key_plane"] == {"orientation": "sagittal", "slice": i}
    assert result["round"]["targets"][0]["prompt"]["orientation"] == "sagittal"
    assert result["answers"][0]["targets"][0]["orientation"] == "sagittal"
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "mask.nii.gz"))) == 1
    assert mask.shape == volume.shape
    planes = np.flatnonzero(mask.any(axis=(0, 1)))
    assert planes.tolist() == [i], "the mask lies on sagittal plane i only"
    dice = _dice(mask[:, :, i], spleen[:, :, i])
    assert dice > 0.95, dice
    print(f"sagittal spleen i={i}: 2D Dice {dice:.3f}, status {result['round']['targets'][0]['status']}")
    areas = mask.sum(axis=(1, 2))
    assert areas[target["key_slice"]] == areas.max(), "key_slice: the axial slice where the mask is largest"


def test_judgment_and_correction_work_in_the_prompts_plane():
    from MedSegReasoning.dialogue.correction_loop import correction_prompts
    from MedSegReasoning.dialogue.judgment import Candidate, judge
    from MedSegReasoning.wire.masks import CompactMask

    volume, truth = slanted_volume()
    nk, nj, ni = SHAPE
    prompt = VoxelPrompt(k=20, box=(0, 0, ni - 1, nk - 1), orientation="coronal")
    one_plane = np.zeros(SHAPE, dtype=bool)
    one_plane[:, 20] = truth[:, 20]  # 16 mm wide, 7 slices tall, on one coronal plane of 1 mm
    stopped = Candidate(CompactMask.from_dense(one_plane), 0.9, prompt, True, stop_reasons={"up": "slice 21: x"})
    check = next(c for c in judge(stopped, volume.geometry, SHAPE).checks if c.name == "propagation")
    assert check.status == "fail" and "after one coronal slice" in check.detail and check.value == 1
    whole = Candidate(CompactMask.from_dense(truth), 0.9, prompt, True)
    check = next(c for c in judge(whole, volume.geometry, SHAPE).checks if c.name == "propagation")
    assert (check.status, check.value) == ("pass", 20), "counted along j, the propagation's direction"
    failed = judge(stopped, volume.geometry, SHAPE)
    for _, corrected, _ in correction_prompts(prompt, failed, SHAPE):
        assert corrected.orientation == "coronal" and corrected.k == 20
        u0, v0, u1, v1 = corrected.box
        assert 0 <= u0 <= u1 < ni and 0 <= v0 <= v1 < nk, "clipped to the coronal plane (i, k)"
        assert all(0 <= u < ni and 0 <= v < nk for u, v in corrected.points)


def test_view_option_is_parsed_and_checked():
    from MedSegReasoning.cli import parse_view

    assert parse_view(None) is None
    view = parse_view("Coronal, 250")
    assert (view.orientation, view.slice) == ("coronal", 250)
    for text, message in [("coronal", "ORIENTATION,INDEX"), ("axial,-1", "0 or more"), ("oblique,3", "unknown")]:
        with pytest.raises(InputError, match=message):
            parse_view(text)


def test_targets_of_any_orientation_become_prompts_and_only_promptless_ones_are_refused():
    from MedSegReasoning.reasoning.answer import Target

    target = Target(slice=30, orientation="sagittal", box=(5, 1, 25, 9), points=((10, 4),), point_labels=(1,))
    prompt = target.to_voxel_prompt()
    assert (prompt.orientation, prompt.k, prompt.box) == ("sagittal", 30, (5, 1, 25, 9))
    assert prompt.to_dict()["points"] == [[30, 10, 4, 1]]  # (i, j, k, label): i is the sagittal plane
    with pytest.raises(InputError, match="no box and no point on sagittal slice 30"):
        Target(slice=30, orientation="sagittal", label="mass").to_voxel_prompt()


def test_a_coronal_prompt_sent_to_the_server_lands_on_its_plane(tmp_path):
    """A box drawn in Slicer's coronal view travels as a coronal prompt (plane j, box in (i, k)) and its mask lies
    on that plane, on the bright structure inside the box, across the slices the box spans."""
    from support.server import ThresholdSegmenter, live_server, scripted_engine, small_volume, truth_masks

    from MedSegReasoning.slicer.backend_link import round_request
    from MedSegReasoning.wire.client import MedSegClient

    volume = small_volume()
    truth_a, _ = truth_masks()
    request = round_request(
        {
            "view": {"orientation": "coronal", "slice": 22},
            "prompts": {"boxes": [[12, 22, 0, 32, 22, 2]]},
            "propagate": False,
        }
    )
    assert request["prompts"] == [{"orientation": "coronal", "slice": 22, "box": [12, 0, 32, 2]}]
    with live_server(tmp_path, scripted_engine(None, segmenter=ThresholdSegmenter())) as (server, tokens):
        client = MedSegClient(server.url, tokens["alice"])
        sid = client.create_session()
        g = volume.geometry
        client.upload_volume(sid, volume.array, g.origin, g.spacing, g.direction, "CT")
        result = client.ask(sid, "Segment the bright mass.", **request)
        (entity,) = result.entities
        mask = entity.mask.to_dense(volume.shape)
    expected = np.zeros(volume.shape, dtype=bool)
    expected[:, 22, 12:33] = truth_a[:, 22, 12:33]
    np.testing.assert_array_equal(mask, expected)
    assert entity.data["key_plane"] == {"orientation": "coronal", "slice": 22}
