"""The synthetic grounding task of issue #18's "proof that it learns": one bright ellipse on structured noise.

Each sample is a grey image (H, W, 3 uint8) with one bright, rotated ellipse of random size and place on a smooth
random background plus fine noise; its truth is the ellipse's mask and its tight box in pixel edges
``[x0, y0, x1, y1]`` (``x1 = last column + 1``: the ``pixels`` / ``qwen2.5-vl`` frame of an image the processor
does not resize). The question is always :data:`QUESTION`, so a model can only score above the best constant box
(:func:`best_constant_box`) by looking at the image.

Generated from a seed with numpy alone, so the training test, the benchmark and anyone else get the same images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

QUESTION = "Where is the lesion?"


@dataclass(frozen=True)
class GroundingSet:
    """``n`` samples: ``images`` (n, H, W, 3) uint8, ``masks`` (n, H, W) bool, ``boxes`` (n, 4) int pixel edges."""

    images: np.ndarray
    masks: np.ndarray
    boxes: np.ndarray

    def __len__(self) -> int:
        return len(self.boxes)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """A random field varying over ``size / cells`` pixels (bilinear upsampling of a coarse grid), in [-1, 1]."""
    coarse = rng.uniform(-1.0, 1.0, (cells + 1, cells + 1))
    t = np.linspace(0, cells, size)
    i0 = np.minimum(t.astype(int), cells - 1)
    f = t - i0
    rows = coarse[i0] * (1 - f)[:, None] + coarse[i0 + 1] * f[:, None]
    return rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]


def make_grounding_set(
    n: int, seed: int, size: int = 112, axes: tuple[float, float] = (0.06, 0.22), margin: int = 2
) -> GroundingSet:
    """``n`` images ``size`` x ``size``; ellipse semi-axes uniform in ``axes`` (fractions of ``size``), any angle,
    centre uniform where the whole ellipse stays ``margin`` pixels inside the image."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    masks = np.empty((n, size, size), dtype=bool)
    boxes = np.empty((n, 4), dtype=np.int64)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    for k in range(n):
        background = 95 + 30 * _smooth_noise(rng, size, 4) + 12 * _smooth_noise(rng, size, 14)
        a, b = rng.uniform(*axes, 2) * size
        angle = rng.uniform(0, np.pi)
        c, s = np.cos(angle), np.sin(angle)
        ex, ey = np.hypot(a * c, b * s), np.hypot(a * s, b * c)  # half extents of the rotated ellipse
        cx = rng.uniform(margin + ex, size - margin - ex)
        cy = rng.uniform(margin + ey, size - margin - ey)
        u, v = (xx - cx) * c + (yy - cy) * s, -(xx - cx) * s + (yy - cy) * c
        mask = (u / a) ** 2 + (v / b) ** 2 <= 1
        lesion = rng.uniform(70, 100) + 8 * _smooth_noise(rng, size, 10)
        grey = background + mask * lesion + rng.normal(0, 6, (size, size))
        images[k] = np.clip(grey, 0, 255).astype(np.uint8)[..., None]
        masks[k] = mask
        rows, cols = np.nonzero(mask)
        boxes[k] = (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
    return GroundingSet(images, masks, boxes)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes ``a`` (..., 4) and ``b`` (..., 4) in pixel edges, broadcast; 0 where a box is empty."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    area_a = np.clip(a[..., 2] - a[..., 0], 0, None) * np.clip(a[..., 3] - a[..., 1], 0, None)
    area_b = np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)
    union = area_a + area_b - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def best_constant_box(boxes: np.ndarray, size: int, step: int = 2) -> tuple[np.ndarray, float]:
    """The one box with the highest mean IoU over ``boxes``, and that mean: the baseline a model must beat.

    Every box whose corners lie on a ``4 * step`` pixel lattice is scored, then each coordinate is refined on the
    ``step`` lattice holding the others: the optimum up to the lattice (IoU does not factorise over x and y, so
    neither the mean box nor separate searches per axis would do).
    """
    edges = np.arange(0, size + 1, step)
    lo, hi = np.meshgrid(edges, edges, indexing="ij")
    keep = hi > lo
    spans = np.stack([lo[keep], hi[keep]], axis=1)  # every [start, end) on the lattice
    best = (np.zeros(4), -1.0)
    coarse = spans[(spans % (step * 4) == 0).all(axis=1)]
    for xs in coarse:
        cand = np.concatenate([np.broadcast_to(xs, (len(coarse), 2)), coarse], axis=1)[:, [0, 2, 1, 3]]
        scores = box_iou(cand[:, None, :], boxes[None, :, :]).mean(axis=1)
        n = int(scores.argmax())
        if scores[n] > best[1]:
            best = (cand[n], float(scores[n]))
    for _ in range(3):  # refine each coordinate on the fine lattice, holding the others
        for c in range(4):
            cand = np.repeat(best[0][None, :], len(edges), axis=0)
            cand[:, c] = edges
            scores = box_iou(cand[:, None, :], boxes[None, :, :]).mean(axis=1)
            n = int(scores.argmax())
            if scores[n] > best[1]:
                best = (cand[n], float(scores[n]))
    return best[0].astype(int), best[1]


def answer_text(box: Sequence[int]) -> str:
    """The training target for one box: the shortest answer the product's parser reads (``{"box": [...]}``)."""
    return '{"box":[' + ",".join(str(int(v)) for v in box) + "]}"


def parse_settings(pairs: Sequence[str]) -> dict:
    """``KEY=VALUE`` pairs of the benchmarks' ``--set`` options: each value a Python literal where it reads as one
    (``2e-3``, ``[2, 3, 3]``, ``True``), else the string."""
    import ast

    out: dict = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out
