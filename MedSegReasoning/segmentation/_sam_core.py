"""The torch half of the SAM-family adapters: weights loading, devices, and SAM's prompt encoder + mask decoder.

LiteMedSAM, SAM and MedSAM differ only in their image encoder and their input transform; they share SAM's
prompt encoder and mask decoder (same code, same 256-channel embedding). The cache-aware ``set_image``,
``prefetch`` and the prompt checks live in the torch-free ``_embedding``; ``PromptableSegmenter`` adds the torch
decoder path: the prompt encoder + mask decoder call with ``multimask_output=False`` (whose IoU head becomes
``Prediction.score``), and mapping the low-resolution logits back to the original pixels (threshold at logit 0,
i.e. probability 0.5). An adapter implements ``_encode(image, interrupt) -> EncodedImage`` and optionally
``_check_prompt``.

Torch is imported at module level here: this module is only imported by the torch adapters (segment-anything
checkpoints, LiteMedSAM's ``torch`` backend and its one-time ONNX export), which are imported lazily.
"""

from __future__ import annotations

import pickle
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..wire.errors import ModelError
from ._embedding import (  # noqa: F401  (re-exported: the adapters' shared names)
    EmbeddingSegmenter,
    EncodedImage,
    InputFrame,
    cache_root,
    check_image,
    check_points,
    clip_box,
    file_sha256,
)
from ._torch_device import resolve_device  # noqa: F401  (re-exported for the adapters)
from .base import ModelIdentity
from .cache import EmbeddingCache


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
        raise ModelError(
            f"{what} checkpoint {path} is not a readable torch file: it is damaged; download it again."
        ) from exc
    except Exception as exc:  # torch raises RuntimeError, EOFError, zipfile errors ... for damaged files
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(
            f"{what} checkpoint {path} could not be read ({first_line}): the file is damaged; download it again."
        ) from exc
    for wrapper in ("model", "state_dict"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(wrapper), dict):
            checkpoint = checkpoint[wrapper]
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ModelError(
            f"{what} checkpoint {path} is not a state dict of tensors: use the model's released .pth file."
        )
    return checkpoint


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


class PromptableSegmenter(EmbeddingSegmenter):
    """``EmbeddingSegmenter`` with SAM's prompt encoder and mask decoder run in torch (segment-anything checkpoints)."""

    def __init__(
        self,
        *,
        identity: ModelIdentity,
        prompt_encoder: Any,  # SAM's PromptEncoder (untyped): get_dense_pe() is called on it
        mask_decoder: torch.nn.Module,
        device: torch.device,
        cache: EmbeddingCache,
        cache_namespace: Hashable,
    ) -> None:
        super().__init__(identity=identity, cache=cache, cache_namespace=cache_namespace)
        self.device = device
        self._prompt_encoder = prompt_encoder.eval().to(device)
        self._mask_decoder = mask_decoder.eval().to(device)
        with torch.inference_mode():  # the positional encoding of the embedding grid is a constant
            self._dense_pe = self._prompt_encoder.get_dense_pe()

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

    def _decode(
        self, encoded: EncodedImage, box: np.ndarray | None, points: np.ndarray | None, labels: np.ndarray | None
    ) -> tuple[np.ndarray, float]:
        boxes = None if box is None else torch.as_tensor(box, device=self.device).reshape(1, 1, 4)
        point_prompt = None
        if points is not None and labels is not None:
            point_prompt = (
                torch.as_tensor(points, device=self.device)[None],
                torch.as_tensor(labels, device=self.device)[None],
            )
        with torch.inference_mode():
            sparse, dense = self._prompt_encoder(points=point_prompt, boxes=boxes, masks=None)
            low_res, iou = self._run_decoder(encoded.embedding, sparse, dense)
            logits = logits_to_original(low_res.float(), encoded.frame)
            return (logits > 0).cpu().numpy(), float(iou[0, 0])

    def _embedding_to_numpy(self, embedding: torch.Tensor) -> np.ndarray:
        return embedding.detach().cpu().numpy()

    def _embedding_from_numpy(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array).to(self.device)
