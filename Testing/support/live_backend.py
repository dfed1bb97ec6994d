"""A live backend for the Slicer-side tests: the real LiteMedSAM and the replay reasoner behind a real uvicorn on
loopback, replay answers for three slices of the real CT (``ct3`` in ``Testing/slicer/conftest.py``), and ways to
look into the server while a test runs."""

from __future__ import annotations

import contextlib
import json
import threading
from pathlib import Path

import numpy as np

from support.server import live_server, offline_terminology

K = 1  # the key slice in the crop (slice 18 of the series)


def box_of(mask2d: np.ndarray, pad: int = 3) -> list[int]:
    jj, ii = np.nonzero(mask2d)
    nj, ni = mask2d.shape
    return [max(int(ii.min()) - pad, 0), max(int(jj.min()) - pad, 0), min(int(ii.max()) + pad, ni - 1),
            min(int(jj.max()) + pad, nj - 1)]  # fmt: skip


def write_answers(path: Path, rounds: list[dict]) -> Path:
    """Per round ``{"targets": [{"label", "box"}], "text": ..., "this_slice": bool}``: a key-slice pick then the
    boxes, or (``this_slice``) only the boxes, as the server asks for a question about the current view."""
    lines = []
    for n, rnd in enumerate(rounds, start=1):
        text = rnd.get("text", "Boxed it.")
        if not rnd.get("this_slice"):
            pick = [{"slice": K, "label": t["label"]} for t in rnd["targets"]]
            raw = json.dumps({"reasoning": f"Best seen on slice {K}.", "targets": pick})
            lines.append({"round": n, "step": "pick_slice", "raw": raw})
        located = [{"slice": K, "bbox": t["box"], "points": [], "label": t["label"]} for t in rnd["targets"]]
        lines.append({"round": n, "step": "locate", "raw": json.dumps({"reasoning": text, "targets": located})})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


@contextlib.contextmanager
def start_server(tmp_path: Path, litemedsam, answers: Path):
    """A real uvicorn on 127.0.0.1 serving the real LiteMedSAM and the replay reasoner; yields (server, token)."""
    from MedSegReasoning.reasoning import create_reasoner
    from MedSegReasoning.server.engine import Engine

    engine = Engine(
        segmenter=litemedsam,
        reasoner_factory=lambda: create_reasoner(f"replay:{answers}"),
        terminology=offline_terminology(),
    )
    with live_server(tmp_path, engine) as (server, tokens):
        yield server, tokens["alice"]


def saved_session(server, sid: str) -> dict:
    """The session.json the server wrote for ``sid`` (what it records, read from its state folder)."""
    return json.loads((server.runtime.store.get(sid, "alice").folder / "session.json").read_text())


@contextlib.contextmanager
def segmenter_held(server):
    """Occupy the server's segmenter slot (its real FIFO queue) until the block ends: a round's next segmenter call
    waits in the queue, deterministically, however fast the machine."""
    release, holding = threading.Event(), threading.Event()

    def hold() -> None:
        holding.set()
        release.wait(60)

    thread = threading.Thread(target=server.runtime.workers["segmenter"].call, args=(hold,), daemon=True)
    thread.start()
    assert holding.wait(10)
    try:
        yield
    finally:
        release.set()
        thread.join(10)
