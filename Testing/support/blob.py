"""The bright-blob scenario of the re-ask and reasoner-correction tests: ``support.reasoning.blob_volume``, its key
slice, a box that leaks and a segmenter that gives the blob only for exactly the good box."""

from __future__ import annotations

import numpy as np

from MedSegReasoning.segmentation.base import Prediction, Prompt2D
from MedSegReasoning.volume.core import Volume

from .fakes import FakeSegmenter

K = 7  # the blob's largest slice
QUESTION = "Segment the bright blob."
LEAKING_BOX = [10, 10, 280, 200]


def blob_on(volume: Volume, k: int) -> np.ndarray:
    return volume.array[k] >= 200


def good_box(volume: Volume) -> list[int]:
    jj, ii = np.nonzero(blob_on(volume, K))
    return [int(ii.min()), int(jj.min()), int(ii.max()), int(jj.max())]


def leaks_unless_good_box(volume: Volume) -> FakeSegmenter:
    """The blob for exactly the good box; the whole slice for any other prompt (a runaway leak)."""
    good = tuple(float(v) for v in good_box(volume))

    def answer(k: int, prompt: Prompt2D) -> Prediction:
        if prompt.box is not None and tuple(float(v) for v in prompt.box) == good:
            return Prediction(mask=blob_on(volume, k), score=0.95)
        return Prediction(mask=np.ones(volume.shape[1:], dtype=bool), score=0.95)

    return FakeSegmenter(volume.array, answer, name="leaky")


class Recording:
    """Passes calls through to a reasoner and keeps what it was asked: ``questions`` in order, and ``calls`` as
    (task, question, the slices its views showed)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.identity = inner.identity
        self.questions: list[str] = []
        self.calls: list[tuple[str, str, list[int]]] = []

    def reason(self, views, question, context, on_text=None, cancel=None):
        self.questions.append(question)
        self.calls.append((views.task, question, [t.slice for v in views.views for t in v.tiles]))
        return self.inner.reason(views, question, context, on_text, cancel)
