"""Builders for the dialogue tests: a small synthetic abdomen, scripted segmenters, and the three-round script.

Plain builders, imported as ``support.dialogue``. The crash test runs ``python Testing/support/dialogue.py FOLDER
MODE`` in a child process, so the script lives here too.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script by the crash test: the repository and Testing/, not support/ itself
    sys.path[0:1] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parents[1])]

from MedSegReasoning.pipeline import VoxelPrompt
from MedSegReasoning.volume.core import Geometry, Volume
from MedSegReasoning.volume.windowing import Window
from support.fakes import label_oracle

WINDOW = Window("test", 100.0, 300.0)
SHAPE = (24, 80, 80)  # k, j, i
SPACING = (2.0, 2.0, 4.0)  # si, sj, sk: anisotropic on purpose
KIDNEY, LESION, DUODENUM, VEIN = 1, 2, 3, 4
INTENSITY = {KIDNEY: 150, LESION: 60, DUODENUM: 140, VEIN: 220}


def _ellipsoid(centre, radii, shape=SHAPE) -> np.ndarray:
    kk, jj, ii = np.ogrid[: shape[0], : shape[1], : shape[2]]
    (ck, cj, ci), (rk, rj, ri) = centre, radii
    return ((kk - ck) / rk) ** 2 + ((jj - cj) / rj) ** 2 + ((ii - ci) / ri) ** 2 <= 1.0


def abdomen_labels() -> np.ndarray:
    """A left kidney (~130 mL) with a small lesion at its medial border, a duodenum touching its lateral side
    (similar intensity: a box-prompted model leaks into it), and a vein running past the lesion (~4 mm away)."""
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[_ellipsoid((12, 40, 30), (7, 20, 14))] = KIDNEY
    labels[8:17, 30:51, 45:59] = DUODENUM
    jj, ii = np.ogrid[: SHAPE[1], : SHAPE[2]]
    labels[:, (jj - 40) ** 2 + (ii - 12) ** 2 <= 9] = VEIN
    labels[_ellipsoid((12, 40, 21), (2, 4, 4))] = LESION
    return labels


def abdomen_volume(labels: np.ndarray | None = None) -> Volume:
    """The label map as a CT: each structure its intensity; the background -2 HU a slice deeper (0 to -46 HU), so no
    two slices render alike (the organs are symmetric about slice 12) and the fake segmenter can tell them apart."""
    labels = abdomen_labels() if labels is None else labels
    array = np.broadcast_to(-2 * np.arange(SHAPE[0], dtype=np.int16)[:, None, None], SHAPE).copy()
    for value, hu in INTENSITY.items():
        array[labels == value] = hu
    return Volume(array, Geometry.from_arrays((-80.0, -80.0, 0.0), SPACING, np.eye(3)), modality="CT")


def inside_point(labels: np.ndarray, value: int, k: int) -> tuple[int, int]:
    """``(i, j)`` of the structure's pixel nearest its centroid on slice ``k`` (for foreground/background clicks)."""
    jj, ii = np.nonzero(labels[k] == value)
    n = int(np.argmin((ii - ii.mean()) ** 2 + (jj - jj.mean()) ** 2))
    return int(ii[n]), int(jj[n])


def prompt_on(labels: np.ndarray, value: int, k: int, *, pad: int = 1, background: tuple = ()) -> VoxelPrompt:
    """A reasoner-like prompt: the structure's box on slice ``k`` (grown by ``pad``) and a point inside it."""
    jj, ii = np.nonzero(labels[k] == value)
    nj, ni = labels.shape[1:]
    box = (
        max(int(ii.min()) - pad, 0),
        max(int(jj.min()) - pad, 0),
        min(int(ii.max()) + pad, ni - 1),
        min(int(jj.max()) + pad, nj - 1),
    )
    points = (inside_point(labels, value, k), *background)
    return VoxelPrompt(k, box, points, (1,) + (0,) * len(background))


def script(labels: np.ndarray):
    """The three rounds of the dialogue test: (question, RoundPlan) pairs, the reasoner's answers replayed."""
    from MedSegReasoning.dialogue import RoundPlan, TargetSpec

    kidney_loose = prompt_on(labels, KIDNEY, 12, pad=8)  # reaches over the duodenum: the mask will leak
    kidney_clean = prompt_on(labels, KIDNEY, 12, pad=1, background=((52, 40),))  # negative click on the duodenum
    return [
        (
            "Segment the lesion in the left kidney.",
            RoundPlan(
                reasoning="A small hypodense focus sits at the medial border of the left kidney.",
                targets=(TargetSpec("lesion in the left kidney", prompt_on(labels, LESION, 12)),),
            ),
        ),
        (
            "Now segment the kidney containing E1, and the vessel next to that lesion.",
            RoundPlan(
                reasoning="The kidney around E1; medially a tubular vessel passes close to the lesion.",
                targets=(
                    TargetSpec("left kidney", kidney_loose, ref="E1", relation="contains"),
                    TargetSpec(
                        "inferior vena cava", prompt_on(labels, VEIN, 12), ref="that lesion", relation="adjacent"
                    ),
                ),
            ),
        ),
        (
            "Redo the second one, it leaks into the duodenum.",
            RoundPlan(
                reasoning="Same kidney, with a negative point on the duodenum.",
                targets=(TargetSpec("left kidney", kidney_clean, redo="the second one"),),
            ),
        ),
    ]


def run_script(folder: Path | None, rounds: int = 3, on_round=None):
    """Run the scripted dialogue; ``on_round(n)`` is called before round ``n`` (the crash test kills there)."""
    from MedSegReasoning.dialogue import Session, run_round

    labels = abdomen_labels()
    volume = abdomen_volume(labels)
    segmenter = label_oracle(volume.array, labels, leaks_into={KIDNEY: {DUODENUM}}, window=WINDOW)
    session = Session.for_volume(volume, path="synthetic-abdomen", folder=folder)
    for n, (question, plan) in enumerate(script(labels)[:rounds], start=1):
        if on_round is not None:
            on_round(n, segmenter)
        run_round(session, volume, segmenter, WINDOW, question, plan)
    return session, volume, labels


def _child(folder: str, mode: str) -> None:
    """Crash test child: die hard during round 3 (``mid-round``) or while saving round 3 (``mid-save``)."""

    def on_round(n, segmenter):
        if n != 3:
            return
        if mode == "exit":
            os._exit(0)
        if mode == "mid-round":
            original = segmenter.predict
            start = len(segmenter.prompts)

            def predict_then_die(prompt):
                if len(segmenter.prompts) > start + 5:  # a few slices into round 3's propagation
                    os.kill(os.getpid(), signal.SIGKILL)
                return original(prompt)

            segmenter.predict = predict_then_die
        if mode == "mid-save":
            import MedSegReasoning.dialogue.store as store

            def die(*args, **kwargs):
                os.kill(os.getpid(), signal.SIGKILL)

            store.write_text_atomic = die  # masks of round 3 are written, session.json is not

    run_script(Path(folder), on_round=on_round)


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2])
