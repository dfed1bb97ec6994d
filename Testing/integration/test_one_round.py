"""One round for every front end (issue #14): the CLI, the server, ``eval`` and the benchmarks run the same round.

The scenario needs the whole round to get it right. The segmenter leaks (fills the whole slice) for every box but
one, so the segmenter's own re-prompts (tighter box, negative points) cannot fix the first mask; the replayed
reasoner's first box is a leaking one, and the good box is only in its second answer, which it gives only when it
is asked again with the reasons the mask was refused. So each front end passes only if its round judges the first
mask, re-asks the reasoner during correction (``ask_again``) and keeps the re-asked answer's mask in the entity.
Before the round was one function, only the CLI re-asked; the server, ``eval`` and the benchmark kept the leak.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from support.blob import LEAKING_BOX, QUESTION, K, Recording, blob_on, good_box, leaks_unless_good_box
from support.reasoning import blob_volume

from MedSegReasoning.reasoning import create_reasoner
from MedSegReasoning.volume.core import Volume

RE_ASKED = "Your previous box for 'blob' was rejected:"
ROOT = Path(__file__).resolve().parents[2]


def _answer(box: list[int] | None, reasoning: str) -> str:
    target: dict = {"slice": K, "label": "blob", "ref": None}
    if box is not None:
        target["bbox"] = box
    return json.dumps({"reasoning": reasoning, "targets": [target], "clarification": None})


def replay_file(path: Path, volume: Volume) -> Path:
    """Round 1, two reasoner runs (a key-slice pick, then a box on it): the leaking box, then the good one."""
    lines = []
    for box, why in ((LEAKING_BOX, "The bright area."), (good_box(volume), "Corrected: only the blob.")):
        lines.append({"round": 1, "step": "pick_slice", "raw": _answer(None, "Largest on slice 7.")})
        lines.append({"round": 1, "step": "locate", "raw": _answer(box, why)})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def write_nrrd(path: Path, volume: Volume, array: np.ndarray | None = None) -> Path:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(volume.array if array is None else array)
    image.SetOrigin(volume.geometry.origin)
    image.SetSpacing(volume.geometry.spacing)
    sitk.WriteImage(image, str(path))
    return path


def assert_re_asked(reasoner: Recording, question: str = QUESTION) -> None:
    """The reasoner was asked the question, then asked again with it and the reasons its mask was refused."""
    assert reasoner.questions[0] == question
    assert any(q.startswith(question) and RE_ASKED in q for q in reasoner.questions), reasoner.questions


def assert_second_answers_mask(mask: np.ndarray, volume: Volume, propagated: bool = False) -> None:
    """The entity holds the mask of the re-asked answer's box on the key slice: the blob, not the leak."""
    np.testing.assert_array_equal(mask[K], blob_on(volume, K))
    if not propagated:
        assert mask.sum() == blob_on(volume, K).sum(), "key slice only (no propagation), and no leak"


@pytest.fixture
def scenario(tmp_path):
    volume = blob_volume()
    replay = replay_file(tmp_path / "answers.jsonl", volume)
    return volume, replay, Recording(create_reasoner(f"replay:{replay}"))


def test_the_cli_re_asks_the_reasoner(scenario, tmp_path, monkeypatch, capsys):
    from MedSegReasoning import reasoning
    from MedSegReasoning.cli import main
    from MedSegReasoning.dialogue import load_session
    from MedSegReasoning.reasoning import spec
    from MedSegReasoning.segmentation import factory

    volume, replay, reasoner = scenario
    monkeypatch.setattr(factory, "preload", lambda *a, **kw: None)
    monkeypatch.setattr(factory, "create_segmenter", lambda *a, **kw: leaks_unless_good_box(volume))
    for module in (reasoning, spec):  # whichever name the CLI creates its reasoner through
        monkeypatch.setattr(module, "create_reasoner", lambda *a, **kw: reasoner)
    out, session = tmp_path / "out", tmp_path / "session"
    argv = [
        "ask",
        str(write_nrrd(tmp_path / "blob.nrrd", volume)),
        QUESTION,
        "--reasoner",
        f"replay:{replay}",
        "--no-propagate",
        "--session",
        str(session),
        "--out",
        str(out),
    ]
    assert main(argv) == 0, capsys.readouterr().err
    loaded = load_session(session)
    assert_re_asked(reasoner)
    assert_second_answers_mask(loaded.dense_mask("E1"), volume)
    result = json.loads((out / "result.json").read_text())
    assert [t["status"] for t in result["round"]["targets"]] == ["accepted"]
    assert len(result["answers"]) == 2, "the plan's answer and the re-asked one are both recorded"


def test_the_server_re_asks_the_reasoner(scenario, tmp_path):
    from support.server import live_server, offline_terminology

    from MedSegReasoning.server.engine import Engine
    from MedSegReasoning.wire.client import MedSegClient

    volume, _, reasoner = scenario
    engine = Engine(
        segmenter=leaks_unless_good_box(volume), reasoner_factory=lambda: reasoner, terminology=offline_terminology()
    )
    with live_server(tmp_path, engine) as (server, tokens):
        client = MedSegClient(server.url, tokens["alice"])
        sid = client.create_session()
        g = volume.geometry
        client.upload_volume(sid, volume.array, g.origin, g.spacing, g.direction, "CT")
        streamed: list[str] = []
        result = client.ask(sid, QUESTION, propagate=False, on_reasoning=streamed.append)
    (entity,) = result.entities
    assert (entity.id, result.status) == ("E1", "ok")
    done = dict(result.events)["done"]
    assert [t["status"] for t in done["targets"]] == ["accepted"]
    assert "Corrected: only the blob." in "".join(streamed), "the re-ask's text is streamed like the plan's"
    assert_re_asked(reasoner)
    assert_second_answers_mask(entity.mask.to_dense(volume.shape), volume)


def test_eval_re_asks_the_reasoner(scenario, tmp_path):
    from MedSegReasoning.conversation import ReasonerOptions
    from MedSegReasoning.evaluation.layouts import open_dataset
    from MedSegReasoning.evaluation.runner import EvalOptions, run_eval

    volume, replay, reasoner = scenario
    folder = tmp_path / "ds"
    folder.mkdir()
    labels = np.zeros(volume.shape, dtype=np.uint8)
    labels[K] = blob_on(volume, K)  # the truth is the key slice's blob: what a right round segments unpropagated
    write_nrrd(folder / "vol.nrrd", volume)
    write_nrrd(folder / "labels.nrrd", volume, labels)
    question = {"id": "q1", "volume": "vol.nrrd", "labels": "labels.nrrd", "label": 1, "name": "blob"}
    (folder / "questions.jsonl").write_text(json.dumps({**question, "question": QUESTION}) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    options = EvalOptions(
        out=out, mode="full", reasoner=ReasonerOptions(spec=f"replay:{replay}"), propagate=False, progress=False
    )
    run_eval(open_dataset(folder), options, segmenter=leaks_unless_good_box(volume), reasoner=reasoner)
    (record,) = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert record["error"] is None
    assert record["dice"] == 1.0, "the re-asked box's mask is what eval scores"
    assert record["box_iou"] < 0.5, "the answer scored is the plan's (the leaking box), as in reasoner mode"
    assert_re_asked(reasoner)


def test_the_server_benchmarks_in_process_round_re_asks_the_reasoner(scenario, tmp_path):
    """benchmarks/server.py measures what HTTP adds to the in-process round: the same round, re-asks included."""
    path = ROOT / "benchmarks" / "server.py"
    module_spec = importlib.util.spec_from_file_location("medseg_benchmark_server", path)
    bench = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = bench
    try:
        module_spec.loader.exec_module(bench)
        volume, replay, reasoner = scenario
        run = bench.InProcess(volume, replay, tmp_path / "s")
        run.segmenter = bench._Timed(leaks_unless_good_box(volume))
        run.reasoner = bench._Timed(reasoner)
        run.round()
    finally:
        sys.modules.pop(module_spec.name, None)
    (record,) = run.session.rounds[0].targets
    assert record.status == "accepted" and record.judgments[-1].strategy == "asked the reasoner again"
    assert_re_asked(reasoner, "Segment the bright mass.")
    assert_second_answers_mask(run.session.dense_mask("E1"), volume, propagated=True)  # the benchmark propagates
