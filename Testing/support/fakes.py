"""A scripted stand-in segmenter: makes propagation tests deterministic. Never shipped, never a default."""

from __future__ import annotations

import numpy as np

from MedSegReasoning.segmentation.base import ModelIdentity, Prediction, Prompt2D, SegmenterStats


class SliceLookup:
    """Base of fakes that answer from a labelled slice: which slice, and which part of it the segmenter was shown.

    The slice index is the third element of the cache key (``propagation.slice_cache_key``); a zoomed crop around a
    small prompt (``propagation.ZoomPolicy``) names its corners ``x0, y0, x1, y1`` after ``"crop"`` in the key. A
    fake works on the whole slice: ``on_slice`` moves the prompt there and ``as_seen`` cuts its answer back.
    """

    _k: int | None = None
    _crop: tuple[int, int, int, int] | None = None

    def look(self, image: np.ndarray, cache_key, slice_shape: tuple[int, int]) -> int:
        key = tuple(cache_key)
        self._k = int(key[2])
        at = key.index("crop") if "crop" in key else None
        self._crop = tuple(int(v) for v in key[at + 1 : at + 5]) if at is not None else None  # type: ignore[assignment]
        x0, y0, x1, y1 = self.region(slice_shape)
        assert image.shape[:2] == (y1 - y0, x1 - x0), "the image must be the slice (or its crop) as rendered"
        return self._k

    def region(self, slice_shape: tuple[int, int]) -> tuple[int, int, int, int]:
        return self._crop or (0, 0, slice_shape[1], slice_shape[0])

    def on_slice(self, prompt: Prompt2D) -> Prompt2D:
        if self._crop is None:
            return prompt
        dx, dy = self._crop[:2]
        box = None if prompt.box is None else tuple(v + d for v, d in zip(prompt.box, (dx, dy, dx, dy), strict=True))
        points = tuple((x + dx, y + dy) for x, y in prompt.points)
        return Prompt2D(box=box, points=points, labels=prompt.labels)  # type: ignore[arg-type]

    def as_seen(self, mask: np.ndarray) -> np.ndarray:
        x0, y0, x1, y1 = self.region(mask.shape)
        return mask[y0:y1, x0:x1]


class OracleSegmenter(SliceLookup):
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

    def set_image(self, image: np.ndarray, cache_key=None) -> None:
        k = self.look(image, cache_key, self.truth.shape[1:])
        if cache_key in self._cache:
            self.stats.cache_hits += 1
        else:
            self._cache.add(cache_key)
            self.stats.encoder_calls += 1
            self.encoded.append(k)

    def predict(self, prompt: Prompt2D) -> Prediction:
        assert self._k is not None
        self.stats.decoder_calls += 1
        prompt = self.on_slice(prompt)
        seen = self.truth[self._k]
        mask = np.zeros(seen.shape, dtype=bool)
        if prompt.box is not None:
            x0, y0, x1, y1 = (int(round(v)) for v in prompt.box)
            mask[y0 : y1 + 1, x0 : x1 + 1] = seen[y0 : y1 + 1, x0 : x1 + 1]
        mask = self.as_seen(mask)
        return Prediction(mask=mask, score=self.scores.get(self._k, 0.95))
