"""Three rounds on the real CT, driven by the replay reasoner through the real LiteMedSAM (issue 4's dialogue test).

Round 1 segments the spleen; round 2 asks for the stomach next to E1 and the aorta medial to "that organ" (the
question refers to E1 by id and in plain language; an answer's ``ref`` is always an id); round 3 redoes "the
second one" (E2) with a tighter box. The recorded answers are written in the
replay's pixel convention (pixels of the refine view, which shows the axial slice 1:1, so pixel = voxel i, j),
with boxes from the reference labels. Everything is on the last slice: one encoder run, and a mask there reaches
the edge of the scanned volume, so judgment (rightly) applies only the upper size bound to one-slice masks.
Propagation is off to keep the test at a few seconds beside the model load.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from support.ct_reference import reference_labels_on_ct_grid

from MedSegReasoning.dialogue import Session, load_session, run_round
from MedSegReasoning.dialogue.ask import ask_reasoner_again, reasoner_planner
from MedSegReasoning.reasoning import create_reasoner
from MedSegReasoning.volume import default_window, load_volume

K = 19  # the last slice


@pytest.fixture(scope="module")
def ct(shared_ct):
    volume = load_volume(shared_ct / "dicom")
    labels = reference_labels_on_ct_grid(shared_ct, volume)
    names = {v: int(k) for k, v in json.loads((shared_ct / "labels.json").read_text()).items()}
    return volume, labels, names


def box(truth2d: np.ndarray, pad: int) -> list[int]:
    jj, ii = np.nonzero(truth2d)
    nj, ni = truth2d.shape
    return [max(int(ii.min()) - pad, 0), max(int(jj.min()) - pad, 0), min(int(ii.max()) + pad, ni - 1),
            min(int(jj.max()) + pad, nj - 1)]  # fmt: skip


def rounds_file(path: Path, rounds: list[list[dict]]) -> Path:
    """Per round: a key-slice pick naming the targets, then their boxes on that slice (refine view pixels)."""
    lines = []
    for n, targets in enumerate(rounds, start=1):
        pick = [{"slice": K, "label": t["label"], "ref": t["ref"]} for t in targets]
        locate = [{"slice": K, **t} for t in targets]
        lines.append(
            {"round": n, "step": "pick_slice", "raw": json.dumps({"reasoning": "Seen best low.", "targets": pick})}
        )
        lines.append({"round": n, "step": "locate", "raw": json.dumps({"reasoning": "Boxed it.", "targets": locate})})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


class Recording:
    """Passes calls to the replay reasoner and keeps the views it was shown (to see the drawn entities)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.identity = inner.identity
        self.seen: list = []

    def reason(self, views, question, context, on_text=None, cancel=None):
        self.seen.append((context.round, views))
        return self.inner.reason(views, question, context, on_text, cancel)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def test_three_rounds_by_the_replay_reasoner_on_the_real_ct(ct, litemedsam, tmp_path):
    volume, labels, names = ct
    spleen, stomach, aorta = (labels[K] == names[n] for n in ("spleen", "stomach", "aorta"))
    replay = rounds_file(
        tmp_path / "answers.jsonl",
        [
            [{"bbox": box(spleen, 3), "label": "spleen", "ref": None}],
            [
                {"bbox": box(stomach, 25), "label": "stomach", "ref": "E1"},
                {"bbox": box(aorta, 3), "label": "aorta", "ref": None},
            ],
            [{"bbox": box(stomach, 2), "label": "stomach", "ref": "E2"}],
        ],
    )
    reasoner = Recording(create_reasoner(f"replay:{replay}"))
    window = default_window(volume)
    session = Session.for_volume(volume, path="ct-abdomen-dicom", folder=tmp_path / "session")
    questions = [
        "Segment the spleen.",
        "Now the stomach next to E1, and the aorta medial to that organ.",
        "Redo the second one with a tighter box.",
    ]
    for question in questions:
        run_round(
            session,
            volume,
            litemedsam,
            window,
            question,
            reasoner_planner(volume, window, reasoner, session, propagate=False),
            ask_again=ask_reasoner_again(volume, window, reasoner, session, question),
            reasoner_identity=reasoner.identity.to_dict(),
        )

    r1, r2, r3 = session.rounds
    assert [r.clarification for r in session.rounds] == [None, None, None]
    assert list(session.entities) == ["E1", "E2", "E3"]
    assert [session.entity(i).label for i in ("E1", "E2", "E3")] == ["spleen", "stomach", "aorta"]
    # round 2: the question names E1 by id and as "that organ"; both resolve to E1, so the target the reasoner
    # gave no ref relates to E1 too
    phrases = {ref.get("text"): ref.get("entity_ids") for ref in r2.references}
    assert phrases.get("E1") == ["E1"] and phrases.get("that organ") == ["E1"], r2.references
    assert [(t.ref_text, t.ref, t.entity_id) for t in r2.targets] == [("E1", "E1", "E2"), (None, "E1", "E3")]
    assert session.entity("E2").ref == "E1" and session.entity("E3").ref == "E1"
    # round 3: "the second one" is E2, which the reasoner redoes; it is replaced in place (same id, new revision), keeping the old mask for undo
    assert [ref.get("entity_ids") for ref in r3.references] == [["E2"]], r3.references
    assert [(t.redo, t.entity_id) for t in r3.targets] == [("E2", "E2")]
    assert session.entity("E2").updated_round == 3 and [e.id for e in r3.superseded] == ["E2"]
    before = r3.superseded[0].mask.to_dense(volume.shape)[K]

    masks = {i: session.dense_mask(i) for i in ("E1", "E2", "E3")}
    assert all(m[np.arange(volume.shape[0]) != K].sum() == 0 for m in masks.values())  # propagation off
    # about 0.88 here: the edge slice, where the spleen is smaller than on its largest slice (DESIGN: 0.97 there)
    assert dice(masks["E1"][K], spleen) > 0.85
    assert dice(masks["E3"][K], aorta) > 0.85
    assert dice(masks["E2"][K], stomach) > 0.85
    assert not np.array_equal(before, masks["E2"][K])
    assert all(t.status == "accepted" for r in session.rounds for t in r.targets)

    # the reasoner saw E1 drawn on round 2's refine view (not on round 1's)
    refine = {n: views.views[0] for n, views in reasoner.seen if views.task == "locate"}
    drawn = refine[2].image
    assert ((drawn[..., 0] != drawn[..., 1]) | (drawn[..., 1] != drawn[..., 2])).any()
    bare = refine[1].image
    assert not ((bare[..., 0] != bare[..., 1]) | (bare[..., 1] != bare[..., 2])).any()

    loaded = load_session(tmp_path / "session")
    assert loaded == session
    # what export checks: the source series and the models that made the masks
    source = volume.source.dicom
    assert source is not None and source.frame_of_reference_uid
    assert loaded.volume.frame_of_reference_uid == source.frame_of_reference_uid
    assert loaded.volume.series_instance_uid == source.series_instance_uid
    assert loaded.models["segmenter"]["name"] == litemedsam.identity.name
    assert loaded.models["reasoner"]["backend"] == "replay"
    assert all(r.models == loaded.models for r in loaded.rounds)
    for entity_id, mask in masks.items():
        assert np.array_equal(loaded.dense_mask(entity_id), mask)
