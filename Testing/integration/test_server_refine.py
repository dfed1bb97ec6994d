"""Refining an entity over HTTP (``POST …/entities/{id}/refine``): the server's result is, voxel for voxel, what the
engine's ``refine_entity`` gives on a copy of the same session; it streams like a round, is undone like one, and a
refused or failed refine leaves the session (in memory and on disk) as it was."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
from support.server import (
    BOX_A,
    BOX_B,
    HALF_A,
    engine_refine,
    live_server,
    offline_terminology,
    scripted_engine,
    small_volume,
    truth_masks,
)

from MedSegReasoning.correction import Correction
from MedSegReasoning.dialogue import load_session
from MedSegReasoning.pipeline import VoxelPrompt
from MedSegReasoning.wire.client import MedSegClient
from MedSegReasoning.wire.errors import NotFound, RequestRejected, RoundFailed


def _start(client: MedSegClient) -> str:
    """A session on the small volume with E1 = the left half of A on slice 1 (a prompt round, no reasoner)."""
    volume = small_volume()
    sid = client.create_session()
    g = volume.geometry
    client.upload_volume(sid, volume.array, g.origin, g.spacing, g.direction, "CT")
    result = client.ask(sid, "mass", prompts=[{"slice": 1, "box": HALF_A, "label": "mass"}], propagate=False)
    assert [e.id for e in result.entities] == ["E1"]
    return sid


def _server_state(server, sid: str):
    state = server.runtime.store.get(sid, "alice")
    assert load_session(state.folder, terminology=offline_terminology()) == state.dialogue, "saved == in memory"
    return state.dialogue


def test_refine_adds_and_erases_exactly_as_the_engine_and_undo_restores(tmp_path: Path) -> None:
    volume = small_volume()
    truth_a, _ = truth_masks()
    with live_server(tmp_path, scripted_engine(None)) as (server, tokens):
        client = MedSegClient(server.url, tokens["alice"])
        sid = _start(client)
        before = client.entity(sid, "E1", mask=True)
        mask0 = before.mask.to_dense(volume.shape)
        assert mask0[1].any() and not mask0[0].any() and not mask0[2].any()

        # add: a box on slice 0 around A; the engine on a copy of the session says what must come back
        expected = engine_refine(server, sid, tmp_path, Correction(VoxelPrompt(k=0, box=tuple(BOX_A))))
        progress: list[str] = []
        result = client.refine(sid, "e1", box=[*BOX_A, 0], on_progress=lambda stage, f, d: progress.append(stage))
        names = [name for name, _ in result.events]
        assert names[0] == "progress" and names[-2:] == ["target", "done"] and "error" not in names
        assert "segmenting" in progress
        (refined,) = result.entities
        got = refined.mask.to_dense(volume.shape)
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(got[0], truth_a[0])  # the whole of A on the corrected slice
        np.testing.assert_array_equal(got[1], mask0[1])  # the key slice is never overwritten
        assert (refined.id, refined.label, refined.name) == (before.id, before.label, before.name)
        assert refined.data["terminology"] == before.data["terminology"]
        assert refined.data["revision"] == before.data["revision"] + 1
        assert result.round == 2 and result.refine is not None
        assert result.refine["entity_id"] == "E1" and result.refine["kind"] == "add"
        assert result.refine["changed_slices"] == [0]
        np.testing.assert_array_equal(client.entity_mask(sid, "E1").to_dense(volume.shape), expected)
        assert client.rounds(sid)[-1]["question"].startswith("refine E1: add from box")
        assert [e.id for e in _server_state(server, sid).entities.values()] == ["E1"]

        # erase: a box over part of slice 0, same comparison
        erase_box = (12, 12, 22, 26)  # i 12..22, j 12..26: not square, so a swapped u/v shows
        expected_erase = engine_refine(server, sid, tmp_path, Correction(VoxelPrompt(k=0, box=erase_box), erase=True))
        erased = client.refine(sid, "E1", erase=[*erase_box, 0]).entities[0].mask.to_dense(volume.shape)
        np.testing.assert_array_equal(erased, expected_erase)
        assert not erased[0, 12:27, 12:23].any() and erased[0, 12:27, 23:].any()

        # undo, twice: each refine round gives back the mask it replaced
        undone = client.undo(sid)
        assert undone["undone_round"] == 3 and undone["restored"] == ["E1"] and undone["removed"] == []
        np.testing.assert_array_equal(client.entity_mask(sid, "E1").to_dense(volume.shape), expected)
        client.undo(sid)
        back = client.entity(sid, "E1", mask=True)
        np.testing.assert_array_equal(back.mask.to_dense(volume.shape), mask0)
        assert back.data["revision"] == before.data["revision"]
        _server_state(server, sid)


def test_refine_on_a_coronal_view_matches_the_engine(tmp_path: Path) -> None:
    """``view`` puts the box on its plane: an erase on coronal plane j=22, in (i, k), as the engine does it."""
    volume = small_volume()
    with live_server(tmp_path, scripted_engine(None)) as (server, tokens):
        client = MedSegClient(server.url, tokens["alice"])
        sid = _start(client)
        before = client.entity_mask(sid, "E1").to_dense(volume.shape)
        box = (12, 0, 18, 2)  # i 12..18, k 0..2 on the coronal plane j = 22
        correction = Correction(VoxelPrompt(k=22, box=box, orientation="coronal"), erase=True)
        expected = engine_refine(server, sid, tmp_path, correction)
        result = client.refine(sid, "E1", erase=[*box, 22], view={"orientation": "coronal", "slice": 22})
        got = result.entities[0].mask.to_dense(volume.shape)
        np.testing.assert_array_equal(got, expected)
        assert not got[1, 22, 13:19].any() and before[1, 22, 13:19].all() and got.sum() < before.sum()
        assert result.refine["orientation"] == "coronal" and result.refine["slice"] == 22


def test_refused_and_failed_refines_leave_the_session_as_it_was(tmp_path: Path) -> None:
    volume = small_volume()
    with live_server(tmp_path, scripted_engine(None)) as (server, tokens):
        client = MedSegClient(server.url, tokens["alice"])
        sid = _start(client)
        mask0 = client.entity_mask(sid, "E1").to_dense(volume.shape)
        auth = {"Authorization": f"Bearer {tokens['alice']}"}
        with httpx.Client(base_url=server.url, headers=auth, timeout=10) as http:

            def post(path: str, body: dict) -> httpx.Response:
                return http.post(path, json=body)

            ok_body = {"box": [*BOX_A, 0]}
            unknown_session = post("/v1/sessions/00000000-0000-4000-8000-000000000000/entities/E1/refine", ok_body)
            assert unknown_session.status_code == 404
            assert unknown_session.json()["error"]["code"] == "session_not_found"
            base = f"/v1/sessions/{sid}/entities"
            unknown_entity = post(f"{base}/E9/refine", ok_body)
            assert unknown_entity.status_code == 404
            error = unknown_entity.json()["error"]
            assert error["code"] == "entity_not_found" and "E9" in error["message"] and "E1" in error["message"]

            malformed = post(f"{base}/E1/refine", {"box": BOX_A})  # four values: the slice is missing
            assert malformed.status_code == 422 and malformed.json()["error"]["code"] == "invalid_body"
            assert "box" in malformed.json()["error"]["message"]
            assert post(f"{base}/E1/refine", {"box": [*BOX_A, 0], "colour": 1}).status_code == 422

            for body, words in (
                ({}, "exactly one of box"),
                ({"box": [*BOX_A, 0], "erase": [*BOX_A, 0]}, "exactly one of box"),
                ({"box": [*BOX_A, 0], "points": [[20, 20, 1]]}, "on the box's slice"),
                ({"box": [*BOX_A, 0], "points": [[20, 20, 0, 2]]}, "1 (inside) or 0 (outside)"),
                ({"box": [*BOX_A, 0], "view": {"orientation": "coronal", "slice": 5}}, "view's slice"),
            ):
                answer = post(f"{base}/E1/refine", body)
                assert answer.status_code == 400, (body, answer.text)
                assert (
                    answer.json()["error"]["code"] == "invalid_correction"
                    and words in answer.json()["error"]["message"]
                )
            for body, words in (
                ({"box": [0, 0, 70, 70, 1]}, "outside"),
                ({"box": [*BOX_A, 3]}, "does not exist"),
                ({"box": [*BOX_A, 1], "window": "no-such-window"}, "no-such-window"),
            ):
                answer = post(f"{base}/E1/refine", body)
                assert answer.status_code == 400, (body, answer.text)
                assert answer.json()["error"]["code"] == "invalid_input"
                assert words in answer.json()["error"]["message"], answer.text

        with pytest.raises(NotFound) as info:
            client.refine(sid, "E7", box=[*BOX_A, 0])
        assert info.value.code == "entity_not_found"
        with pytest.raises(RequestRejected):
            client.refine(sid, "E1", box=[*BOX_A, 0], erase=[*BOX_A, 0])

        # accepted, then failing on the round's thread: an error event (400) and done "failed"; nothing kept
        for kwargs, words in (
            ({"erase": [*BOX_B, 1]}, "holds none of the mask"),
            ({"box": [0, 0, 5, 5, 1]}, "found nothing"),
        ):
            with pytest.raises(RoundFailed) as failed:
                client.refine(sid, "E1", **kwargs)
            assert failed.value.status == 400 and failed.value.code == "invalid_input"
            assert words in str(failed.value)

        dialogue = _server_state(server, sid)
        assert len(dialogue.rounds) == 1 and list(dialogue.entities) == ["E1"]
        np.testing.assert_array_equal(client.entity_mask(sid, "E1").to_dense(volume.shape), mask0)
        assert client.undo(sid)["undone_round"] == 1, "the failed refines left no round behind"


def test_openapi_documents_the_refine_endpoint(tmp_path: Path) -> None:
    with live_server(tmp_path, scripted_engine(None)) as (server, tokens):
        doc = httpx.get(f"{server.url}/openapi.json", headers={"Authorization": f"Bearer {tokens['bob']}"}).json()
    operation = doc["paths"]["/v1/sessions/{session_id}/entities/{entity_id}/refine"]["post"]
    assert "text/event-stream" in operation["responses"]["200"]["content"]
    assert {"box", "erase", "points", "view", "window"} <= set(doc["components"]["schemas"]["RefineIn"]["properties"])
