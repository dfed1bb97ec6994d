"""A scripted stand-in segmenter: makes propagation tests deterministic. Never shipped, never a default."""

from __future__ import annotations

import numpy as np

from MedSegReasoning.segmentation.base import ModelIdentity, Prediction, Prompt2D, SegmenterStats


class OracleSegmenter:
    """Answers each prompt with the true mask of its slice, cut to the box; the slice comes from the cache key.

    ``scores`` (per slice) lets a test lower the model's confidence where it wants propagation to stop.
    """

    identity = ModelIdentity(name="oracle", weights="none", sha256="0" * 64)

    def __init__(self, truth: np.ndarray, scores: dict[int, float] | None = None) -> None:
        self.truth = truth
        self.scores = scores or {}
        self.stats = SegmenterStats()
        self.encoded: list[int] = []
        self._cache: set = set()
        self._k: int | None = None

    def set_image(self, image: np.ndarray, cache_key=None) -> None:
        k = int(cache_key[2])
        assert image.shape[:2] == self.truth.shape[1:], "the rendered slice must have the volume's (rows, columns)"
        if cache_key in self._cache:
            self.stats.cache_hits += 1
        else:
            self._cache.add(cache_key)
            self.stats.encoder_calls += 1
            self.encoded.append(k)
        self._k = k

    def predict(self, prompt: Prompt2D) -> Prediction:
        assert self._k is not None
        self.stats.decoder_calls += 1
        mask = np.zeros(self.truth.shape[1:], dtype=bool)
        if prompt.box is not None:
            x0, y0, x1, y1 = (int(round(v)) for v in prompt.box)
            mask[y0 : y1 + 1, x0 : x1 + 1] = self.truth[self._k, y0 : y1 + 1, x0 : x1 + 1]
        return Prediction(mask=mask, score=self.scores.get(self._k, 0.95))
