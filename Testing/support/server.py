"""Builders for the server and client tests: a real uvicorn on loopback, small volumes, replay files, scripted models.

Plain builders, imported as ``support.server``. The client's start-or-connect tests run
``python Testing/support/server.py --state-dir D --token-file F [--delay S]``, which serves the scripted engine
below through the real ``serve`` path (socket, ready line, signals) without loading a real model.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import secrets
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script by the client tests: the repository and Testing/, not support/ itself
    sys.path[0:1] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parents[1])]

from MedSegReasoning.correction import Correction
from MedSegReasoning.server.auth import TokenStore
from MedSegReasoning.server.config import Limits, ServerConfig
from MedSegReasoning.server.engine import Engine
from MedSegReasoning.terminology.matcher import Terminology
from MedSegReasoning.volume.core import Geometry, Volume
from MedSegReasoning.wire.errors import ModelError
from support.fakes import FakeSegmenter, ThresholdSegmenter, truth_in_box

SHAPE = (3, 64, 64)  # k, j, i: three slices keep a real-model propagation to three encoder runs
SPACING = (1.5, 1.5, 3.0)  # si, sj, sk
ORIGIN = (-48.0, -48.0, 10.0)
# two bright round structures on every slice: A upper left, B lower right (voxel centres (j, i), radius)
BLOB_A = ((22, 22), 9)
BLOB_B = ((44, 44), 7)
BOX_A = [12, 12, 32, 32]  # i0, j0, i1, j1 around A on each slice
BOX_B = [36, 36, 52, 52]


def truth_masks(shape: tuple[int, int, int] = SHAPE) -> tuple[np.ndarray, np.ndarray]:
    nk, nj, ni = shape
    jj, ii = np.ogrid[:nj, :ni]
    a = (jj - BLOB_A[0][0]) ** 2 + (ii - BLOB_A[0][1]) ** 2 <= BLOB_A[1] ** 2
    b = (jj - BLOB_B[0][0]) ** 2 + (ii - BLOB_B[0][1]) ** 2 <= BLOB_B[1] ** 2
    return np.broadcast_to(a, shape).copy(), np.broadcast_to(b, shape).copy()


def small_volume(shape: tuple[int, int, int] = SHAPE) -> Volume:
    """A CT-like volume: body at 40 HU, structure A at 200 HU, structure B at 300 HU."""
    a, b = truth_masks(shape)
    array = np.full(shape, 40, dtype=np.int16)
    array[a] = 200
    array[b] = 300
    return Volume(array, Geometry.from_arrays(ORIGIN, SPACING, np.eye(3)), modality="CT")


def volume_meta(volume: Volume, **overrides) -> dict:
    meta = {
        "shape": list(volume.shape),
        "dtype": str(volume.array.dtype),
        "origin": list(volume.geometry.origin),
        "spacing": list(volume.geometry.spacing),
        "direction": [list(r) for r in volume.geometry.direction],
        "modality": volume.modality,
    }
    meta.update(overrides)
    return meta


# ---------------------------------------------------------------------------------------------------------------
# replay files: what the reasoner "answers" (pixels of the rendered view = voxel (i, j) for an axial slice)


def pick(k: int, label: str) -> str:
    return json.dumps({"reasoning": f"It is best seen on slice {k}.", "targets": [{"slice": k, "label": label}]})


def locate(k: int, box: list[int], label: str, ref: str | None = None, text: str = "Bright and round.") -> str:
    return json.dumps(
        {"reasoning": text, "targets": [{"slice": k, "bbox": box, "points": [], "label": label, "ref": ref}]}
    )


def write_replay(path: Path, rounds: int = 3) -> Path:
    """Per round: pick the key slice from the montage, then place the box. Round 1: structure A ("mass");
    round 2: structure B ("cyst") next to E1; later rounds repeat A as a "lesion"."""
    lines = [
        {"round": 1, "step": "pick_slice", "raw": pick(1, "mass")},
        {"round": 1, "step": "locate", "raw": locate(1, BOX_A, "mass", text="A bright mass in the upper left.")},
        {"round": 2, "step": "pick_slice", "raw": pick(1, "cyst")},
        {"round": 2, "step": "locate", "raw": locate(1, BOX_B, "cyst", ref="E1", text="A cyst beside E1.")},
    ]
    for n in range(3, rounds + 1):
        lines += [
            {"round": n, "step": "pick_slice", "raw": pick(1, "lesion")},
            {"round": n, "step": "locate", "raw": locate(1, BOX_A, "lesion")},
        ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------------------
# models


def _no_embedding(texts):
    raise ModelError("no sentence-embedding model in these tests")


def offline_terminology() -> Terminology:
    """The shipped list without the embedding model: labels not in the list stay uncoded (no 10 s model load)."""
    from MedSegReasoning.terminology.matcher import _shipped_data

    return Terminology(_shipped_data(), embedder=_no_embedding)


def scripted_segmenter(voxels, truth: np.ndarray, **kwargs) -> FakeSegmenter:
    """The true mask cut to the box (``support.fakes``), as the server tests' model "scripted-oracle": ``delay_s`` per
    prediction makes rounds last long enough to disconnect or kill mid-round, ``fail_at`` (1-based prediction) raises
    like a model crashing, ``gate`` (an Event) blocks predictions until set."""
    return FakeSegmenter(voxels, truth_in_box(truth, need_box=True), name="scripted-oracle", **kwargs)


def scripted_engine(
    replay: Path | None, segmenter=None, shape: tuple[int, int, int] = SHAPE, voxels=None, **kwargs
) -> Engine:
    """The server's engine with the scripted segmenter (the truth of ``truth_masks``, shown ``small_volume`` or the
    ``voxels`` given: an array or a list of the volumes clients will send) and, with ``replay``, a replay reasoner."""
    from MedSegReasoning.reasoning.spec import create_reasoner

    a, b = truth_masks(shape)
    if segmenter is None:
        segmenter = scripted_segmenter(small_volume(shape).array if voxels is None else voxels, a | b, **kwargs)
    factory = None
    if replay is not None:

        def factory():
            return create_reasoner(f"replay:{replay}")

    return Engine(segmenter=segmenter, reasoner_factory=factory, terminology=offline_terminology())


# ---------------------------------------------------------------------------------------------------------------
# tokens and a live server


def write_tokens(path: Path, names: tuple[str, ...] = ("alice", "bob")) -> dict[str, str]:
    tokens = {name: secrets.token_urlsafe(24) for name in names}
    path.write_text("".join(f"{name}:{token}\n" for name, token in tokens.items()), encoding="utf-8")
    path.chmod(0o600)
    return tokens


class LiveServer:
    """``create_app`` served by a real uvicorn on 127.0.0.1 (a free port), in a thread of the test process."""

    def __init__(self, config: ServerConfig, engine: Engine, token_file: Path) -> None:
        import uvicorn

        from MedSegReasoning.server.app import create_app
        from MedSegReasoning.server.cli import bind_socket

        self.engine = engine
        self.config = config
        self.app = create_app(config, engine, TokenStore.from_file(token_file))
        self._sock = bind_socket("127.0.0.1", 0)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=2)
        )
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    @property
    def runtime(self):
        return self.app.state.runtime

    def start(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@contextlib.contextmanager
def live_server(
    tmp_path: Path,
    engine: Engine,
    *,
    limits: Limits | None = None,
    tokens: dict[str, str] | None = None,
    **config_fields,
) -> Iterator[tuple[LiveServer, dict[str, str]]]:
    """Start a live server with tokens for alice and bob (new ones unless ``tokens`` is given); yields (server,
    tokens) and stops it afterwards. State goes to ``tmp_path / "state"``."""
    if tokens is None:
        tokens = write_tokens(tmp_path / "tokens")
    else:
        (tmp_path / "tokens").write_text("".join(f"{name}:{token}\n" for name, token in tokens.items()))
        (tmp_path / "tokens").chmod(0o600)  # a token file others can read is refused
    config = ServerConfig(
        token_file=tmp_path / "tokens", state_dir=tmp_path / "state", limits=limits or Limits(), **config_fields
    )
    server = LiveServer(config, engine, tmp_path / "tokens").start()
    try:
        yield server, tokens
    finally:
        server.stop()


def read_sse(response) -> list[tuple[str, dict]]:
    """All events of an httpx streaming response, as (name, data)."""
    events, name, data = [], "message", []
    for line in response.iter_lines():
        if not line:
            if data:
                events.append((name, json.loads("\n".join(data))))
            name, data = "message", []
        elif line.startswith(":"):
            continue
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
    return events


# ---------------------------------------------------------------------------------------------------------------
# child-process server for the client's start-or-connect tests


def _serve_child(argv: list[str]) -> int:
    from MedSegReasoning.server.cli import serve

    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--token-file", type=Path, required=True)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--spawn-child", action="store_true", help="start a grandchild (to test killing the tree)")
    parser.add_argument(
        "--threshold", action="store_true", help="ThresholdSegmenter (any volume) instead of the oracle"
    )
    parser.add_argument("--replay", type=Path, help="replay file (default: write_replay's three rounds)")
    parser.add_argument("--max-sessions", type=int, default=16)
    parser.add_argument("--max-upload-mb", type=int, help="Limits.max_upload_bytes in MiB (default: the server's)")
    parser.add_argument("--max-volume-mb", type=int, help="Limits.max_volume_bytes in MiB (default: the server's)")
    parser.add_argument("--upload-budget-mb", type=int, help="ServerConfig.upload_budget_bytes in MiB")
    args = parser.parse_args(argv)
    if args.spawn_child:
        import subprocess

        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        (args.state_dir / "grandchild.pid").parent.mkdir(parents=True, exist_ok=True)
        (args.state_dir / "grandchild.pid").write_text(str(grandchild.pid))
    replay = args.replay or write_replay(args.state_dir.parent / "child-replay.jsonl")
    segmenter = ThresholdSegmenter(args.delay) if args.threshold else None
    engine = scripted_engine(replay, segmenter, delay_s=args.delay)
    config = ServerConfig(
        host=args.host,
        port=args.port,
        token_file=args.token_file,
        state_dir=args.state_dir,
        max_sessions=args.max_sessions,
        limits=Limits(
            **{
                field: mb << 20
                for field, mb in (("max_upload_bytes", args.max_upload_mb), ("max_volume_bytes", args.max_volume_mb))
                if mb is not None
            }
        ),
        **({"upload_budget_bytes": args.upload_budget_mb << 20} if args.upload_budget_mb is not None else {}),
    )
    return serve(config, engine, TokenStore.from_file(args.token_file), args.token_file)


if __name__ == "__main__":
    sys.exit(_serve_child(sys.argv[1:]))


def zip_bytes(members: dict[str, bytes]) -> bytes:
    """A zip archive with these members, in memory: hand-made session archives, good and hostile."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------------------
# refine: the engine's own answer, to compare the server's with (test_server_refine, test_slicer_refine)

HALF_A = [12, 12, 22, 32]  # the left half of structure A: round 1 makes E1 from it, on slice 1 only


def engine_refine(server, sid: str, tmp_path: Path, correction: Correction, owner: str = "alice") -> np.ndarray:
    """The engine's own answer: ``refine_entity`` on a copy of the server's saved session, on the volume the server
    holds, its default window and the same scripted segmenter. The server's copy is left untouched."""
    import shutil

    from MedSegReasoning.dialogue import load_session
    from MedSegReasoning.dialogue.refine import refine_entity
    from MedSegReasoning.volume.windowing import default_window

    state = server.runtime.store.get(sid, owner)
    copy = tmp_path / f"engine-{len(list(tmp_path.glob('engine-*')))}"
    shutil.copytree(state.folder, copy)
    session = load_session(copy, terminology=offline_terminology())
    a, b = truth_masks(state.volume.shape)
    window = default_window(state.volume)
    refine_entity(session, state.volume, scripted_segmenter(state.volume.array, a | b), window, "E1", correction)
    return session.dense_mask("E1")
