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
        self._crop: tuple[int, ...] | None = None

    def set_image(self, image: np.ndarray, cache_key=None) -> None:
        k = int(cache_key[2])
        key = tuple(cache_key)
        # a zoomed crop around a small prompt (propagation.ZoomPolicy) names its corners after "crop" in the key
        self._crop = tuple(int(v) for v in key[key.index("crop") + 1 : key.index("crop") + 5]) if "crop" in key else None
        nj, ni = self.truth.shape[1:]
        x0, y0, x1, y1 = self._crop or (0, 0, ni, nj)
        assert image.shape[:2] == (y1 - y0, x1 - x0), "the image must be the slice (or its crop) as rendered"
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
        nj, ni = self.truth.shape[1:]
        cx0, cy0, cx1, cy1 = self._crop or (0, 0, ni, nj)
        seen = self.truth[self._k, cy0:cy1, cx0:cx1]
        mask = np.zeros(seen.shape, dtype=bool)
        if prompt.box is not None:
            x0, y0, x1, y1 = (int(round(v)) for v in prompt.box)
            mask[y0 : y1 + 1, x0 : x1 + 1] = seen[y0 : y1 + 1, x0 : x1 + 1]
        return Prediction(mask=mask, score=self.scores.get(self._k, 0.95))
