"""What every SAM-family adapter shares: weights loading, the cache-aware ``set_image``, and the decoder path.

LiteMedSAM, SAM and MedSAM differ only in their image encoder and their input transform; they share SAM's
prompt encoder and mask decoder (same code, same 256-channel embedding). So an adapter implements two
things, ``_encode(image) -> EncodedImage`` and optionally ``_check_prompt``, and this module does the rest:
coordinate mapping into the model's input frame, the prompt encoder + mask decoder call with
``multimask_output=False`` (whose IoU head becomes ``Prediction.score``), and mapping the low-resolution
logits back to the original pixels (threshold at logit 0, i.e. probability 0.5).

Torch is imported at module level here: this module is only imported by the adapters, which are imported
lazily by ``factory.create_segmenter``.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError, ModelError
from .base import ModelIdentity, Prediction, Prompt2D, SegmenterStats, points_array
from .cache import EmbeddingCache

if TYPE_CHECKING:
    from .disk_cache import DiskEmbeddingStore


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
    """One encoder output and the frame it belongs to: what the embedding cache stores."""

    embedding: torch.Tensor  # (1, C, h, w) on the decoder's device
    frame: InputFrame

    @property
    def nbytes(self) -> int:
        return self.embedding.element_size() * self.embedding.nelement()


def resolve_device(device: str) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N``; CUDA only where torch sees a GPU (else an actionable InputError)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"Unknown device {device!r}: use 'cpu' or 'cuda' (or 'cuda:N').") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(
            f"Device {device!r} was requested but this torch build sees no CUDA GPU: use device 'cpu' "
            "(CLI: --device cpu) or install a CUDA build of torch."
        )
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"Device {device!r} is not supported: use 'cpu' or 'cuda'.")
    return dev


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB chunks (weights files reach 2.5 GB)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_state_dict(path: Path, what: str) -> dict[str, torch.Tensor]:
    """Read a checkpoint with ``weights_only=True`` (no arbitrary pickle) and return its tensor state dict.

    Accepts a bare state dict or the usual training wrappers ``{"model": ...}`` / ``{"state_dict": ...}``.
    """
    if not path.is_file():
        raise ModelError(f"{what} checkpoint {path} does not exist: check the path, or download the weights first.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" in str(exc):  # the weights-only unpickler met a class or function
            raise ModelError(
                f"{what} checkpoint {path} holds Python objects other than tensors and was refused "
                "(checkpoints are only read with torch.load(weights_only=True)): use a plain state-dict checkpoint."
            ) from exc
        raise ModelError(f"{what} checkpoint {path} is not a readable torch file: it is damaged; download it again.") from exc
    except Exception as exc:  # torch raises RuntimeError, EOFError, zipfile errors ... for damaged files
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(
            f"{what} checkpoint {path} could not be read ({first_line}): the file is damaged; download it again."
        ) from exc
    for wrapper in ("model", "state_dict"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(wrapper), dict):
            checkpoint = checkpoint[wrapper]
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ModelError(f"{what} checkpoint {path} is not a state dict of tensors: use the model's released .pth file.")
    return checkpoint


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


def logits_to_original(low_res: torch.Tensor, frame: InputFrame) -> torch.Tensor:
    """Map the decoder's (1, 1, h, w) logits back to the original (H, W) pixels.

    Where the image fills the whole input (LiteMedSAM on a square slice, MedSAM always) the logits are
    resized directly, as the official LiteMedSAM and MedSAM inference do; otherwise they are brought to the
    input frame, cropped to the un-padded part and resized, as segment-anything's ``postprocess_masks`` does.
    """
    size = frame.input_size
    h, w = frame.resized_hw
    if (h, w) != (size, size):
        if tuple(low_res.shape[-2:]) != (size, size):
            low_res = F.interpolate(low_res, size=(size, size), mode="bilinear", align_corners=False)
        low_res = low_res[..., :h, :w]
    logits = F.interpolate(low_res, size=frame.original_hw, mode="bilinear", align_corners=False)
    return logits[0, 0]


class PromptableSegmenter:
    """The two-step API (``set_image`` then cheap ``predict``) around SAM's prompt encoder and mask decoder.

    Not thread-safe: the current image is state between calls, so a server serialises requests per instance
    (the embedding cache itself may be shared).
    """

    identity: ModelIdentity
    stats: SegmenterStats

    def __init__(
        self,
        *,
        identity: ModelIdentity,
        prompt_encoder: torch.nn.Module,
        mask_decoder: torch.nn.Module,
        device: torch.device,
        cache: EmbeddingCache,
        cache_namespace: Hashable,
    ) -> None:
        self.identity = identity
        self.stats = SegmenterStats()
        self.cache = cache
        self.device = device
        self._prompt_encoder = prompt_encoder.eval().to(device)
        self._mask_decoder = mask_decoder.eval().to(device)
        self._cache_namespace = cache_namespace
        self._encoded: EncodedImage | None = None
        self.store: DiskEmbeddingStore | None = None
        """Embeddings kept on disk across runs (``disk_cache``); ``None``: memory only. Set by ``use_store``."""
        with torch.inference_mode():  # the positional encoding of the embedding grid is a constant
            self._dense_pe = self._prompt_encoder.get_dense_pe()

    # -- what adapters implement -------------------------------------------------------------------------
    def _encode(self, image: np.ndarray) -> EncodedImage:
        raise NotImplementedError

    def _check_prompt(self, prompt: Prompt2D) -> Prompt2D:
        """Validate or adapt a prompt before decoding (LiteMedSAM refuses points without a box)."""
        return prompt

    def _run_decoder(
        self, embedding: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask decoder -> (low-resolution logits (1, 1, h, w), predicted IoU (1, 1)); one mask, not three."""
        return self._mask_decoder(
            image_embeddings=embedding,
            image_pe=self._dense_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )

    def _box_to_input(self, box: np.ndarray, frame: InputFrame) -> np.ndarray:
        sx, sy = frame.scale_xy
        return box * np.array([sx, sy, sx, sy], dtype=np.float32)

    def use_store(self, root: str | Path, max_bytes: int, runtime: str = "") -> None:
        """Keep embeddings on disk under ``root`` too (at most ``max_bytes``; 0 turns the store off)."""
        from .disk_cache import DiskEmbeddingStore

        namespace = (*_as_tuple(self._cache_namespace), runtime)
        self.store = DiskEmbeddingStore(root, namespace, max_bytes) if max_bytes > 0 else None

    # -- the public two-step API -------------------------------------------------------------------------
    def set_image(self, image: np.ndarray, cache_key: Hashable | None = None) -> None:
        """Encode ``image``, or reuse the embedding cached under ``cache_key`` (then the encoder does not run).

        The caller guarantees that one key always names the same pixels (volume hash, axis, slice, window);
        an entry whose image size differs from ``image`` is treated as stale and encoded again.
        """
        image = check_image(image)
        key = None if cache_key is None else (self._cache_namespace, cache_key)
        if key is not None:
            cached = self.cache.get(key)
            if cached is not None and cached.frame.original_hw == image.shape[:2]:
                self.stats.cache_hits += 1
                self._encoded = cached
                return
            stored = self._load_stored(key, image.shape[:2])
            if stored is not None:
                self.stats.cache_hits += 1
                self.stats.store_hits += 1
                self.cache.put(key, stored, stored.nbytes)
                self._encoded = stored
                return
        start = perf_counter()
        encoded = self._encode(image)
        self.stats.encoder_calls += 1
        self.stats.encoder_seconds += perf_counter() - start
        if key is not None:
            self.cache.put(key, encoded, encoded.nbytes)
            if self.store is not None:
                self.store.save(key, encoded.embedding.detach().cpu().numpy(), _frame_fields(encoded.frame))
        self._encoded = encoded

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
        return EncodedImage(torch.from_numpy(embedding).to(self.device), frame)

    def predict(self, prompt: Prompt2D) -> Prediction:
        """Mask and predicted IoU for ``prompt`` on the current image (prompt encoder + mask decoder only)."""
        if self._encoded is None:
            raise InputError("No image is set: call set_image(image) before predict(prompt).")
        start = perf_counter()
        prompt = self._check_prompt(prompt)
        frame = self._encoded.frame
        height, width = frame.original_hw
        boxes = points = None
        if prompt.box is not None:
            box = self._box_to_input(clip_box(prompt.box, height, width), frame)
            boxes = torch.as_tensor(box, device=self.device).reshape(1, 1, 4)
        if prompt.points:
            coords = points_array(prompt.points)
            check_points(coords, height, width)
            coords = coords * np.asarray(frame.scale_xy, dtype=np.float32)
            labels = np.asarray(prompt.labels, dtype=np.int64)
            points = (
                torch.as_tensor(coords, device=self.device)[None],
                torch.as_tensor(labels, device=self.device)[None],
            )
        with torch.inference_mode():
            sparse, dense = self._prompt_encoder(points=points, boxes=boxes, masks=None)
            low_res, iou = self._run_decoder(self._encoded.embedding, sparse, dense)
            logits = logits_to_original(low_res.float(), frame)
            mask = (logits > 0).cpu().numpy()
            score = float(iou[0, 0])
        self.stats.decoder_calls += 1
        self.stats.decoder_seconds += perf_counter() - start
        return Prediction(mask=mask, score=score)


def cache_root() -> Path:
    """Where derived files (ONNX exports) live: ``$MEDSEG_CACHE_DIR``, else ``~/.cache/medseg-reasoning``."""
    configured = os.environ.get("MEDSEG_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "medseg-reasoning"


def _frame_fields(frame: InputFrame) -> dict[str, int]:
    return {
        "original_h": frame.original_hw[0],
        "original_w": frame.original_hw[1],
        "resized_h": frame.resized_hw[0],
        "resized_w": frame.resized_hw[1],
        "input_size": frame.input_size,
    }


def _as_tuple(value: Hashable) -> tuple:
    return value if isinstance(value, tuple) else (value,)
