"""The chat panel's backend link against a real server on loopback: replay reasoner, real LiteMedSAM, real CT.

The volume is three slices (17-19) of the shared abdominal CT with its real geometry, so a round propagates
through real anatomy in a few seconds. The replay file answers in the pixels of the rendered views, which show
an axial slice 1:1 (pixel = voxel i, j); boxes come from the reference labels.

The server, the answers and the volume are shared with ``test_slicer_chat_panel.py``: ``support.live_backend`` and
the ``ct3`` fixture (``Testing/slicer/conftest.py``).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from support.live_backend import K, box_of, saved_session, segmenter_held, start_server, write_answers

from MedSegReasoning.slicer.backend_link import BackendLink, chat_backend, round_request
from MedSegReasoning.slicer.backend_link import chat_backend as connect_backend  # was chat_panel.connect_backend
from MedSegReasoning.wire.client import MedSegClient
from MedSegReasoning.wire.errors import InputError, NotFound
from MedSegReasoning.wire.masks import CompactMask
from MedSegReasoning.wire.session_archive import session_json

pytestmark = pytest.mark.slow  # the real LiteMedSAM behind a live server, and child processes

ROOT = Path(__file__).resolve().parents[2]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


# ---------------------------------------------------------------------------------------------------------------


def test_client_and_slicer_side_import_neither_torch_nor_qt_nor_the_server():
    code = (
        "import sys, MedSegReasoning.wire.client, MedSegReasoning.wire.process, MedSegReasoning.slicer.backend_link, MedSegReasoning.slicer.chat_panel; "
        "bad = [m for m in ('torch', 'fastapi', 'uvicorn', 'scipy', 'MedSegReasoning.server', 'PySide2', 'PySide6')"
        " if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_round_request_from_the_panel_context():
    context = {
        "view": {"orientation": "Axial", "slice": 57.0},
        "prompts": {
            "points": [[120.4, 88, 41], [130, 90, 41, 0], [10, 12, 43]],
            "boxes": [[170, 140, 40.6, 100, 80, 41.4]],
        },
        "window": "ct-soft-tissue",
    }
    request = round_request(context)
    assert request["current_view"] == {"orientation": "axial", "slice": 57}
    assert request["window"] == "ct-soft-tissue" and request["propagate"] is True
    assert request["prompts"] == [
        # the box (corners sorted) on its centre slice 41, with the two points clicked on that slice
        {
            "orientation": "axial",
            "slice": 41,
            "box": [100, 80, 170, 140],
            "points": [[120, 88], [130, 90]],
            "point_labels": [1, 0],
        },
        {"orientation": "axial", "slice": 43, "points": [[10, 12]], "point_labels": [1]},
    ]
    assert round_request({"propagate": False}) == {"propagate": False, "prompts": []}

    # drawn in a coronal view: the box and the click lie on coronal plane j = 276, in (i, k)
    coronal = round_request(
        {
            "view": {"orientation": "coronal", "slice": 276},
            "prompts": {"boxes": [[200, 275, 15, 100, 277, 5]], "points": [[150, 276, 10]]},
        }
    )
    assert coronal["prompts"] == [
        {"orientation": "coronal", "slice": 276, "box": [100, 5, 200, 15], "points": [[150, 10]], "point_labels": [1]}
    ]
    # no view given: a box is taken to lie across its thinnest extent (one voxel thick along i: sagittal plane i=371)
    sagittal = round_request({"prompts": {"boxes": [[371, 100, 2, 371, 180, 12]]}})
    assert sagittal["prompts"] == [{"orientation": "sagittal", "slice": 371, "box": [100, 2, 180, 12]}]
    for bad, message in (
        ({"view": {"orientation": "oblique", "slice": 3}}, "not one of axial, coronal, sagittal"),
        ({"prompts": {"points": [[1, 2]]}}, r"\[i, j, k\]"),
        ({"prompts": {"points": [[1, 2, 3, 0]]}}, "only points marked outside"),
        ({"prompts": {"boxes": [[1, 2, 3, 4, 5, 6], [0, 0, 3, 9, 9, 6]]}}, "two boxes on axial slice 4"),
        ({"prompts": {"points": [[-4, 2, 3]]}}, "outside the volume"),
    ):
        with pytest.raises(InputError, match=message):
            round_request(bad)


def test_rounds_view_prompts_edits_review_and_an_expired_session(ct3, litemedsam, tmp_path):
    spleen, liver, aorta = (ct3.truth[n][K] for n in ("spleen", "liver", "aorta"))
    answers = write_answers(
        tmp_path / "answers.jsonl",
        [
            {"targets": [{"label": "spleen", "box": box_of(spleen)}, {"label": "liver", "box": box_of(liver)}]},
            {"targets": [{"label": "aorta", "box": box_of(aorta)}], "this_slice": True, "text": "Round, bright."},
        ],
    )
    with start_server(tmp_path, litemedsam, answers) as (server, token):
        link = chat_backend(server.url, token)
        assert isinstance(link, BackendLink) and isinstance(connect_backend(server.url, token), BackendLink)
        events = list(link.ask("Where is the spleen?", {}))  # nothing to ask about yet: said, and no session made
        assert [e.kind for e in events] == ["error", "done"] and link.session_id is None
        assert "choose the input volume" in events[0].data["message"]
        ct3.send_to(link)
        uploads = []
        real_upload = link.client.upload_volume
        link.client.upload_volume = lambda *a, **kw: uploads.append(real_upload(*a, **kw)) or uploads[-1]

        # round 1: the reasoner (replayed) picks the slice and boxes two organs; LiteMedSAM segments and propagates
        events = list(link.ask("Where are the spleen and the liver?", {}))
        kinds = [e.kind for e in events]
        assert kinds[-1] == "done" and kinds.count("done") == 1 and "error" not in kinds, events[-1]
        assert kinds.index("reasoning") < kinds.index("target")
        assert "Best seen on slice 1." in "".join(e.data["text"] for e in events if e.kind == "reasoning")
        done = events[-1].data
        sid = done["session_id"]
        assert done["status"] == "ok" and done["answer"] == "Found E1 (Spleen), E2 (Liver)."
        targets = {e.data["entity"]["id"]: e.data for e in events if e.kind == "target"}
        assert [t["entity"]["name"] for t in targets.values()] == ["Spleen", "Liver"]
        masks = {eid: t["entity_object"].mask.to_dense(ct3.array.shape) for eid, t in targets.items()}
        assert dice(masks["E1"][K], spleen) > 0.8 and dice(masks["E2"][K], liver) > 0.8
        assert masks["E1"][0].any() and masks["E1"][2].any(), "propagated to both neighbours"

        # round 2: "this slice" with the view: the server asks the reasoner about the view directly. The replay
        # holds only a 'locate' answer for this round, so without the view the round could not succeed.
        events = list(
            link.ask("What is the round structure on this slice?", {"view": {"orientation": "axial", "slice": K}})
        )
        assert events[-1].data["status"] == "ok", events
        assert events[-1].data["answer"] == "Found E3 (Aorta)."
        recorded = saved_session(server, sid)["rounds"][1]
        assert recorded["question"] == "What is the round structure on this slice?"
        assert recorded["targets"][0]["prompt"]["slice"] == K and recorded["reasoning"] == "Round, bright."
        assert len(uploads) == 1, "the volume went once"

        # round 3: the user's box and a click: segmented as given (the replay has no round 3: never asked), and the
        # user's edit of E1 is sent first
        edited = masks["E1"].copy()
        edited[K, : edited.shape[1] // 2] = False
        link.before_round = lambda: {"E1": CompactMask.from_dense(edited)}
        i0, j0, i1, j1 = box_of(ct3.truth["stomach"][K])
        jj, ii = np.nonzero(ct3.truth["stomach"][K])
        inside = [int(ii[len(ii) // 2]), int(jj[len(jj) // 2]), K]
        prompts = {"boxes": [[i0, j0, K, i1, j1, K]], "points": [inside]}
        events = list(link.ask("stomach", {"prompts": prompts, "propagate": False}))
        assert events[-1].data["status"] == "ok", events
        assert events[-1].data["answer"] == "Found E4 (Stomach)."
        target = saved_session(server, sid)["rounds"][2]["targets"][0]
        # asked for one slice (propagate: False), the mask is judged as a slice: no whole-stomach volume is expected
        assert target["status"] == "accepted"
        size = [c for j in target["judgments"] for c in j["checks"] if c["name"] == "size"]
        assert size and all(c["status"] == "skip" for c in size), size
        prompt = target["prompt"]
        assert prompt["slice"] == K and prompt["box"] == [i0, j0, i1, j1]
        assert [p[:2] for p in prompt["points"]] == [inside[:2]]
        e1 = link.client.entity(sid, "E1")
        assert e1.data["edited"] and e1.voxels == int(edited.sum())

        # review from the chat reaches the server
        link.set_review("E2", "rejected")
        link.set_review("E3", "confirmed")
        reviews = {e.id: e.review for e in link.client.entities(sid)}
        assert reviews == {"E1": "proposed", "E2": "rejected", "E3": "confirmed", "E4": "proposed"}
        snapshot = session_json(link.fetch_archive())  # what the module saves with the scene
        assert [r["question"] for r in snapshot["rounds"]][:2] == [
            "Where are the spleen and the liver?",
            "What is the round structure on this slice?",
        ]
        assert {e["id"]: e["review"] for e in snapshot["entities"]} == reviews

        # the server forgot the session (expired): the next question opens a new one, the volume goes by hash
        link.client.delete_session(sid)
        with pytest.raises(NotFound):
            link.client.session(sid)
        link.before_round = None
        events = list(link.ask("aorta", {"prompts": {"boxes": [[*box_of(aorta)[:2], K, *box_of(aorta)[2:], K]]}}))
        assert events[-1].data["status"] == "ok", events
        assert events[-1].data["session_id"] not in (None, sid) and link.session_id == events[-1].data["session_id"]
        assert len(uploads) == 2 and uploads[1]["reused"], "sent again, by content hash: no voxels transferred"


def test_cancel_reaches_the_server_while_the_round_waits_for_the_segmenter(ct3, litemedsam, tmp_path):
    answers = write_answers(
        tmp_path / "answers.jsonl", [{"targets": [{"label": "spleen", "box": [290, 240, 390, 380]}]}]
    )
    with start_server(tmp_path, litemedsam, answers) as (server, token):
        link = BackendLink(MedSegClient(server.url, token))
        ct3.send_to(link)
        sid = link.ensure_session()
        with segmenter_held(server):
            seen = []
            for event in link.ask("Where is the spleen?", {}):
                seen.append(event)
                if event.kind == "progress" and event.data.get("stage") == "queued":
                    link.cancel()  # the round now waits in the segmenter's queue
            # the round ended while the segmenter was still held: the server cancelled it, not a timeout
            assert seen[-1].kind == "done" and seen[-1].data["status"] == "cancelled", seen[-1]
            assert "cancelled by the client" in seen[-1].data["reason"]
            summary = link.client.session(sid)
            assert summary["running_round"] is None and summary["rounds"] == 0
        assert link.client.entities(sid) == [] and link.client.rounds(sid) == []

        # a reader that walks away (the panel closes the stream when cancel() raced with the round's start)
        # cancels that round too (a new session: the replay answers of the first are spent)
        other = BackendLink(link.client)
        ct3.send_to(other)
        sid2 = other.ensure_session()
        with segmenter_held(server):
            stream = other.ask("Where is the spleen?", {})
            for event in stream:
                if event.kind == "progress" and event.data.get("stage") == "queued":
                    break
            stream.close()
            deadline = time.monotonic() + 10
            while other.client.session(sid2)["running_round"] is not None:
                assert time.monotonic() < deadline, "the server round was not cancelled"
                time.sleep(0.05)
        assert other.client.session(sid2)["rounds"] == 0
