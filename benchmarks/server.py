"""Benchmark: what the HTTP server adds on top of the engine, measured on loopback with a real server process.

1. **HTTP overhead per round** (goal <= 30 ms): the same rounds (replayed reasoner answers, a scripted segmenter)
   run in-process (``dialogue.ask.ask_round``, the round the server runs) and through ``MedSegClient.ask`` against
   ``serve`` in a child process, in the same run. Model time is measured on both sides and subtracted, so the
   difference is HTTP, JSON, the SSE stream, the queues and the client's mask decoding.
2. **Upload of a 512x512x300 int16 volume** (goal <= 2 s): raw, then deflate level 1 (to show when compressing
   wins: not on loopback), then the re-send of the same volume (content hash known: nothing transferred).
3. **Mask return for a 200-slice entity** (goal <= 0.2 s): ``GET .../entities/{id}/mask`` decoded to a
   ``CompactMask`` and to the dense grid, for a liver-sized mask spanning 200 slices of that volume.
4. **8 concurrent clients** with the replay reasoner and a segmenter that takes 5 ms per call: errors, round
   latency p50/p99, and each client's share of the rounds completed while all eight were busy (fair: 12.5 %).

Writes benchmarks/_output/server.json (or ``--json PATH``); ``--quick`` runs 8 rounds and 4 rounds per client.

    .venv/bin/python benchmarks/server.py [--quick] [--json PATH]
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "Testing"))

from support.server import (  # noqa: E402
    ThresholdSegmenter,
    locate,
    offline_terminology,
    pick,
    write_tokens,
)

from MedSegReasoning.dialogue import Session  # noqa: E402
from MedSegReasoning.dialogue.ask import ask_round  # noqa: E402
from MedSegReasoning.reasoning import create_reasoner  # noqa: E402
from MedSegReasoning.volume.core import Geometry, Volume  # noqa: E402
from MedSegReasoning.volume.windowing import default_window  # noqa: E402
from MedSegReasoning.wire.client import MedSegClient  # noqa: E402
from MedSegReasoning.wire.masks import CompactMask  # noqa: E402
from MedSegReasoning.wire.process import LocalServer  # noqa: E402

OUT = ROOT / "benchmarks" / "_output" / "server.json"
FIXTURES = ROOT / "Testing" / "support" / "server.py"
ROUNDS = 30
CLIENTS = 8
ROUNDS_PER_CLIENT = 12
BOX = [90, 90, 166, 166]  # around the sphere on its middle slice


def sphere_volume(shape=(40, 256, 256)) -> Volume:
    """Body at 40 HU, a bright sphere (radius 35 px, spanning ~20 slices) in the middle."""
    nk, nj, ni = shape
    k, j, i = np.ogrid[:nk, :nj, :ni]
    array = np.full(shape, 40, dtype=np.int16)
    array[((k - nk // 2) * 3.5) ** 2 + (j - 128) ** 2 + (i - 128) ** 2 <= 35**2] = 250
    return Volume(array, Geometry.from_arrays((-128.0, -128.0, 0.0), (1.0, 1.0, 3.5), np.eye(3)), modality="CT")


def replay_file(path: Path, rounds: int, k: int) -> Path:
    lines = []
    for n in range(1, rounds + 1):
        lines.append({"round": n, "step": "pick_slice", "raw": pick(k, "mass")})
        lines.append({"round": n, "step": "locate", "raw": locate(k, BOX, "mass")})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def upload(client: MedSegClient, sid: str, volume: Volume, **kw) -> dict:
    g = volume.geometry
    return client.upload_volume(sid, volume.array, g.origin, g.spacing, g.direction, "CT", **kw)


# ---------------------------------------------------------------------------------------------------------------
class _Timed:
    """Wraps a segmenter or reasoner and sums the time spent in it (the model time to subtract)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.identity = inner.identity
        self.stats = getattr(inner, "stats", None)
        self.seconds = 0.0

    def _timed(self, fn, *args, **kw):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kw)
        finally:
            self.seconds += time.perf_counter() - t0

    def set_image(self, image, cache_key=None):
        return self._timed(self.inner.set_image, image, cache_key)

    def predict(self, prompt):
        return self._timed(self.inner.predict, prompt)

    def reason(self, *args, **kw):
        return self._timed(self.inner.reason, *args, **kw)


class InProcess:
    """The engine called directly, round after round on one session: what the server runs per round."""

    def __init__(self, volume: Volume, replay: Path, folder: Path) -> None:
        self.volume = volume
        self.segmenter = _Timed(ThresholdSegmenter())
        self.reasoner = _Timed(create_reasoner(f"replay:{replay}"))
        self.window = default_window(volume)
        self.session = Session.for_volume(volume, folder=folder, terminology=offline_terminology())

    def round(self) -> float:
        """Wall time minus model time of one round."""
        self.segmenter.seconds = self.reasoner.seconds = 0.0
        t0 = time.perf_counter()
        # the round every front end runs (the server's included): earlier entities outlined on the reasoner's views
        ask_round(
            self.session, self.volume, self.segmenter, self.window, "Segment the bright mass.", reasoner=self.reasoner
        )
        return time.perf_counter() - t0 - self.segmenter.seconds - self.reasoner.seconds


def http_round(client: MedSegClient, sid: str) -> tuple[float, float]:
    """Wall time minus the server's model time of one round through the client (SSE read, masks decoded)."""
    t0 = time.perf_counter()
    result = client.ask(sid, "Segment the bright mass.")
    wall = time.perf_counter() - t0
    assert result.entities and result.entities[0].mask is not None
    return wall - result.timings["model_s"], result.timings["model_s"]


def concurrent_clients(client_factory, volume: Volume) -> dict:
    """CLIENTS threads, each its own session, ROUNDS_PER_CLIENT rounds back to back."""
    latencies: dict[int, list[tuple[float, float]]] = {n: [] for n in range(CLIENTS)}
    errors: list[str] = []
    barrier = threading.Barrier(CLIENTS)

    def work(n: int) -> None:
        client = client_factory()
        try:
            sid = client.create_session()
            upload(client, sid, volume)
            barrier.wait()
            for _ in range(ROUNDS_PER_CLIENT):
                t0 = time.perf_counter()
                client.ask(sid, "Segment the bright mass.")
                latencies[n].append((t0, time.perf_counter()))
            client.delete_session(sid)
        except Exception as exc:  # counted, reported
            errors.append(f"client {n}: {type(exc).__name__}: {exc}")
            barrier.abort()

    threads = [threading.Thread(target=work, args=(n,)) for n in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    all_lat = sorted(end - start for v in latencies.values() for start, end in v)
    start = min(s for v in latencies.values() for s, _ in v)
    first_done = min(v[-1][1] for v in latencies.values() if v)
    in_window = {n: sum(1 for _, end in v if end <= first_done) for n, v in latencies.items()}
    total = sum(in_window.values()) or 1
    return {
        "clients": CLIENTS,
        "rounds_per_client": ROUNDS_PER_CLIENT,
        "errors": errors,
        "rounds_completed": sum(len(v) for v in latencies.values()),
        "latency_p50_s": round(float(np.percentile(all_lat, 50)), 4),
        "latency_p99_s": round(float(np.percentile(all_lat, 99)), 4),
        "latency_max_s": round(all_lat[-1], 4),
        "window_s": round(first_done - start, 3),
        "share_while_all_busy": {str(n): round(c / total, 4) for n, c in in_window.items()},
        "mean_latency_per_client_s": {
            str(n): round(statistics.mean(e - s for s, e in v), 4) for n, v in latencies.items() if v
        },
    }


def main() -> None:
    import argparse

    global ROUNDS, ROUNDS_PER_CLIENT
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=OUT)
    parser.add_argument("--quick", action="store_true", help="8 rounds, 4 rounds per client")
    args = parser.parse_args()
    if args.quick:
        ROUNDS, ROUNDS_PER_CLIENT = 8, 4
    results: dict = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count()}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        volume = sphere_volume()
        key = volume.shape[0] // 2
        replay = replay_file(tmp / "replay.jsonl", max(ROUNDS, ROUNDS_PER_CLIENT) + 4, key)
        write_tokens(tmp / "tokens", ("bench",))

        def start_server(delay: float, state: str) -> LocalServer:
            server = LocalServer(
                [sys.executable, str(FIXTURES)],
                args=[
                    "--state-dir",
                    str(tmp / state),
                    "--token-file",
                    str(tmp / "tokens"),
                    "--threshold",
                    "--delay",
                    str(delay),
                    "--replay",
                    str(replay),
                    "--max-sessions",
                    "32",
                ],
                cwd=ROOT,
            )
            server.start()
            return server

        # 1. overhead per round: alternating, so that load from elsewhere hits both sides alike --------------
        server = start_server(0.0, "state-a")
        try:
            client = server.client
            sid = client.create_session()
            upload(client, sid, volume)
            engine = InProcess(volume, replay, tmp / "direct")
            for _ in range(2):  # warm-up: imports, caches
                engine.round(), http_round(client, sid)
            direct, over_http, model = [], [], []
            for _ in range(ROUNDS):
                direct.append(engine.round())
                http_s, model_s = http_round(client, sid)
                over_http.append(http_s)
                model.append(model_s)
            client.delete_session(sid)

            # 2. upload ----------------------------------------------------------------------------------------
            big = Volume(
                np.random.default_rng(0).normal(40, 300, (300, 512, 512)).astype(np.int16),
                Geometry.from_arrays((-200.0, -200.0, 0.0), (0.78, 0.78, 1.0), np.eye(3)),
                modality="CT",
            )
            big.array[:, :60, :] = -1000  # air above the body, as in a real CT
            uploads = {}
            for label, compress in (("raw", False), ("deflate-1", True)):
                sid = client.create_session()
                big_copy = big.array.copy()
                big_copy[0, 0, 0] = len(uploads)  # a new content hash: a real transfer each time
                t0 = time.perf_counter()
                g = big.geometry
                client.upload_volume(sid, big_copy, g.origin, g.spacing, g.direction, "CT", compress=compress)
                uploads[label] = round(time.perf_counter() - t0, 3)
                if label == "raw":
                    t0 = time.perf_counter()
                    again = client.create_session()
                    client.upload_volume(again, big_copy, g.origin, g.spacing, g.direction, "CT")
                    uploads["resend_same_volume_s"] = round(time.perf_counter() - t0, 3)
                    client.delete_session(again)
                    raw_sid = sid
                else:
                    client.delete_session(sid)
            t0 = time.perf_counter()
            ratio = len(zlib.compress(memoryview(big.array).cast("B"), 1)) / big.array.nbytes
            uploads["deflate_1_ratio"] = round(ratio, 3)
            uploads["deflate_1_compress_s"] = round(time.perf_counter() - t0, 3)
            uploads["bytes"] = big.array.nbytes

            # 3. mask return -------------------------------------------------------------------------------------
            result = client.ask(
                raw_sid, prompts=[{"slice": 150, "box": [100, 100, 400, 400], "label": "liver"}], propagate=False
            )
            eid = result.entities[0].id
            k, j, i = np.ogrid[:300, :512, :512]
            liver = ((k - 150) / 100.0) ** 2 + ((j - 260) / 150.0) ** 2 + ((i - 240) / 160.0) ** 2 <= 1
            compact = CompactMask.from_dense(liver)
            t0 = time.perf_counter()
            client.replace_mask(raw_sid, eid, compact)
            put_s = time.perf_counter() - t0
            times, dense_times = [], []
            for _ in range(5):
                t0 = time.perf_counter()
                got = client.entity_mask(raw_sid, eid)
                times.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                dense = got.to_dense(big.shape)
                dense_times.append(time.perf_counter() - t0)
            assert got == compact and dense.sum() == liver.sum()
            mask_return = {
                "slices": compact.crop_shape[0],
                "box_voxels": int(np.prod(compact.crop_shape)),
                "bits_bytes": len(compact.bits),
                "get_and_decode_s_median": round(statistics.median(times), 4),
                "to_dense_s_median": round(statistics.median(dense_times), 4),
                "put_edit_s": round(put_s, 4),
            }
        finally:
            server.stop()

        # 4. concurrency --------------------------------------------------------------------------------------
        server = start_server(0.005, "state-b")
        try:
            token = server.client.token
            url = server.client.url
            concurrency = concurrent_clients(lambda: MedSegClient(url, token), sphere_volume())
        finally:
            server.stop()

    overhead = statistics.median(over_http) - statistics.median(direct)
    results["overhead_per_round"] = {
        "rounds": ROUNDS,
        "in_process_s_median_excl_model": round(statistics.median(direct), 4),
        "http_s_median_excl_model": round(statistics.median(over_http), 4),
        "http_model_s_median": round(statistics.median(model), 4),
        "overhead_ms_median": round(overhead * 1000, 1),
        "goal_ms": 30,
    }
    results["upload_512x512x300_int16_s"] = {**uploads, "goal_s": 2.0}
    results["mask_return_200_slices"] = {**mask_return, "goal_s": 0.2}
    results["concurrent_clients"] = concurrency
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
