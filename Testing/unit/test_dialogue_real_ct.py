"""The three-round dialogue on the real abdominal CT (20 slices, 512x512), with the reference labels as the oracle.

Real geometry and real organ sizes: the liver is cut by the scan's field of view (so only the upper size bound
applies), the IVC touches it, the portal vein runs inside it. The scripted answers stand in for the reasoner.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from support.ct_reference import reference_labels_on_ct_grid
from support.dialogue import inside_point, prompt_on
from support.fakes import label_oracle

from MedSegReasoning.dialogue import RoundConfig, RoundPlan, Session, TargetSpec, load_session, run_round
from MedSegReasoning.propagation import PropagationConfig
from MedSegReasoning.volume import default_window, load_volume

FULL_ROUND = RoundConfig(propagation=PropagationConfig(skip=1))


@pytest.fixture(scope="module")
def ct(shared_ct):
    volume = load_volume(shared_ct / "dicom")
    labels = reference_labels_on_ct_grid(shared_ct, volume)
    names = {v: int(k) for k, v in json.loads((shared_ct / "labels.json").read_text()).items()}
    return volume, labels, names


def test_three_rounds_on_the_real_ct(ct, tmp_path):
    volume, labels, names = ct
    liver, stomach, ivc, portal = (
        names[n] for n in ("liver", "stomach", "inferior_vena_cava", "portal_vein_and_splenic_vein")
    )
    k = 10
    window = default_window(volume)
    segmenter = label_oracle(volume.array, labels, leaks_into={liver: {stomach}}, window=window)
    session = Session.for_volume(volume, path="ct-abdomen-dicom", folder=tmp_path / "s")
    rounds = [
        ("Segment the liver.", (TargetSpec("liver", prompt_on(labels, liver, k, pad=40)),)),
        (
            "Now the vessel next to E1, and the portal vein inside that organ.",
            (
                TargetSpec("inferior vena cava", prompt_on(labels, ivc, k), ref="E1", relation="adjacent"),
                TargetSpec("portal vein", prompt_on(labels, portal, 8), ref="that organ", relation="inside"),
            ),
        ),
        (
            "Redo the first one, it leaks into the stomach.",
            (
                TargetSpec(
                    "liver",
                    prompt_on(labels, liver, k, background=(inside_point(labels, stomach, k),)),
                    redo="the first one",
                ),
            ),
        ),
    ]
    for question, targets in rounds:
        # slice by slice: the oracle's exact voxels are pinned below (interpolated slices would blur the edges)
        run_round(session, volume, segmenter, window, question, RoundPlan(targets=targets), config=FULL_ROUND)

    assert list(session.entities) == ["E1", "E2", "E3"]
    r2 = session.rounds[1]
    assert [(t.ref_text, t.ref, t.status) for t in r2.targets] == [
        ("E1", "E1", "accepted"),
        ("that organ", "E1", "accepted"),
    ]
    e1, e2, e3 = (session.dense_mask(i) for i in ("E1", "E2", "E3"))
    truth = labels == liver
    dice = 2 * (e1 & truth).sum() / (e1.sum() + truth.sum())
    assert dice > 0.98 and not (e1 & (labels == stomach)).any()
    before = session.rounds[2].superseded[0].mask.to_dense(volume.shape)
    assert (before & (labels == stomach)).sum() > 1000  # round 1 leaked into the stomach; the redo fixed it
    assert not (e2 & ~(labels == ivc)).any() and not (e3 & ~(labels == portal)).any()
    size = next(c for c in r2.judgments[0].checks if c.name == "size")
    assert size.status == "pass" and size.expected == "3-300 mL"
    liver_size = next(c for c in session.rounds[2].judgments[0].checks if c.name == "size")
    assert liver_size.status == "pass" and "edge of the scanned volume" in liver_size.detail
    assert "touching E1 (Liver)" in session.entity("E2").findings
    assert "inside E1 (Liver)" in session.entity("E3").findings
    assert load_session(tmp_path / "s") == session
    assert np.array_equal(load_session(tmp_path / "s").dense_mask("E1"), e1)
