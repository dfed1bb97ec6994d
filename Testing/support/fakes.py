"""The tests' one stand-in segmenter: deterministic answers from a known truth. Never shipped, never a default.

``FakeSegmenter`` sees only what a real segmenter sees: the image given to ``set_image`` and the prompt given to
``predict``. It is told the voxels of the volume it will be shown, and finds from the image alone which slice it
is and which part of it (the pipeline renders a slice through a window, a monotone map from voxel values to grey,
and may crop it around a small prompt). The cache key is used only as what it promises to be, an opaque name of
the embedding, never taken apart, so its layout can change without touching a test.

An ``answer`` policy says what the fake model returns for a prompt on slice ``k`` (in the whole slice's pixels):
``truth_in_box`` (the true mask cut to the box) or ``LabelAnswers`` (a label map, with leaks), or a test's own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable

import numpy as np

from MedSegReasoning.segmentation.base import ModelIdentity, Prediction, Prompt2D, SegmenterStats
from MedSegReasoning.volume.core import Geometry, Volume
from MedSegReasoning.volume.windowing import Window, render_slice

Answer = Callable[[int, Prompt2D], Prediction]
"""What the fake model answers for ``prompt`` on slice ``k``: a mask on the whole slice and a score."""


class SliceFinder:
    """Which slice of ``voxels`` (``[k, j, i]``, or a list of such volumes of one shape), and which part of it, a
    rendered image shows.

    With the ``window`` the pipeline renders through, an image is a window of slice ``k`` at ``(y0, x0)`` when it
    equals that part of the slice rendered by ``render_slice``. Without it, when its grey values are a
    non-decreasing function of the voxel values there (equal voxels, equal grey; a brighter pixel, a higher voxel):
    of those matches the most faithful are kept (fewest voxel values merged into one grey level, so a uniform image
    is not taken for a window that flattens a slice's structures). Cheap pixel tests prune the candidates, the full
    test confirms them. Slices that render alike all come back, for the caller to check that its answer is the
    same on each: a test whose answers differ between such slices must give the window, or slices that differ.
    """

    def __init__(self, voxels: np.ndarray | list[np.ndarray], window: Window | None = None) -> None:
        stack = [np.asarray(v) for v in voxels] if isinstance(voxels, list | tuple) else [np.asarray(voxels)]
        if any(v.ndim != 3 or v.shape != stack[0].shape for v in stack):
            raise ValueError("the fake segmenter needs [k, j, i] voxels (of one shape, for several volumes)")
        self.slices = stack[0].shape[0]  # several volumes: slice k of each is slice k % self.slices
        self.voxels = np.concatenate(stack)
        self.rendered: np.ndarray | None = None
        if window is not None:
            volume = Volume(self.voxels, Geometry.from_arrays((0, 0, 0), (1, 1, 1), np.eye(3)), modality="CT")
            self.rendered = np.stack([render_slice(volume, k, window)[..., 0] for k in range(self.voxels.shape[0])])
        reference = self.voxels if self.rendered is None else self.rendered
        self._flat = reference.reshape(reference.shape[0], -1)

    def find(self, image: np.ndarray) -> list[tuple[int, int, int]]:
        grey = np.asarray(image)[..., 0] if np.ndim(image) == 3 else np.asarray(image)
        h, w = grey.shape
        nk, ny, nx = self.voxels.shape
        assert h <= ny and w <= nx, f"a {h}x{w} image is no window of {ny}x{nx} slices (resampled?)"
        rows, cols = np.mgrid[: ny - h + 1, : nx - w + 1]
        bases = (rows * nx + cols).ravel()
        probe = np.random.default_rng(0).choice(h * w, size=min(256, h * w), replace=False)
        found: list[tuple[int, int, int, int]] = []
        for k in range(nk):
            flat, alive = self._flat[k], bases
            if self.rendered is not None:
                for n in probe:
                    alive = alive[flat[alive + (n // w) * nx + n % w] == grey.flat[n]]
                    if alive.size == 0:
                        break
            else:
                for lo, hi in self._strict_pairs(grey, nx, probe):
                    alive = alive[flat[alive + lo] < flat[alive + hi]]
                    if alive.size == 0:
                        break
            for base in alive:
                y0, x0 = divmod(int(base), nx)
                if self.rendered is not None:
                    if np.array_equal(self.rendered[k, y0 : y0 + h, x0 : x0 + w], grey):
                        found.append((0, k, y0, x0))
                    continue
                merged = _merged_levels(self.voxels[k, y0 : y0 + h, x0 : x0 + w], grey)
                if merged is not None:
                    found.append((merged, k, y0, x0))
        assert found, "the image is no rendering of any slice of the volume the fake segmenter was given"
        fewest = min(merged for merged, *_ in found)
        kept = [(k % self.slices, y0, x0) for merged, k, y0, x0 in sorted(found) if merged == fewest]
        return list(dict.fromkeys(kept))

    @staticmethod
    def _strict_pairs(grey: np.ndarray, nx: int, probe: np.ndarray) -> list[tuple[int, int]]:
        """Pixel pairs of ``probe`` (as flat offsets in a slice ``nx`` wide) whose grey strictly increases."""
        w = grey.shape[1]
        probe = probe[np.argsort(grey.ravel()[probe], kind="stable")]
        values = grey.ravel()[probe]
        offsets = (probe // w) * nx + probe % w
        return [(int(offsets[n]), int(offsets[n + 1])) for n in range(len(probe) - 1) if values[n] < values[n + 1]]


def _merged_levels(voxels: np.ndarray, grey: np.ndarray) -> int | None:
    """None unless ``grey`` is a non-decreasing function of ``voxels``; else how many voxel values share a grey."""
    v, g = voxels.ravel(), grey.ravel().astype(np.int32)
    order = np.lexsort((g, v))
    v, g = v[order], g[order]
    step = np.diff(g)
    if (step < 0).any() or (step[np.diff(v) == 0] != 0).any():
        return None
    return int(np.count_nonzero(np.diff(v)) - np.count_nonzero(step))


class FakeSegmenter:
    """The ``Segmenter`` interface over an ``answer`` policy, for a volume whose voxels it is told.

    ``window``: the one the pipeline renders through, where the test knows it (``SliceFinder``).
    Records what a test may check: ``encoded`` (the slice of each encoder run; a repeated cache key is a cache hit),
    ``prompts`` (slice and prompt in the slice's pixels, per prediction), ``calls`` and ``stats``. Scripting:
    ``delay_s`` per prediction, ``fail_at`` (1-based prediction that raises like a crashing model), ``gate`` (an
    Event predictions wait for), ``started`` (set at the first prediction).

    Where the image matches several slices (a test volume with identical slices), the answer must be the same on
    all of them, or the fake fails the test: it never guesses. ``encoded`` and ``prompts`` then name the match
    nearest the slice seen before.
    """

    def __init__(
        self,
        voxels: np.ndarray | list[np.ndarray],
        answer: Answer,
        *,
        name: str = "fake",
        window: Window | None = None,
        delay_s: float = 0.0,
        fail_at: int | None = None,
    ) -> None:
        self.identity = ModelIdentity(name=name, weights="none", sha256="0" * 64)
        self.finder = SliceFinder(voxels, window)
        self.answer = answer
        self.delay_s = delay_s
        self.fail_at = fail_at
        self.gate: threading.Event | None = None
        self.started = threading.Event()
        self.stats = SegmenterStats()
        self.encoded: list[int] = []
        self.prompts: list[tuple[int, Prompt2D]] = []
        self.calls = 0
        self._keys: set[Hashable] = set()
        self._matches: list[tuple[int, int, int]] = []
        self._shape: tuple[int, int] = (0, 0)
        self._last_k: int | None = None

    # -- the Segmenter interface ---------------------------------------------------------------------------------

    def set_image(self, image: np.ndarray, cache_key: Hashable | None = None) -> None:
        fresh = cache_key is None or cache_key not in self._keys
        if fresh:
            self.stats.encoder_calls += 1
            if cache_key is not None:
                self._keys.add(cache_key)
        else:
            self.stats.cache_hits += 1
        matches = self.finder.find(image)
        if self._last_k is not None:  # slices that render alike: name the one nearest the slice seen before
            last = self._last_k
            matches.sort(key=lambda m: abs(m[0] - last))
        self._matches, self._shape = matches, image.shape[:2]
        self._last_k = matches[0][0]
        if fresh:
            self.encoded.append(self._last_k)

    def predict(self, prompt: Prompt2D) -> Prediction:
        assert self._matches, "call set_image before predict"
        self.calls += 1
        self.started.set()
        if self.gate is not None:
            self.gate.wait(30)
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise RuntimeError("simulated CUDA error: device-side assert triggered")
        self.stats.decoder_calls += 1
        answers = []
        for k, y0, x0 in self._matches:
            on_slice = _shifted(prompt, x0, y0)
            answer = self.answer(k, on_slice)
            h, w = self._shape
            answers.append((k, on_slice, Prediction(np.asarray(answer.mask)[y0 : y0 + h, x0 : x0 + w], answer.score)))
        k, on_slice, first = answers[0]
        for other_k, _, other in answers[1:]:
            assert other.score == first.score and np.array_equal(other.mask, first.mask), (
                f"slices {k} and {other_k} render alike but the fake's answers differ: "
                "make the test volume's slices distinguishable"
            )
        self.prompts.append((k, on_slice))
        return first


def _shifted(prompt: Prompt2D, dx: float, dy: float) -> Prompt2D:
    """``prompt`` moved by ``(dx, dy)`` pixels: from a crop's pixels to the whole slice's."""
    if dx == 0 and dy == 0:
        return prompt
    box = (
        None if prompt.box is None else (prompt.box[0] + dx, prompt.box[1] + dy, prompt.box[2] + dx, prompt.box[3] + dy)
    )
    points = tuple((x + dx, y + dy) for x, y in prompt.points)
    return Prompt2D(box=box, points=points, labels=prompt.labels)


# -- answer policies -------------------------------------------------------------------------------------------------


def box_mask(prompt: Prompt2D, shape: tuple[int, int]) -> np.ndarray:
    """The prompt's box (inclusive pixel corners, rounded) as a mask; the whole slice when there is no box."""
    inside = np.zeros(shape, dtype=bool)
    if prompt.box is None:
        inside[:] = True
        return inside
    x0, y0, x1, y1 = (int(round(v)) for v in prompt.box)
    inside[max(y0, 0) : y1 + 1, max(x0, 0) : x1 + 1] = True
    return inside


def truth_in_box(truth: np.ndarray, scores: dict[int, float] | None = None, *, need_box: bool = False) -> Answer:
    """The true mask of the slice cut to the prompt's box (nothing without a box); ``scores`` per slice (default
    0.95) lets a test lower the model's confidence where it wants propagation to stop."""
    scores = scores or {}

    def answer(k: int, prompt: Prompt2D) -> Prediction:
        assert not need_box or prompt.box is not None, "this fake is only ever prompted with a box"
        inside = box_mask(prompt, truth.shape[1:]) if prompt.box is not None else np.zeros(truth.shape[1:], bool)
        return Prediction(mask=truth[k] & inside, score=scores.get(k, 0.95))

    return answer


class LabelAnswers:
    """A box-prompted SAM model on a label map, deterministically.

    A prompt with a foreground point chooses the structure (the label under the point; if that is background, the
    most frequent label in the box) and whether it leaks: without a background point it also takes the labels in
    ``leaks_into[label]``, as SAM bleeds into an adjacent organ of similar intensity until given a negative click.
    Box-only prompts (those propagation makes) follow the last chosen structure. The answer is cut to the box; with
    ``runaway_from``, a leaking box-only prompt on slices from there on spills far beyond its box.
    """

    def __init__(
        self, labels: np.ndarray, leaks_into: dict[int, set[int]] | None = None, runaway_from: int | None = None
    ) -> None:
        self.labels = labels
        self.leaks_into = leaks_into or {}
        self.runaway_from = runaway_from
        self._label = 0
        self._leak = False

    def __call__(self, k: int, prompt: Prompt2D) -> Prediction:
        from scipy import ndimage

        slice_labels = self.labels[k]
        box = box_mask(prompt, slice_labels.shape)
        fg = [p for p, lab in zip(prompt.points, prompt.labels, strict=True) if lab == 1]
        if fg:
            x, y = (int(round(v)) for v in fg[0])
            label = int(slice_labels[y, x])
            if label == 0:
                inside = slice_labels[box]
                inside = inside[inside > 0]
                label = int(np.bincount(inside).argmax()) if inside.size else 0
            self._label = label
            self._leak = not any(lab == 0 for lab in prompt.labels)
        if self.runaway_from is not None and not fg and self._leak and k >= self.runaway_from:
            spill = ndimage.binary_dilation(box, iterations=max(box.sum(axis=1).max() // 4, 1))
            return Prediction(mask=spill, score=0.9)
        wanted = {self._label} | (self.leaks_into.get(self._label, set()) if self._leak else set())
        mask = np.isin(slice_labels, list(wanted)) & box & (self._label > 0)
        return Prediction(mask=mask, score=0.95)


def oracle(voxels: np.ndarray, truth: np.ndarray, scores: dict[int, float] | None = None, **kwargs) -> FakeSegmenter:
    """A fake that answers each box with the true mask of its slice, cut to the box."""
    kwargs.setdefault("name", "oracle")
    return FakeSegmenter(voxels, truth_in_box(truth, scores), **kwargs)


def label_oracle(voxels: np.ndarray, labels: np.ndarray, **kwargs) -> FakeSegmenter:
    """A fake SAM on a label map (``LabelAnswers``: ``leaks_into``, ``runaway_from``)."""
    policy = LabelAnswers(labels, kwargs.pop("leaks_into", None), kwargs.pop("runaway_from", None))
    kwargs.setdefault("name", "label-oracle")
    return FakeSegmenter(voxels, policy, **kwargs)


class ThresholdSegmenter:
    """Any volume: the bright pixels (rendered grey > 160) inside the box, after ``delay_s`` of simulated model time.

    Used where the volume is not known in advance (the benchmark's server child process)."""

    identity = ModelIdentity(name="threshold", weights="none", sha256="0" * 64)

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.stats = SegmenterStats()
        self._image: np.ndarray | None = None

    def set_image(self, image: np.ndarray, cache_key=None) -> None:
        self._image = image[..., 0]

    def predict(self, prompt: Prompt2D) -> Prediction:
        if self.delay_s:
            time.sleep(self.delay_s)
        assert self._image is not None and prompt.box is not None
        x0, y0, x1, y1 = (int(round(v)) for v in prompt.box)
        mask = np.zeros(self._image.shape, dtype=bool)
        mask[y0 : y1 + 1, x0 : x1 + 1] = self._image[y0 : y1 + 1, x0 : x1 + 1] > 160
        return Prediction(mask=mask, score=0.95)
