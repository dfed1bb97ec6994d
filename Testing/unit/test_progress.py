"""Progress a user sees: propagation's bar counts the slices the structure can span and ends full; a round's
the CLI draws it, and the CLI says what it loads before it waits."""

from __future__ import annotations

import io
import sys

import numpy as np
from support.fakes import oracle

from MedSegReasoning.console import PropagationBar, RoundProgress, split_slice_stage
from MedSegReasoning.propagation import propagate
from MedSegReasoning.propagation_span import SpanProgress
from MedSegReasoning.volume.core import Geometry, Volume
from MedSegReasoning.volume.windowing import Window
from MedSegReasoning.wire.errors import ModelError

WINDOW = Window(name="test", level=50.0, width=100.0)


def _short_structure(nk: int = 120, first: int = 50, last: int = 59) -> tuple[Volume, np.ndarray]:
    """A 10-slice disc (radius 8 px of 1 mm, slices 2 mm) in a 120-slice volume: a bar to 120 would stop at 12."""
    truth = np.zeros((nk, 64, 64), dtype=bool)
    yy, xx = np.mgrid[:64, :64]
    truth[first : last + 1] = (yy - 30) ** 2 + (xx - 34) ** 2 <= 8**2
    array = np.where(truth, 80, 0).astype(np.int16)
    return Volume(array, Geometry.from_arrays((0, 0, 0), (1, 1, 2), np.eye(3)), modality="CT"), truth


def test_propagation_total_is_the_structures_span_and_the_bar_ends_full():
    volume, truth = _short_structure()
    reports: list[tuple[int, int]] = []
    result = propagate(
        volume,
        oracle(volume.array, truth, window=WINDOW),
        WINDOW,
        55,
        truth[55],
        progress=lambda d, t: reports.append((d, t)),
    )
    assert result.slice_range == (50, 59)
    done, total = reports[-1]
    assert done == total == 12  # the 10 slices and the empty one past each end
    assert max(t for _, t in reports) < 40  # an estimate from the disc's 17 mm width, never the volume's 120
    assert all(d <= t for d, t in reports) and [d for d, _ in reports] == sorted(d for d, _ in reports)


def test_span_total_drops_a_stopped_direction_and_grows_past_the_estimate():
    reports: list[tuple[int, int]] = []
    span = SpanProgress(
        lambda d, t: reports.append((d, t)), key_slice=10, n_slices=100, budget=100, expected_per_side=3
    )
    span.report()
    assert reports[-1] == (1, 7)  # key slice + 3 up + 3 down
    for _ in range(5):  # up goes on past its estimate: one more expected each time, never less than done
        span.advance("up", 1)
    assert reports[-1] == (6, 10)
    span.stop("up")
    assert reports[-1] == (6, 9)
    span.advance("down", 1)
    span.stop("down")
    assert reports[-1] == (7, 7)
    assert SpanProgress.expected_side(np.ones((10, 20), bool), (1.0, 1.0, 2.0)) == 8  # 0.75 * 20 mm / 2 mm


def test_the_cli_bar_follows_a_shrinking_total_and_a_round_prints_a_line_per_stage_not_per_slice(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    bar = PropagationBar()
    bar.update(1, 40)
    bar.update(9, 12)
    assert (bar.bar.n, bar.bar.total) == (9, 12)
    bar.close()
    progress = RoundProgress()
    progress("target 1 of 1: liver", 0.0)
    for done in range(1, 31):
        progress(f"target 1 of 1: liver: propagating slice {done} of 30", done / 30)
    shown = progress.bar.bar
    assert (shown.n, shown.total, shown.desc) == (30, 30, "target 1 of 1: liver: propagating")
    progress("done", 1.0)
    lines = [line for line in err.getvalue().replace("\r", "\n").splitlines() if line.startswith("[")]
    assert lines == ["[  0%] target 1 of 1: liver"]
    assert split_slice_stage("a: propagating slice 3 of 7") == ("a: propagating", (3, 7))
    assert split_slice_stage("target 1 of 2: slice thing") == ("target 1 of 2: slice thing", None)


def test_ask_says_it_loads_the_segmenter_before_the_model_starts(tmp_path, monkeypatch):
    from MedSegReasoning import cli
    from MedSegReasoning.segmentation import factory
    from MedSegReasoning.volume import write_dicom_series

    array = np.full((4, 32, 32), -1000, dtype=np.int16)
    array[1:3, 8:24, 8:24] = 60
    write_dicom_series(
        array, Geometry.from_arrays((0, 0, 0), (1.0, 1.0, 2.0), np.eye(3)), tmp_path / "s", modality="CT"
    )
    err = io.StringIO()
    seen_at_load: list[str] = []

    def fake_create(*args, **kwargs):
        seen_at_load.append(err.getvalue())
        raise ModelError("no model in this test")

    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setattr(factory, "_create", fake_create)
    monkeypatch.setattr(factory, "_preloads", {})  # a build an earlier test preloaded must not stand in
    code = cli.main(["ask", str(tmp_path / "s"), "--box", "4,4,27,27,1", "--out", str(tmp_path / "out")])
    assert code == 3 and seen_at_load, err.getvalue()
    assert "loading the segmenter (litemedsam)" in seen_at_load[0]
