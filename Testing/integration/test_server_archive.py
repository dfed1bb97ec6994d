"""A conversation outlives its server session: the archive a client keeps restores it, with its entity ids, masks,
review states, edits and undo history, on a server that never saw it; hostile archives are refused."""

from __future__ import annotations

import numpy as np
import pytest
from support.server import live_server, scripted_engine, small_volume, write_replay, zip_bytes

from MedSegReasoning.wire.client import MedSegClient
from MedSegReasoning.wire.errors import ClientError


def _upload(client: MedSegClient, sid: str, volume) -> dict:
    g = volume.geometry
    return client.upload_volume(sid, volume.array, g.origin, g.spacing, g.direction, "CT")


def test_a_restored_conversation_continues_where_it_stopped(tmp_path):
    replay = write_replay(tmp_path / "answers.jsonl", rounds=3)
    volume = small_volume()
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
    with live_server(tmp_path / "first", scripted_engine(replay)) as (server, tokens):
        client = MedSegClient(server.url, tokens["alice"])
        sid = client.create_session()
        _upload(client, sid, volume)
        client.ask(sid, "Segment the bright mass.")
        client.ask(sid, "Now the cyst next to E1.")
        client.update_entity(sid, "E1", review="confirmed", label="lesion")
        edited = client.entity_mask(sid, "E2").to_dense(volume.shape)
        edited[1, :, :40] = False
        client.replace_mask(sid, "E2", edited)
        before = {e.id: e for e in client.entities(sid, masks=True)}
        archive = client.session_archive(sid)
        rounds_before = client.rounds(sid)

    # another server (its own empty state folder): the old session does not exist there
    with live_server(tmp_path / "second", scripted_engine(replay), tokens=tokens) as (server, _):
        client = MedSegClient(server.url, tokens["alice"])
        with pytest.raises(ClientError):
            client.session(sid)
        new_sid = client.restore_session(archive)
        assert new_sid != sid
        assert client.session(new_sid)["entities"] == 2
        with pytest.raises(ClientError) as refused:
            client.ask(new_sid, "Any question before the volume is back.")
        assert "volume" in str(refused.value)
        _upload(client, new_sid, volume)

        after = {e.id: e for e in client.entities(new_sid, masks=True)}
        assert set(after) == {"E1", "E2"}
        for eid in after:
            assert after[eid].mask == before[eid].mask
            assert (after[eid].label, after[eid].review) == (before[eid].label, before[eid].review)
        assert after["E2"].data["edited"] and not np.array_equal(after["E2"].mask.to_dense(volume.shape)[1], 0)
        assert [(r["round"], r["question"]) for r in client.rounds(new_sid)] == [
            (r["round"], r["question"]) for r in rounds_before
        ]

        # the next round numbers on (E3, round 3), and undo still reaches back into the restored history
        r3 = client.ask(new_sid, "Segment one more bright structure.")
        assert r3.round == 3 and [e.id for e in r3.entities] == ["E3"]
        assert client.undo(new_sid)["removed"] == ["E3"]
        undone = client.undo(new_sid)
        assert undone["undone_round"] == 2 and undone["removed"] == ["E2"]

        # only the volume the conversation was held on is accepted
        other = small_volume()
        other.array[:] = other.array + 7
        restored_again = client.restore_session(archive)
        with pytest.raises(ClientError) as wrong:
            _upload(client, restored_again, other)
        assert "another volume" in str(wrong.value)

        # another token cannot see a restored session
        bob = MedSegClient(server.url, tokens["bob"])
        with pytest.raises(ClientError):
            bob.session(new_sid)


@pytest.mark.parametrize(
    ("archive", "words"),
    [
        (b"not a zip at all", "not a zip"),
        (zip_bytes({"masks/x.npz": b""}), "no session.json"),
        (zip_bytes({"session.json": b"{}", "../escape.txt": b"x"}), "not part of a saved session"),
        (zip_bytes({"session.json": b"{}", "masks/sub/evil.npz": b"x"}), "not part of a saved session"),
        (zip_bytes({"session.json": b"{ broken"}), "not valid JSON"),
        (zip_bytes({"session.json": b'{"format": "something else"}'}), "is not a medseg-reasoning/session"),
    ],
)
def test_hostile_or_broken_archives_are_refused_and_leave_nothing(tmp_path, archive, words):
    with live_server(tmp_path, scripted_engine(None)) as (server, tokens):
        client = MedSegClient(server.url, tokens["alice"])
        with pytest.raises(ClientError) as refused:
            client.restore_session(archive)
        assert words in str(refused.value)
        assert client.sessions() == []
        sessions_dir = server.runtime.store.root
        assert not any(sessions_dir.iterdir()), "a refused archive leaves no folder behind"
    assert not (tmp_path / "escape.txt").exists()
