"""Issue #15 item 11: a damaged or invalid session archive is refused with 400 (never 500, never 201), leaves no
session behind, and the refusal never names the server's state folder."""

from __future__ import annotations

import io
import json
import math
import zipfile

import numpy as np
import pytest
from support.server import live_server, scripted_engine, small_volume, write_replay

from MedSegReasoning.wire.client import MedSegClient
from MedSegReasoning.wire.errors import ClientError
from MedSegReasoning.wire.session_archive import check_session_record


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One live server, an archive with one round (so one mask) made on it, and alice's client."""
    tmp = tmp_path_factory.mktemp("archive-damage")
    with live_server(tmp, scripted_engine(write_replay(tmp / "answers.jsonl", rounds=1))) as (server, tokens):
        client = MedSegClient(server.url, tokens["alice"])
        sid = client.create_session()
        volume = small_volume()
        g = volume.geometry
        client.upload_volume(sid, volume.array, g.origin, g.spacing, g.direction, "CT")
        client.ask(sid, "Segment the bright mass.")
        archive = client.session_archive(sid)
        client.delete_session(sid)
        yield server, client, archive


def _members(archive: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(archive)) as z:
        return {name: z.read(name) for name in z.namelist()}


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def _with_doc(archive: bytes, change) -> bytes:
    members = _members(archive)
    doc = json.loads(members["session.json"])
    change(doc)
    members["session.json"] = json.dumps(doc).encode()
    return _zip(members)


def _with_mask(archive: bytes, content: bytes) -> bytes:
    members = _members(archive)
    name = next(n for n in members if n.startswith("masks/"))
    members[name] = content
    return _zip(members)


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _crc_broken(archive: bytes) -> bytes:
    """The archive with one byte of a stored (uncompressed) mask flipped: its CRC no longer matches."""
    members = _members(archive)
    name = next(n for n in members if n.startswith("masks/"))
    data = bytearray(_zip_stored(members))
    at = bytes(data).index(members[name][:64]) + 40
    data[at] ^= 0xFF
    return bytes(data)


def _zip_stored(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def _renamed_mask(archive: bytes) -> bytes:
    members = _members(archive)
    name = next(n for n in members if n.startswith("masks/"))
    members[name + "\n"] = members.pop(name)
    return _zip(members)


DAMAGE = {
    "session.json without entities": lambda a: _with_doc(a, lambda d: d.pop("entities")),
    "session.json without volume": lambda a: _with_doc(a, lambda d: d.pop("volume")),
    "entities of the wrong type": lambda a: _with_doc(a, lambda d: d.update(entities="abc")),
    "an entity without id": lambda a: _with_doc(a, lambda d: d["entities"][0].pop("id")),
    "next_entity_number of the wrong type": lambda a: _with_doc(a, lambda d: d.update(next_entity_number=[1])),
    "session.json not UTF-8": lambda a: _zip({**_members(a), "session.json": b'{"format": "\xff\xfe"}'}),
    "a mask that is not an npz": lambda a: _with_mask(a, b"certainly not a zip"),
    "a mask without its arrays": lambda a: _with_mask(a, _npz(box=np.zeros(6, dtype=np.int64))),
    "a mask holding an object array": lambda a: _with_mask(
        a, _npz(box=np.array([None, 1], dtype=object), bits=np.zeros(3, np.uint8))
    ),
    "a member whose CRC fails": _crc_broken,
    "shape_kji with -1": lambda a: _with_doc(a, lambda d: d["volume"].update(shape_kji=[-1, 64, 64])),
    "shape_kji with 0": lambda a: _with_doc(a, lambda d: d["volume"].update(shape_kji=[0, 64, 64])),
    "a NaN spacing": lambda a: _with_doc(a, lambda d: d["volume"].update(spacing_mm=[math.nan, 1.5, 3.0])),
    "a zero spacing": lambda a: _with_doc(a, lambda d: d["volume"].update(spacing_mm=[0, 1.5, 3.0])),
    "a mask member named with a final newline": _renamed_mask,
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_a_damaged_archive_is_refused_with_400_and_leaves_nothing(served, case):
    server, client, archive = served
    damaged = DAMAGE[case](archive)
    with pytest.raises(ClientError) as refused:
        client.restore_session(damaged)
    assert refused.value.status == 400, (case, refused.value.status, str(refused.value))
    assert refused.value.code == "archive_invalid"
    assert str(server.config.resolved_state_dir()) not in str(refused.value)
    assert client.sessions() == []
    assert not any(server.runtime.store.root.iterdir()), "a refused archive leaves no folder behind"


def test_the_intact_archive_still_restores(served):
    _, client, archive = served
    sid = client.restore_session(archive)
    assert client.session(sid)["entities"] == 1
    client.delete_session(sid)


def test_the_version_refusal_names_no_server_path(served):
    server, client, archive = served
    with pytest.raises(ClientError) as refused:
        client.restore_session(_with_doc(archive, lambda d: d.update(version=99)))
    message = str(refused.value)
    assert refused.value.status == 400 and "version 99" in message
    assert str(server.config.resolved_state_dir()) not in message and "/sessions/" not in message.split("GET")[0]


def test_the_record_check_accepts_what_the_server_writes(served):
    _, _, archive = served
    check_session_record(_members(archive)["session.json"])
