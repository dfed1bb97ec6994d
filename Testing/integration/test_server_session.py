"""A whole session over real HTTP (uvicorn on loopback): replay reasoner, real LiteMedSAM, events in order, entity
edits, undo, the saved folder, the OpenAPI document, and two clients at once."""

from __future__ import annotations

import json
import threading

import httpx
import numpy as np
import pytest
from support.server import (
    BOX_A,
    BOX_B,
    live_server,
    offline_terminology,
    read_sse,
    scripted_engine,
    small_volume,
    truth_masks,
    volume_meta,
    write_replay,
)

from MedSegReasoning.dialogue import load_session
from MedSegReasoning.reasoning import create_reasoner
from MedSegReasoning.server.engine import Engine
from MedSegReasoning.wire.client import MedSegClient
from MedSegReasoning.wire.masks import CompactMask


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


@pytest.mark.slow
def test_full_session_with_real_litemedsam(tmp_path, litemedsam):
    replay = write_replay(tmp_path / "answers.jsonl")
    engine = Engine(
        segmenter=litemedsam,
        reasoner_factory=lambda: create_reasoner(f"replay:{replay}"),
        terminology=offline_terminology(),
    )
    volume = small_volume()
    truth_a, truth_b = truth_masks()
    with live_server(tmp_path, engine) as (server, tokens):
        client = MedSegClient(server.url, tokens["alice"])
        sid = client.create_session()
        g = volume.geometry
        put = client.upload_volume(sid, volume.array, g.origin, g.spacing, g.direction, "CT")
        assert put["content_sha256"] == volume.content_hash() and put["shape"] == [3, 64, 64]

        # round 1: the reasoner (replayed) picks slice 1 and boxes structure A; LiteMedSAM segments, propagates
        streamed: list[str] = []
        r1 = client.ask(sid, "Segment the bright mass.", on_reasoning=streamed.append)
        names = [name for name, _ in r1.events]
        assert names[0] == "progress" and r1.events[0][1]["stage"] == "started"
        assert names[-1] == "done" and names.count("done") == 1 and "error" not in names
        assert names.index("reasoning") < names.index("target") < names.index("done")
        fractions = [d["fraction"] for n, d in r1.events if n == "progress"]
        assert fractions == sorted(fractions)
        assert "A bright mass in the upper left." in "".join(streamed)
        (e1,) = r1.entities
        assert (e1.id, e1.label, r1.round, r1.status) == ("E1", "mass", 1, "ok")
        mask1 = e1.mask.to_dense(volume.shape)
        assert mask1[0].any() and mask1[2].any(), "propagated to both neighbours of the key slice"
        assert _dice(mask1, truth_a) > 0.85
        assert not (mask1 & truth_b).any()

        # round 2: structure B, next to E1, key slice only (its embedding is cached from round 1)
        r2 = client.ask(sid, "Now the cyst next to E1.", propagate=False)
        (e2,) = r2.entities
        assert (e2.id, e2.label, e2.data["ref"]) == ("E2", "cyst", "E1")
        mask2 = e2.mask.to_dense(volume.shape)
        assert mask2[1].any() and not mask2[0].any() and not mask2[2].any()
        assert _dice(mask2[1], truth_b[1]) > 0.85

        # the entity endpoints agree with what the stream delivered
        listed = {e.id: e for e in client.entities(sid)}
        assert set(listed) == {"E1", "E2"} and listed["E1"].mask is None
        assert client.entity_mask(sid, "E1") == e1.mask
        # user actions: review, recolour, rename, an edited mask, then undo of round 2
        client.update_entity(sid, "E1", review="confirmed", color=[10, 20, 30], label="lesion")
        edited = mask1.copy()
        edited[1, 20:24, 20:24] = False
        after = client.replace_mask(sid, "E1", edited)
        assert after.voxels == int(edited.sum()) and after.data["edited"] and after.review == "confirmed"
        undone = client.undo(sid)
        assert undone["undone_round"] == 2 and undone["removed"] == ["E2"]
        assert [e.id for e in client.entities(sid)] == ["E1"]

        # the saved folder holds exactly the server's session
        state = server.runtime.store.get(sid, "alice")
        assert load_session(state.folder, terminology=offline_terminology()) == state.dialogue
        assert client.rounds(sid)[0]["targets"][0]["entity_id"] == "E1"


def test_events_in_order_over_raw_http(tmp_path):
    """The stream itself, read with a plain HTTP client: ids increase, the round id comes first and in a header."""
    replay = write_replay(tmp_path / "answers.jsonl")
    with live_server(tmp_path, scripted_engine(replay)) as (server, tokens):
        auth = {"Authorization": f"Bearer {tokens['alice']}"}
        with httpx.Client(base_url=server.url, headers=auth, timeout=10) as http:
            sid = http.post("/v1/sessions").json()["id"]
            volume = small_volume()
            put = http.put(
                f"/v1/sessions/{sid}/volume",
                content=volume.array.tobytes(),
                headers={"X-MedSeg-Volume": json.dumps(volume_meta(volume))},
            )
            assert put.status_code == 200, put.text
            with http.stream("POST", f"/v1/sessions/{sid}/rounds", json={"question": "Segment the mass."}) as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                round_id = response.headers["x-medseg-round-id"]
                raw = "".join(response.iter_text())
        ids = [int(line[4:]) for line in raw.splitlines() if line.startswith("id: ")]
        assert ids == list(range(1, len(ids) + 1))
        events = read_sse(httpx.Response(200, content=raw.encode()))
        assert events[0] == ("progress", {"stage": "started", "fraction": 0.0, "round": 1, "round_id": round_id})
        kinds = [name for name, _ in events]
        assert kinds[-2:] == ["target", "done"]
        target = events[-2][1]
        assert target["status"] == "accepted" and target["entity"]["id"] == "E1"
        mask = CompactMask.from_json(target["entity"]["mask"], shape=volume.shape)
        assert mask.box[0] == 0 and mask.box[3] == 2  # all three slices
        done = events[-1][1]
        assert done["status"] == "ok" and done["round"] == 1 and done["targets"][0]["entity_id"] == "E1"
        assert done["timings"]["model_calls"] >= 3


def test_openapi_documents_every_endpoint(tmp_path):
    with live_server(tmp_path, scripted_engine(None)) as (server, tokens):
        assert httpx.get(f"{server.url}/openapi.json").status_code == 401
        doc = httpx.get(f"{server.url}/openapi.json", headers={"Authorization": f"Bearer {tokens['bob']}"}).json()
    paths = doc["paths"]
    expected = {
        ("get", "/v1/health"),
        ("get", "/v1/capabilities"),
        ("post", "/v1/sessions"),
        ("delete", "/v1/sessions/{session_id}"),
        ("put", "/v1/sessions/{session_id}/volume"),
        ("post", "/v1/sessions/{session_id}/rounds"),
        ("post", "/v1/sessions/{session_id}/rounds/{round_id}/cancel"),
        ("post", "/v1/sessions/{session_id}/undo"),
        ("get", "/v1/sessions/{session_id}/entities"),
        ("put", "/v1/sessions/{session_id}/entities/{entity_id}/mask"),
        ("patch", "/v1/sessions/{session_id}/entities/{entity_id}"),
        ("delete", "/v1/sessions/{session_id}/entities/{entity_id}"),
        ("post", "/v1/sessions/{session_id}/export"),
        ("get", "/v1/sessions/{session_id}/archive"),
        ("post", "/v1/sessions/restore"),
    }
    assert expected <= {(m, p) for p, ops in paths.items() for m in ops}
    assert "HTTPBearer" in doc["components"]["securitySchemes"]
    assert "text/event-stream" in paths["/v1/sessions/{session_id}/rounds"]["post"]["responses"]["200"]["content"]
    assert "X-MedSeg-Volume" in str(paths["/v1/sessions/{session_id}/volume"]["put"])


def test_two_concurrent_sessions_are_isolated(tmp_path):
    """Alice and Bob ask at the same time on different volumes: each gets their own entities, neither sees the
    other's session, and the shared segmenter queue shows its positions."""
    replay = write_replay(tmp_path / "answers.jsonl")
    volumes = {"alice": small_volume(), "bob": small_volume()}
    volumes["bob"].array[:, :4, :4] = 7  # different content, different hash
    engine = scripted_engine(replay, delay_s=0.02, voxels=[v.array for v in volumes.values()])
    with live_server(tmp_path, engine) as (server, tokens):
        alice, bob = MedSegClient(server.url, tokens["alice"]), MedSegClient(server.url, tokens["bob"])
        sessions, results, queued = {}, {}, []
        for name, client in (("alice", alice), ("bob", bob)):
            sessions[name] = client.create_session()
            g = volumes[name].geometry
            client.upload_volume(sessions[name], volumes[name].array, g.origin, g.spacing, g.direction, "CT")

        def ask(name, client):
            def on_progress(stage, fraction, data):
                if stage == "queued":
                    queued.append((name, data["queue_position"]))

            results[name] = client.ask(sessions[name], "Segment the bright mass.", on_progress=on_progress)

        threads = [threading.Thread(target=ask, args=(n, c)) for n, c in (("alice", alice), ("bob", bob))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert {n: [e.id for e in r.entities] for n, r in results.items()} == {"alice": ["E1"], "bob": ["E1"]}
        assert results["alice"].entities[0].mask == results["bob"].entities[0].mask  # same structure, own sessions
        assert queued and all(position >= 1 for _, position in queued)
        assert [s["id"] for s in alice.sessions()] == [sessions["alice"]]
        with pytest.raises(Exception) as info:
            bob.entities(sessions["alice"])
        assert getattr(info.value, "status", None) == 404
        # a box for structure B in Bob's session does not touch Alice's
        bob.ask(sessions["bob"], "and this", prompts=[{"slice": 1, "box": BOX_B, "label": "cyst"}], propagate=False)
        assert [e.id for e in alice.entities(sessions["alice"])] == ["E1"]
        assert [e.id for e in bob.entities(sessions["bob"])] == ["E1", "E2"]
        assert BOX_A != BOX_B
