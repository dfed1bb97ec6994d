"""Issue 15, the ``openai:`` reasoner against hostile servers: a total deadline, and a bad reply is exit 3 or 4.

The servers here are a few lines of ``http.server`` started in the test, so each can misbehave exactly one way:
keep the stream alive with SSE comments and never answer, cut a data line in the middle, or send fields of the
wrong type.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from support.hostile_server import HostileServer
from support.reasoning import blob_volume

from MedSegReasoning.cli import main
from MedSegReasoning.reasoning import ReasonerOutputError, ReasoningStrategy, create_reasoner
from MedSegReasoning.reasoning.views import refine_views
from MedSegReasoning.volume.windowing import default_window
from MedSegReasoning.wire.errors import EXIT_SERVICE, ServiceError


@pytest.fixture
def server(request):
    s = HostileServer(request.param)
    yield s
    s.close()


@pytest.fixture(scope="module")
def views():
    volume = blob_volume()
    return refine_views(volume, default_window(volume), ReasoningStrategy(pad_to_multiple=0), "axial", 7)


def _reasoner(server, **options):
    return create_reasoner(f"openai:{server.base_url}#qwen2.5vl:7b", retries=0, **options)


@pytest.mark.parametrize("server", ["keepalive"], indirect=True)
def test_a_keep_alive_server_is_cut_off_at_the_total_deadline(server, views):
    with pytest.raises(ServiceError, match=r"did not finish its answer within 0.5 s.*--reasoner-timeout"):
        _reasoner(server, timeout_s=0.5).reason(views, "where?")


@pytest.mark.parametrize("server", ["keepalive"], indirect=True)
def test_the_cli_option_sets_the_deadline_and_exits_4(server, tmp_path, capsys, monkeypatch):
    from MedSegReasoning.segmentation import factory
    from MedSegReasoning.volume.itk_io import write_label_image

    monkeypatch.setattr(factory, "create_segmenter", lambda *a, **kw: _NoSegmenter())
    monkeypatch.setattr(factory, "preload", lambda *a, **kw: None)
    volume = blob_volume()
    path = tmp_path / "blob.nrrd"
    write_label_image(path, (volume.array > 0).astype(np.uint8) * 100, volume.geometry)
    argv = ["ask", str(path), "where is the blob?", "--reasoner", f"openai:{server.base_url}#m", "--out"]
    code = main([*argv, str(tmp_path / "o"), "--reasoner-timeout", "0.5"])
    assert code == EXIT_SERVICE
    assert "within 0.5 s" in capsys.readouterr().err


@pytest.mark.parametrize("server", ["keepalive"], indirect=True)
def test_eval_takes_the_deadline_too_and_exits_4(server, tmp_path, capsys, monkeypatch):
    """``eval --reasoner-timeout``: the same deadline as ``ask`` (a reasoner that never finishes stops the run with
    the service's exit code; ``--resume`` continues it)."""
    from MedSegReasoning.segmentation import factory
    from MedSegReasoning.volume.itk_io import write_label_image

    monkeypatch.setattr(factory, "create_segmenter", lambda *a, **kw: _NoSegmenter())
    volume = blob_volume()
    data = tmp_path / "data"
    data.mkdir()
    write_label_image(data / "blob.nrrd", (volume.array > 0).astype(np.uint8) * 100, volume.geometry)
    write_label_image(data / "labels.nrrd", (volume.array > 0).astype(np.uint8), volume.geometry)
    line = {"id": "q1", "volume": "blob.nrrd", "labels": "labels.nrrd", "label": 1, "question": "where is the blob?"}
    (data / "questions.jsonl").write_text(json.dumps(line) + "\n", encoding="utf-8")
    argv = ["eval", str(data), "--layout", "folder", "--mode", "reasoner", "--out", str(tmp_path / "e")]
    code = main([*argv, "--reasoner", f"openai:{server.base_url}#m", "--reasoner-timeout", "0.5", "--no-progress"])
    assert code == EXIT_SERVICE
    assert "within 0.5 s" in capsys.readouterr().err


class _NoSegmenter:
    """The segmenter a reasoner failure never reaches (encoding ahead is off for it)."""

    identity = None
    supports_batch = False


def test_the_deadline_option_is_checked_by_argparse(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["ask", "x.nii", "q", "--reasoner-timeout", "-3"])
    assert exit_info.value.code == 2 and "positive number of seconds" in capsys.readouterr().err


@pytest.mark.parametrize("server", ["cut-mid-line"], indirect=True)
def test_a_stream_cut_mid_line_is_the_services_fault(server, views):
    with pytest.raises(ServiceError, match="closed the stream before the answer was complete"):
        _reasoner(server).reason(views, "where?")


@pytest.mark.parametrize("server", ["usage-lots"], indirect=True)
def test_usage_of_the_wrong_type_is_ignored(server, views):
    answer = _reasoner(server).reason(views, "where?")
    assert answer.clarification == "which one?"


@pytest.mark.parametrize("server", ["choices-abc", "delta-list"], indirect=True)
def test_choices_or_delta_of_the_wrong_type_are_a_bad_reply(server, views):
    with pytest.raises(ReasonerOutputError, match="not a list of objects|delta is not an object"):
        _reasoner(server).reason(views, "where?")
