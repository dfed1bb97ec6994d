"""Encoding ahead: slices the reasoner is shown are encoded while it thinks, into the cache the round reads.

Everything is counted (``SegmenterStats``, ``EncodeAheadStats``), never timed. The lock and ``prefetch`` semantics
run on a stand-in whose encoder call lasts until released or interrupted; the cache keys, the round and cancelling
run on the real LiteMedSAM and the real CT; a failing encoder runs under the dialogue with a scripted segmenter.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import numpy as np
import pytest
from support.fakes import FakeSegmenter, oracle, truth_in_box
from support.reasoning import blob_volume

from MedSegReasoning.dialogue import RoundConfig, Session, run_round
from MedSegReasoning.dialogue.ask import reasoner_planner
from MedSegReasoning.pipeline import VoxelPrompt, segment_prompt
from MedSegReasoning.propagation import PropagationConfig
from MedSegReasoning.reasoning import create_reasoner
from MedSegReasoning.segmentation._embedding import (
    EmbeddingSegmenter,
    EncodedImage,
    EncodeInterrupted,
    InputFrame,
    Interrupt,
)
from MedSegReasoning.segmentation.base import ModelIdentity, Prompt2D
from MedSegReasoning.segmentation.cache import EmbeddingCache
from MedSegReasoning.segmentation.encode_ahead import EncodeAhead, encoding_ahead, slice_input, worth_encoding_ahead
from MedSegReasoning.volume import default_window, load_volume

WAIT_S = 120.0  # generous upper bounds for a loaded 2-core machine: the tests never depend on how long things take


# -- the lock and prefetch, on a stand-in encoder ---------------------------------------------------------------
class HeldEncoder(EmbeddingSegmenter):
    """An encoder whose background calls last until ``release`` is set or they are interrupted (as OpenVINO's do)."""

    def __init__(self) -> None:
        super().__init__(
            identity=ModelIdentity("held", "none", "0" * 64), cache=EmbeddingCache(2**24), cache_namespace="held"
        )
        self.release = threading.Event()
        self.started = threading.Event()

    def _encode(self, image: np.ndarray, interrupt: Interrupt | None = None) -> EncodedImage:
        if interrupt is not None:
            self.started.set()
            stopped = threading.Event()
            with interrupt.stops(stopped.set):
                while not self.release.is_set():
                    if stopped.wait(0.005):
                        raise EncodeInterrupted("stopped")
        h, w = image.shape[:2]
        embedding = np.full((1, 2, 2, 2), float(image[0, 0, 0]), dtype=np.float32)
        return EncodedImage(embedding, InputFrame((h, w), (h, w), max(h, w)))

    def _decode(self, encoded, box, points, labels):
        return np.full(encoded.frame.original_hw, bool(encoded.embedding[0, 0, 0, 0] > 0)), 0.9


def image(value: int, h: int = 6, w: int = 8) -> np.ndarray:
    return np.full((h, w, 3), value, dtype=np.uint8)


def test_prefetch_fills_the_cache_and_leaves_the_current_image():
    seg = HeldEncoder()
    seg.release.set()
    seg.set_image(image(0, 6, 8), cache_key="a")
    assert seg.prefetch(image(9, 10, 12), cache_key="b")
    assert seg.predict(Prompt2D(box=(0, 0, 3, 3))).mask.shape == (6, 8), "the current image is still a"
    assert (seg.stats.encoder_calls, seg.stats.cache_hits) == (2, 0), "prefetching counts no hit"
    assert seg.prefetch(image(9, 10, 12), cache_key="b") and seg.stats.encoder_calls == 2, "already cached"
    seg.set_image(image(9, 10, 12), cache_key="b")
    assert (seg.stats.encoder_calls, seg.stats.cache_hits) == (2, 1)
    assert seg.predict(Prompt2D(box=(0, 0, 3, 3))).mask.all()


def test_a_foreground_call_interrupts_a_running_background_encode():
    seg = HeldEncoder()
    result: list[bool] = []
    worker = threading.Thread(target=lambda: result.append(seg.prefetch(image(5), cache_key="ahead")))
    worker.start()
    assert seg.started.wait(WAIT_S) and seg.lock.background_running
    seg.set_image(image(1), cache_key="round")  # never waits for the held background call: it interrupts it
    worker.join(WAIT_S)
    assert result == [False]
    assert seg.stats.encoder_calls == 1 and seg.cache.peek(("held", "ahead")) is None
    assert seg.cache.peek(("held", "round")) is not None


def test_a_background_call_waits_while_a_foreground_call_runs():
    seg = HeldEncoder()
    seg.release.set()
    interrupt = Interrupt()
    with seg.lock.foreground():
        done: list[bool] = []
        worker = threading.Thread(target=lambda: done.append(seg.prefetch(image(3), "k", interrupt)))
        worker.start()
        worker.join(0.3)
        assert worker.is_alive() and seg.stats.encoder_calls == 0, "it must not run beside the round"
    worker.join(WAIT_S)
    assert done == [True] and seg.stats.encoder_calls == 1


def test_a_segmenter_that_cannot_prefetch_is_left_alone():
    volume = blob_volume()
    ahead = EncodeAhead(oracle(volume.array, volume.array >= 200))
    assert not ahead.supported
    assert ahead.submit(volume, default_window(volume), [7]) == 0
    ahead.close()


def test_reasoners_on_this_cpu_get_no_encoding_ahead():
    assert not worth_encoding_ahead("hf", "cpu") and not worth_encoding_ahead("hf", None)
    assert worth_encoding_ahead("hf", "cuda:0") and worth_encoding_ahead("openai", None)
    assert worth_encoding_ahead("replay", None)


# -- the real LiteMedSAM on the real CT ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ct(shared_ct):
    from support.ct_reference import reference_on_ct_grid

    volume = load_volume(shared_ct / "dicom")
    liver = reference_on_ct_grid(shared_ct, volume, "liver")
    return volume, default_window(volume), liver


def box_of(mask2d: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(mask2d)
    return int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max())


@pytest.mark.slow
@pytest.mark.parametrize("orientation", ["axial", "coronal"])
def test_slices_encoded_ahead_are_the_ones_the_round_looks_up(ct, litemedsam, orientation):
    """Same image, same key as ``segment_slice`` (the coronal plane is resampled square: the key says so)."""
    volume, window, liver = ct
    if orientation == "axial":
        index = int(liver.sum(axis=(1, 2)).argmax())
        plane = liver[index]
    else:
        index = int(liver.sum(axis=(0, 2)).argmax())
        plane = liver[:, index, :]  # a coronal prompt's box is in (i, k); the view's superior-up flip is the engine's
    prompt = VoxelPrompt(index, box=box_of(plane), orientation=orientation)
    image, key = slice_input(volume, window, orientation, index)
    litemedsam.cache.clear()
    with EncodeAhead(litemedsam, neighbours=0) as ahead:
        assert ahead.submit(volume, window, [index], orientation=orientation) == 1
        assert ahead.wait_idle(WAIT_S)
        assert (ahead.stats.cached, ahead.stats.failed) == (1, 0)
    assert ("square" in key) == (orientation == "coronal")
    calls, hits = litemedsam.stats.encoder_calls, litemedsam.stats.cache_hits
    result = segment_prompt(volume, litemedsam, window, prompt, propagate_3d=False)
    assert result.key_mask.any()
    assert litemedsam.stats.encoder_calls == calls and litemedsam.stats.cache_hits == hits + 1


class ThinksUntilEncoded:
    """A reasoner that answers once encoding ahead has nothing left to do (it 'thinks' long enough)."""

    def __init__(self, inner, ahead: EncodeAhead, segmenter) -> None:
        self.inner, self.ahead, self.segmenter = inner, ahead, segmenter
        self.identity = inner.identity
        self.at_answer: tuple[int, int] | None = None

    def reason(self, views, question, context, on_text=None, cancel=None):
        assert self.ahead.wait_idle(WAIT_S)
        answer = self.inner.reason(views, question, context, on_text, cancel)
        self.at_answer = (self.segmenter.stats.encoder_calls, self.segmenter.stats.cache_hits)
        return answer


@pytest.mark.slow
def test_the_key_slice_is_encoded_when_the_reasoner_answers(ct, litemedsam, tmp_path):
    """A round asked about the current slice: the reasoner sees that slice, and the worker encodes it meanwhile."""
    from MedSegReasoning.reasoning.views import CurrentView

    volume, window, liver = ct
    k = int(liver.sum(axis=(1, 2)).argmax())
    answers = tmp_path / "answers.jsonl"
    target = {"slice": k, "bbox": list(box_of(liver[k])), "label": "liver"}
    raw = json.dumps({"reasoning": "The large organ on the left.", "targets": [target]})
    answers.write_text(json.dumps({"round": 1, "step": "locate", "raw": raw}) + "\n")
    litemedsam.cache.clear()
    session = Session.for_volume(volume)
    with EncodeAhead(litemedsam, neighbours=0) as ahead:
        reasoner = ThinksUntilEncoded(create_reasoner(f"replay:{answers}"), ahead, litemedsam)
        planner = reasoner_planner(
            volume, window, reasoner, session, propagate=False, current_view=CurrentView("axial", k), encode_ahead=ahead
        )
        before = litemedsam.stats.encoder_calls
        rnd = run_round(session, volume, litemedsam, window, "Segment the liver on this slice.", planner)
    assert rnd.targets[0].entity_id == "E1"
    calls, hits = reasoner.at_answer
    assert calls == before + 1, "the worker encoded the shown slice while the reasoner thought"
    assert litemedsam.stats.encoder_calls == calls, "after the answer the encoder never ran"
    assert litemedsam.stats.cache_hits > hits
    assert ahead.stats.cached == 1


@pytest.mark.slow
def test_cancelling_drops_pending_slices_and_interrupts_the_running_one(ct, litemedsam):
    volume, window, _ = ct
    litemedsam.cache.clear()
    calls = litemedsam.stats.encoder_calls
    ahead = EncodeAhead(litemedsam, neighbours=0, min_idle_s=0.0)
    try:
        assert ahead.submit(volume, window, [2, 3, 4, 5, 6], owner="round 1") == 5
        waited = threading.Event()
        while not litemedsam.lock.background_running and not waited.wait(0.005):
            pass
        ahead.cancel("round 1")
        assert ahead.wait_idle(WAIT_S)
    finally:
        ahead.close()
    s = ahead.stats
    encoded = litemedsam.stats.encoder_calls - calls
    assert s.cached == encoded and s.cached + s.interrupted + s.dropped == 5 and s.failed == 0
    assert s.dropped >= 3, "the slices still pending were dropped, not encoded"
    kept = [slice_input(volume, window, "axial", k)[1] for k in (2, 3, 4, 5, 6)]
    assert sum(litemedsam.cache.peek((litemedsam._cache_namespace, key)) is not None for key in kept) == encoded
    litemedsam.set_image(*slice_input(volume, window, "axial", 4)[:1])  # the segmenter works on as before
    assert litemedsam.predict(Prompt2D(box=(150, 150, 350, 350))).mask.shape == (512, 512)


# -- a failing encoder never fails the round ---------------------------------------------------------------------
class PrefetchCrashes(FakeSegmenter):
    """The scripted segmenter with a ``prefetch`` that always fails (a broken runtime in the background)."""

    def __init__(self, voxels: np.ndarray, truth: np.ndarray) -> None:
        super().__init__(voxels, truth_in_box(truth), name="oracle")
        self.prefetches = 0

    def prefetch(self, image, cache_key, interrupt=None, *, min_idle_s=0.0) -> bool:
        self.prefetches += 1
        raise RuntimeError("the encoder crashed")


def test_an_encoder_failure_while_encoding_ahead_does_not_fail_the_round(tmp_path: Path, caplog):
    volume = blob_volume()
    window = default_window(volume)
    truth = volume.array >= 200
    segmenter = PrefetchCrashes(volume.array, truth)
    rows, cols = np.nonzero(truth[7])
    target = {"slice": 7, "label": "blob", "bbox": [int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max())]}
    lines = [
        {
            "round": 1,
            "step": "pick_slice",
            "raw": json.dumps({"reasoning": "Brightest there.", "targets": [{"slice": 7, "label": "blob"}]}),
        },
        {"round": 1, "step": "locate", "raw": json.dumps({"reasoning": "Round.", "targets": [target]})},
    ]
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps(line) + "\n" for line in lines))
    session = Session.for_volume(volume)
    with EncodeAhead(segmenter, min_idle_s=0.0) as ahead:
        inner = create_reasoner(f"replay:{answers}")
        reasoner = ThinksUntilEncoded(inner, ahead, segmenter)
        planner = reasoner_planner(volume, window, reasoner, session, propagate=True, encode_ahead=ahead)
        with caplog.at_level(logging.WARNING, logger="MedSegReasoning.segmentation.encode_ahead"):
            full = RoundConfig(propagation=PropagationConfig(skip=1))  # slice by slice: the exact blob below
            rnd = run_round(session, volume, segmenter, window, "Segment the bright blob.", planner, config=full)
    assert rnd.targets[0].status == "accepted" and np.array_equal(session.dense_mask("E1"), truth)
    assert segmenter.prefetches > 0 and ahead.stats.failed == segmenter.prefetches and ahead.stats.cached == 0
    assert "the round encodes it itself" in caplog.text


def test_encoding_ahead_without_a_worker_is_a_no_op():
    volume = blob_volume()
    with encoding_ahead(None, volume, default_window(volume)) as on_views:
        assert on_views is None


@pytest.mark.slow
def test_a_server_round_encodes_the_shown_slices_while_the_reasoner_thinks(tmp_path, litemedsam):
    """Over real HTTP: the montage shows all three slices, so the round (key slice, propagation to both neighbours)
    finds every embedding cached and the encoder never runs after the answer."""
    from support.server import live_server, offline_terminology, small_volume, write_replay

    from MedSegReasoning.server.engine import Engine
    from MedSegReasoning.wire.client import MedSegClient

    replay = write_replay(tmp_path / "answers.jsonl")
    litemedsam.cache.clear()
    ahead = EncodeAhead(litemedsam, neighbours=0)
    reasoners: list[ThinksUntilEncoded] = []

    def factory():
        reasoners.append(ThinksUntilEncoded(create_reasoner(f"replay:{replay}"), ahead, litemedsam))
        return reasoners[-1]

    engine = Engine(
        segmenter=litemedsam, reasoner_factory=factory, terminology=offline_terminology(), encode_ahead=ahead
    )
    volume = small_volume()
    try:
        with live_server(tmp_path, engine) as (server, tokens):
            client = MedSegClient(server.url, tokens["alice"])
            sid = client.create_session()
            g = volume.geometry
            client.upload_volume(sid, volume.array, g.origin, g.spacing, g.direction, "CT")
            before = litemedsam.stats.encoder_calls
            r1 = client.ask(sid, "Segment the bright mass.")
    finally:
        ahead.close()
    (e1,) = r1.entities
    mask = e1.mask.to_dense(volume.shape)
    assert mask[0].any() and mask[1].any() and mask[2].any(), "propagated through all three slices"
    (thinker,) = [r for r in reasoners if r.at_answer is not None]
    assert thinker.at_answer[0] == before + 3
    assert ahead.stats.cached == 4, "the montage's three slices, then the refine view's (already cached)"
    assert litemedsam.stats.encoder_calls == before + 3, "no encoder call after the answer"
