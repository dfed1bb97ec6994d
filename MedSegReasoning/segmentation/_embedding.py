"""The torch-free half of every SAM-family adapter: the cache-aware ``set_image``, ``prefetch`` and prompt checks.

Why apart from ``_sam_core`` (torch): LiteMedSAM's CPU runtimes (OpenVINO, ONNX Runtime) need no torch once their
graphs are exported, and importing torch (about 1 s) plus the vendored model code (timm, torchvision, ``torch._dynamo``:
about 2 s more) was most of ``ask``'s start-up. Everything a segmenter does around its two models lives here, so an
adapter whose runtime is torch-free never imports torch at all.

Encoding ahead (``encode_ahead``): ``prefetch`` encodes an image into the cache without touching the image that
``set_image`` set, under the segmenter's ``SegmenterLock``: it only runs while no foreground call (``set_image``,
``predict``) runs or waits, and a foreground call that arrives interrupts a running background encoder call (OpenVINO
and ONNX Runtime stop within tens of milliseconds), so the round never waits for a slice it did not ask for.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import TYPE_CHECKING, Any

import numpy as np

from ..wire.errors import InputError
from .base import ModelIdentity, Prediction, Prompt2D, SegmenterStats, points_array
from .cache import EmbeddingCache

if TYPE_CHECKING:
    from .disk_cache import DiskEmbeddingStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputFrame:
    """How an original image sits in the model's square input: resized to ``resized_hw``, padded to ``input_size``.

    The image occupies the top-left ``resized_hw`` corner (SAM pads bottom/right). Scale factors are per axis
    because MedSAM stretches to a square instead of keeping the aspect ratio.
    """

    original_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    input_size: int

    @property
    def scale_xy(self) -> tuple[float, float]:
        return self.resized_hw[1] / self.original_hw[1], self.resized_hw[0] / self.original_hw[0]


@dataclass(frozen=True)
class EncodedImage:
    """One encoder output and the frame it belongs to: what the embedding cache stores.

    ``embedding`` is (1, C, h, w) float32: a numpy array (torch-free runtimes) or a torch tensor on the decoder's
    device (the torch adapters); both have ``nbytes``.
    """

    embedding: Any
    frame: InputFrame

    @property
    def nbytes(self) -> int:
        return int(self.embedding.nbytes)


@dataclass(frozen=True)
class CpuDevice:
    """``device="cpu"`` resolved without importing torch (``str()`` and ``.type`` as ``torch.device`` gives them)."""

    type: str = "cpu"

    def __str__(self) -> str:
        return self.type


def resolve_device(device: str):
    """``cpu`` without torch; ``cuda``/``cuda:N`` through ``_torch_device.resolve_device`` (torch decides what it sees)."""
    if str(device).strip().lower() == "cpu":
        return CpuDevice()
    from ._torch_device import resolve_device as resolve_torch_device

    return resolve_torch_device(device)


def cache_root() -> Path:
    """Where derived files (ONNX exports) live: ``$MEDSEG_CACHE_DIR``, else ``~/.cache/medseg-reasoning``."""
    configured = os.environ.get("MEDSEG_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "medseg-reasoning"


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB chunks (weights files reach 2.5 GB)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_image(image: np.ndarray) -> np.ndarray:
    """The segmenters take what the windowing step produces: an (H, W, 3) uint8 image."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or min(image.shape[:2]) < 2:
        raise InputError(
            f"The segmenter needs an (H, W, 3) uint8 image, got shape {image.shape} and dtype {image.dtype}: "
            "window the slice to RGB first (MedSegReasoning.volume)."
        )
    return image


def clip_box(box: tuple[float, float, float, float], height: int, width: int) -> np.ndarray:
    """Clip an inclusive ``(x0, y0, x1, y1)`` box to the image; reject inverted or fully outside boxes."""
    x0, y0, x1, y1 = (float(v) for v in box)
    if x1 < x0 or y1 < y0:
        raise InputError(f"Box {box} is inverted: give (x0, y0, x1, y1) with x0 <= x1 and y0 <= y1.")
    clipped = np.array([max(x0, 0.0), max(y0, 0.0), min(x1, width - 1.0), min(y1, height - 1.0)], dtype=np.float32)
    if clipped[2] < clipped[0] or clipped[3] < clipped[1]:
        raise InputError(f"Box {box} lies outside the {width}x{height} image: place it on the structure.")
    return clipped


def check_points(points: np.ndarray, height: int, width: int) -> None:
    outside = (points[:, 0] < 0) | (points[:, 0] > width - 1) | (points[:, 1] < 0) | (points[:, 1] > height - 1)
    if outside.any():
        raise InputError(
            f"Point {tuple(points[outside][0].tolist())} lies outside the {width}x{height} image: "
            "points are (x, y) pixel positions on the slice."
        )


# -- interrupting a background encoder call ----------------------------------------------------------------------
class EncodeInterrupted(Exception):
    """A background encoder call stopped because a foreground call needed the segmenter (never reaches a user)."""


class Interrupt:
    """A flag that stops a running encoder call: the runtime registers how to stop itself while it runs.

    ``set`` may come from any thread; a stop function registered after ``set`` is called at once, so a runtime that
    starts late still stops.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._set = False
        self._stops: list[Callable[[], None]] = []

    def set(self) -> None:
        with self._lock:
            self._set = True
            stops = list(self._stops)
        for stop in stops:
            _call_quietly(stop)

    def is_set(self) -> bool:
        return self._set

    @contextmanager
    def stops(self, stop: Callable[[], None]) -> Iterator[None]:
        """While the block runs, ``set`` calls ``stop`` (at once where the flag is already set)."""
        with self._lock:
            self._stops.append(stop)
            already = self._set
        if already:
            _call_quietly(stop)
        try:
            yield
        finally:
            with self._lock:
                self._stops.remove(stop)


def _call_quietly(stop: Callable[[], None]) -> None:
    try:
        stop()
    except Exception:  # a runtime that cannot stop just finishes its call: slower, never wrong
        log.debug("stopping an encoder call failed", exc_info=True)


class SegmenterLock:
    """One segmenter call at a time, foreground first.

    A foreground call (the round's ``set_image``/``predict``) waits only for another foreground call or for a running
    background call to stop, which it interrupts. A background call (``prefetch``) starts only while no foreground
    call runs or waits. Foreground holds are re-entrant per thread.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._owner: int | None = None
        self._depth = 0
        self._waiting = 0
        self._background: Interrupt | None = None
        self._released = float("-inf")

    @contextmanager
    def foreground(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._cond:
            if self._owner == me:
                self._depth += 1
            else:
                self._waiting += 1
                try:
                    while self._owner is not None or self._background is not None:
                        if self._background is not None:
                            self._background.set()
                        self._cond.wait()
                finally:
                    self._waiting -= 1
                self._owner, self._depth = me, 1
        try:
            yield
        finally:
            with self._cond:
                self._depth -= 1
                if self._depth == 0:
                    self._owner = None
                    self._released = time.monotonic()
                    self._cond.notify_all()

    @contextmanager
    def background(self, interrupt: Interrupt, min_idle_s: float = 0.0, poll_s: float = 0.05) -> Iterator[bool]:
        """Yields ``True`` once no foreground call runs or waits and none ended in the last ``min_idle_s`` seconds;
        ``False`` if ``interrupt`` was set first."""
        with self._cond:
            while True:
                if interrupt.is_set():
                    break
                idle = time.monotonic() - self._released
                if self._owner is None and self._background is None and not self._waiting and idle >= min_idle_s:
                    self._background = interrupt
                    break
                self._cond.wait(min(poll_s, max(min_idle_s - idle, 0.001)) if idle < min_idle_s else poll_s)
        if self._background is not interrupt:
            yield False
            return
        try:
            yield True
        finally:
            with self._cond:
                self._background = None
                self._cond.notify_all()

    @property
    def foreground_waiting(self) -> bool:
        return self._waiting > 0

    @property
    def background_running(self) -> bool:
        return self._background is not None


# -- the segmenter base ------------------------------------------------------------------------------------------
class EmbeddingSegmenter:
    """The two-step API (``set_image`` then cheap ``predict``) around any encoder and decoder, plus ``prefetch``.

    Adapters implement ``_encode`` (image -> ``EncodedImage``; may honour an ``Interrupt``) and ``_decode`` (the
    current embedding + a prompt already in the model's input frame -> mask on the original pixels and score), and
    optionally ``_check_prompt``, ``_box_to_input`` and the two store conversions. Calls are serialised by
    ``self.lock`` (see ``SegmenterLock``); the image set by ``set_image`` is state between calls, so a server still
    runs one round's ``set_image`` + ``predict`` pair as one job (the embedding cache itself may be shared).
    """

    identity: ModelIdentity
    stats: SegmenterStats

    def __init__(self, *, identity: ModelIdentity, cache: EmbeddingCache, cache_namespace: Hashable) -> None:
        self.identity = identity
        self.stats = SegmenterStats()
        self.cache = cache
        self.lock = SegmenterLock()
        self._cache_namespace = cache_namespace
        self._encoded: EncodedImage | None = None
        self.store: DiskEmbeddingStore | None = None
        """Embeddings kept on disk across runs (``disk_cache``); ``None``: memory only. Set by ``use_store``."""

    # -- what adapters implement -------------------------------------------------------------------------
    def _encode(self, image: np.ndarray, interrupt: Interrupt | None = None) -> EncodedImage:
        raise NotImplementedError

    def _decode(
        self, encoded: EncodedImage, box: np.ndarray | None, points: np.ndarray | None, labels: np.ndarray | None
    ) -> tuple[np.ndarray, float]:
        """Mask (bool, original pixels) and predicted IoU; ``box``/``points`` are already in the input frame."""
        raise NotImplementedError

    def _check_prompt(self, prompt: Prompt2D) -> Prompt2D:
        """Validate or adapt a prompt before decoding (LiteMedSAM refuses points without a box)."""
        return prompt

    def _box_to_input(self, box: np.ndarray, frame: InputFrame) -> np.ndarray:
        sx, sy = frame.scale_xy
        return box * np.array([sx, sy, sx, sy], dtype=np.float32)

    def _embedding_to_numpy(self, embedding: Any) -> np.ndarray:
        """The embedding as a host float32 array, for the disk store (torch adapters convert their tensors)."""
        return np.asarray(embedding, dtype=np.float32)

    def _embedding_from_numpy(self, array: np.ndarray) -> Any:
        """An embedding read back from the disk store, as ``_encode`` would have returned it."""
        return array

    # -- the store -------------------------------------------------------------------------------------------
    def use_store(self, root: str | Path, max_bytes: int, runtime: str = "") -> None:
        """Keep embeddings on disk under ``root`` too (at most ``max_bytes``; 0 turns the store off)."""
        from .disk_cache import DiskEmbeddingStore

        namespace = (*_as_tuple(self._cache_namespace), runtime)
        self.store = DiskEmbeddingStore(root, namespace, max_bytes) if max_bytes > 0 else None

    # -- the public API --------------------------------------------------------------------------------------
    def set_image(self, image: np.ndarray, cache_key: Hashable | None = None) -> None:
        """Encode ``image``, or reuse the embedding cached under ``cache_key`` (then the encoder does not run).

        The caller guarantees that one key always names the same pixels (volume hash, axis, slice, window);
        an entry whose image size differs from ``image`` is treated as stale and encoded again.
        """
        image = check_image(image)
        with self.lock.foreground():
            key = None if cache_key is None else (self._cache_namespace, cache_key)
            found = self._cached(key, image.shape[:2]) if key is not None else None
            if found is not None:
                self._encoded = found
                return
            encoded = self._timed_encode(image, None)
            self._keep(key, encoded)
            self._encoded = encoded

    def prefetch(
        self, image: np.ndarray, cache_key: Hashable, interrupt: Interrupt | None = None, *, min_idle_s: float = 0.0
    ) -> bool:
        """Put the embedding of ``image`` in the cache under ``cache_key``, leaving the current image as it is.

        Runs in the background (``SegmenterLock.background``): only while no ``set_image``/``predict`` runs or waits
        (nor ended in the last ``min_idle_s`` seconds), and stopped by the next one. ``True`` when the embedding is cached now (it was, or has been encoded; a slice
        already cached counts no cache hit, since nobody used it yet), ``False`` when interrupted first.
        """
        image = check_image(image)
        interrupt = interrupt if interrupt is not None else Interrupt()
        key = (self._cache_namespace, cache_key)
        with self.lock.background(interrupt, min_idle_s) as running:
            if not running:
                return False
            cached = self.cache.peek(key)
            if cached is not None and cached.frame.original_hw == image.shape[:2]:
                return True
            stored = self._load_stored(key, image.shape[:2])
            if stored is not None:
                self.cache.put(key, stored, stored.nbytes)
                return True
            try:
                encoded = self._timed_encode(image, interrupt)
            except EncodeInterrupted:
                return False
            self._keep(key, encoded)
            return True

    def predict(self, prompt: Prompt2D) -> Prediction:
        """Mask and predicted IoU for ``prompt`` on the current image (prompt encoder + mask decoder only)."""
        with self.lock.foreground():
            if self._encoded is None:
                raise InputError("No image is set: call set_image(image) before predict(prompt).")
            start = perf_counter()
            prompt = self._check_prompt(prompt)
            encoded = self._encoded
            frame = encoded.frame
            height, width = frame.original_hw
            box = points = labels = None
            if prompt.box is not None:
                box = self._box_to_input(clip_box(prompt.box, height, width), frame)
            if prompt.points:
                coords = points_array(prompt.points)
                check_points(coords, height, width)
                points = coords * np.asarray(frame.scale_xy, dtype=np.float32)
                labels = np.asarray(prompt.labels, dtype=np.int64)
            mask, score = self._decode(encoded, box, points, labels)
            self.stats.decoder_calls += 1
            self.stats.decoder_seconds += perf_counter() - start
            return Prediction(mask=mask, score=score)

    # -- helpers ---------------------------------------------------------------------------------------------
    def _cached(self, key: Hashable, original_hw: tuple[int, int]) -> EncodedImage | None:
        """The embedding of ``key`` from memory, else from the disk store (then kept in memory); counted as a hit."""
        cached = self.cache.get(key)
        if cached is not None and cached.frame.original_hw == original_hw:
            self.stats.cache_hits += 1
            return cached
        stored = self._load_stored(key, original_hw)
        if stored is not None:
            self.stats.cache_hits += 1
            self.stats.store_hits += 1
            self.cache.put(key, stored, stored.nbytes)
            return stored
        return None

    def _timed_encode(self, image: np.ndarray, interrupt: Interrupt | None) -> EncodedImage:
        start = perf_counter()
        encoded = self._encode(image, interrupt)
        self.stats.encoder_calls += 1
        self.stats.encoder_seconds += perf_counter() - start
        return encoded

    def _keep(self, key: Hashable | None, encoded: EncodedImage) -> None:
        if key is None:
            return
        self.cache.put(key, encoded, encoded.nbytes)
        if self.store is not None:
            self.store.save(key, self._embedding_to_numpy(encoded.embedding), frame_fields(encoded.frame))

    def _load_stored(self, key: Hashable, original_hw: tuple[int, int]) -> EncodedImage | None:
        """The embedding of ``key`` from the disk store, when it holds one for an image of this size."""
        if self.store is None:
            return None
        found = self.store.load(key)
        if found is None:
            return None
        embedding, fields = found
        frame = InputFrame(
            original_hw=(fields["original_h"], fields["original_w"]),
            resized_hw=(fields["resized_h"], fields["resized_w"]),
            input_size=fields["input_size"],
        )
        if frame.original_hw != tuple(original_hw):
            return None
        return EncodedImage(self._embedding_from_numpy(embedding), frame)


def frame_fields(frame: InputFrame) -> dict[str, int]:
    return {
        "original_h": frame.original_hw[0],
        "original_w": frame.original_hw[1],
        "resized_h": frame.resized_hw[0],
        "resized_w": frame.resized_hw[1],
        "input_size": frame.input_size,
    }


def _as_tuple(value: Hashable) -> tuple:
    return value if isinstance(value, tuple) else (value,)


# -- mapping logits back, in numpy ---------------------------------------------------------------------------
def _linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``."""
    source = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    source = np.maximum(source, 0.0)
    lower = np.minimum(np.floor(source).astype(np.int64), n_in - 1)
    upper = np.minimum(lower + 1, n_in - 1)
    return lower, upper, (source - lower).astype(np.float32)


def resize_bilinear(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """A 2D float32 array resized as torch's bilinear ``interpolate`` (half-pixel centres, no antialiasing) does."""
    r0, r1, fr = _linear_taps(array.shape[0], height)
    c0, c1, fc = _linear_taps(array.shape[1], width)
    rows = array[r0] * (1.0 - fr)[:, None] + array[r1] * fr[:, None]
    return rows[:, c0] * (1.0 - fc) + rows[:, c1] * fc


def logits_to_mask(low_res: np.ndarray, frame: InputFrame) -> np.ndarray:
    """The decoder's (h, w) logits as a bool mask on the original pixels (logit > 0), torch-free.

    Where the image fills the whole input the logits are resized directly (as the official LiteMedSAM and MedSAM
    inference do); otherwise they are brought to the input frame, cropped to the un-padded part and resized, as
    segment-anything's ``postprocess_masks`` does (``_sam_core.logits_to_original`` is the torch twin).
    """
    logits = np.asarray(low_res, dtype=np.float32)
    size = frame.input_size
    h, w = frame.resized_hw
    if (h, w) != (size, size):
        if logits.shape != (size, size):
            logits = resize_bilinear(logits, size, size)
        logits = logits[:h, :w]
    return resize_bilinear(logits, *frame.original_hw) > 0
