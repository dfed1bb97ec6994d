"""overview.png: panel layout at physical proportions, outlines exactly on the mask boundary, head-up coronal and
sagittal planes, and its place in the ask outputs (written with the rest, never failing them)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from MedSegReasoning import overview
from MedSegReasoning.export.dicom_seg import SegmentSpec
from MedSegReasoning.output import write_ask_outputs
from MedSegReasoning.overview import OverviewTarget, render_overview, render_overview_panels
from MedSegReasoning.segmentation.base import ModelIdentity
from MedSegReasoning.volume.core import Geometry, Volume, VolumeSource
from MedSegReasoning.volume.windowing import Window

SHAPE = (12, 40, 50)  # k, j, i
SPACING = (0.8, 0.8, 3.0)  # si, sj, sk
COLOR = (255, 0, 255)  # never a grey level, so every pixel of it is outline
WINDOW = Window("test", 150.0, 300.0)  # 0 -> black, 200 (ellipsoid) -> grey, 400 (top slice) -> white
KEY = 5


def _volume(shape=SHAPE, spacing=SPACING, direction=None) -> tuple[Volume, np.ndarray]:
    """A bright ellipsoid in the middle and a white highest-k slice (to tell up from down)."""
    k, j, i = np.indices(shape)
    nk, nj, ni = shape
    mask = ((k - nk / 2 + 0.5) / (nk / 3)) ** 2 + ((j - nj / 2) / (nj / 3)) ** 2 + ((i - ni / 2) / (ni / 4)) ** 2 <= 1
    array = np.where(mask, 200, 0).astype(np.int16)
    array[-1] = 400
    geometry = Geometry.from_arrays((0.0, 0.0, 0.0), spacing, np.eye(3) if direction is None else direction)
    return Volume(array, geometry, "MR", VolumeSource("nifti", "/data/phantom.nii.gz")), mask


def _boundary(plane: np.ndarray) -> np.ndarray:
    """Mask voxels with a 4-neighbour outside the mask (or outside the slice)."""
    p = np.pad(plane, 1, constant_values=False)
    return plane & ~(p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:])


def _source_index(n_source: int, n_pixels: int) -> np.ndarray:
    """For each of ``n_pixels`` the source index that PIL's NEAREST resize samples (asked of PIL itself)."""
    line = Image.fromarray(np.arange(n_source, dtype=np.int32)[None, :])
    return np.asarray(line.resize((n_pixels, 1), Image.Resampling.NEAREST))[0]


@pytest.fixture(scope="module")
def drawn():
    volume, mask = _volume()
    image, panels = render_overview_panels(volume, WINDOW, [OverviewTarget("lesion", mask, COLOR)], KEY)
    return volume, mask, np.asarray(image), panels


def test_layout_has_the_expected_size(drawn):
    _, _, pixels, panels = drawn
    # axial 40 x 32 mm -> 320 x 256; coronal 40 x 36 mm -> 284 x 256; sagittal 32 x 36 mm -> 228 x 256
    assert [(p.orientation, p.box[2:]) for p in panels] == [
        ("axial", (320, 256)),
        ("axial", (320, 256)),
        ("coronal", (284, 256)),
        ("sagittal", (228, 256)),
    ]
    g, cap = overview.GAP, overview.CAPTION
    width = g + 320 + g + 284 + g + 228 + g
    height = overview.TITLE + 2 * (cap + 256 + g) + g
    assert pixels.shape == (height, width, 3)
    # the key slice, then the planes through the ellipsoid's centre (k 5.5 lies between slices 5 and 6)
    assert panels[0].index == KEY and panels[1].index in (5, 6) and [p.index for p in panels[2:]] == [20, 25]


def test_axial_outline_lies_exactly_on_the_mask_boundary(drawn):
    _, mask, pixels, panels = drawn
    x0, y0, w, h = panels[0].box
    panel = pixels[y0 : y0 + h, x0 : x0 + w]
    ys, xs = np.nonzero(np.all(panel == COLOR, axis=-1))
    assert ys.size > 0
    jj, ii = _source_index(SHAPE[1], h)[ys], _source_index(SHAPE[2], w)[xs]
    boundary = _boundary(mask[KEY])
    assert boundary[jj, ii].all(), "every outline pixel is drawn on a boundary voxel"
    hit = np.zeros_like(boundary)
    hit[jj, ii] = True
    assert (hit == boundary).all(), "every boundary voxel is outlined"


def test_coronal_panel_is_at_physical_proportions_and_head_up(drawn):
    _, _, pixels, panels = drawn
    coronal = next(p for p in panels if p.orientation == "coronal")
    x0, y0, w, h = coronal.box
    nk, _, ni = SHAPE
    assert h / w == pytest.approx(nk * SPACING[2] / (ni * SPACING[0]), abs=0.01)
    assert h > 3 * w * nk / ni, "one pixel row per 3 mm slice would be less than a third as tall"
    panel = pixels[y0 : y0 + h, x0 : x0 + w]
    assert (panel[0] == 255).all() and (panel[-1] == 0).all(), "the highest k (superior) is at the top"
    assert np.all(panel == COLOR, axis=-1).any(), "the target is outlined on its coronal plane"


def test_tiny_and_oblique_volumes_render(tmp_path):
    flipped = np.diag([1.0, -1.0, -1.0])  # k pointing inferior: no flip to superior-up
    volume, mask = _volume(shape=(3, 9, 7), spacing=(0.5, 2.0, 5.0), direction=flipped)
    empty = np.zeros_like(mask)
    image = render_overview(volume, WINDOW, [OverviewTarget("a", mask), OverviewTarget("gone", empty)], None)
    assert image.mode == "RGB" and min(image.size) > 0
    assert np.all(np.asarray(image) == overview.DEFAULT_COLORS[0], axis=-1).any()


def _ask(tmp_path, volume, mask):
    segments = [SegmentSpec(number=1, label="lesion", mask=mask, color=COLOR)]
    records = [{"value": 1, "label": "lesion", "key_slice": KEY, "voxels": int(mask.sum())}]
    options = SimpleNamespace(out=tmp_path / "out", question=None, propagate=False)
    identity = ModelIdentity(name="oracle", weights="none", sha256="0" * 64)
    return write_ask_outputs(volume, segments, records, options, WINDOW, identity, {"load_s": 0.0})


def test_ask_outputs_include_the_overview(tmp_path):
    volume, mask = _volume()
    result = _ask(tmp_path, volume, mask)
    out = tmp_path / "out"
    assert result["outputs"]["overview"] == "overview.png"
    assert json.loads((out / "result.json").read_text())["outputs"]["overview"] == "overview.png"
    with Image.open(out / "overview.png") as png:
        assert png.format == "PNG" and png.size == (864, 588)
    assert sorted(p.name for p in out.iterdir()) == ["mask.nii.gz", "overview.png", "result.json"]


def test_a_failing_overview_costs_only_the_picture(tmp_path, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("no pixels today")

    monkeypatch.setattr(overview, "render_overview", broken)
    volume, mask = _volume()
    result = _ask(tmp_path, volume, mask)
    out = tmp_path / "out"
    assert result["outputs"]["overview"] is None
    assert result["warnings"] == ["no overview.png: no pixels today"]
    assert "no pixels today" in caplog.text
    assert sorted(p.name for p in out.iterdir()) == ["mask.nii.gz", "result.json"]
