"""Segment-anything checkpoints (SAM ViT-B/L/H, MedSAM ViT-B) read from a local file.

The architecture is read off the checkpoint's tensor shapes (embedding width, depth, heads from the relative
position tables, window size and global-attention blocks, prompt width, decoder sizes), so any ViT size
loads, including the tiny models the tests build; a ``model_type`` (``vit_b``/``vit_l``/``vit_h``) given by
the user is checked against what the file holds. Weights are read with ``torch.load(weights_only=True)``.

Two flavours, because MedSAM was fine-tuned with its own input transform and the weights alone do not say
which one they expect:

- ``sam`` (segment-anything's ``SamPredictor``): longest side resized to 1024 keeping the aspect ratio
  (``ResizeLongestSide``), ImageNet pixel mean/std normalisation, zero padding bottom/right to 1024x1024;
  logits upsampled to 1024, cropped to the un-padded part and resized to the original size.
- ``medsam`` (MedSAM's ``MedSAM_Inference.py``): the image is stretched to 1024x1024 (bicubic with
  anti-aliasing; the reference uses scikit-image ``order=3, anti_aliasing=True``, Pillow's bicubic here),
  min-max normalised to [0, 1], no mean/std; boxes scaled per axis; logits resized straight to the original.

Points alone are valid prompts for both (SAM was trained with points). ``Prediction.score`` is the decoder's
IoU prediction with ``multimask_output=False``; masks are logit > 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..wire.errors import InputError, ModelError
from ._embedding import Interrupt
from ._sam_core import EncodedImage, InputFrame, PromptableSegmenter, load_state_dict, resolve_device
from .base import ModelIdentity
from .cache import DEFAULT_CACHE_BYTES, EmbeddingCache
from .weights_digest import cached_sha256

FLAVOURS = ("sam", "medsam")
# Released segment-anything sizes: (embed_dim, depth).
MODEL_TYPES = {"vit_b": (768, 12), "vit_l": (1024, 24), "vit_h": (1280, 32)}
DECODER_HEADS = 8  # not recoverable from shapes; every released SAM/MedSAM decoder uses 8


@dataclass(frozen=True)
class SamArchitecture:
    """The hyper-parameters of a segment-anything model, as recovered from a state dict."""

    img_size: int
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float
    window_size: int
    global_attn_indexes: tuple[int, ...]
    prompt_dim: int
    decoder_depth: int
    decoder_mlp_dim: int
    num_multimask_outputs: int
    iou_head_depth: int
    iou_head_hidden_dim: int

    @property
    def model_type(self) -> str:
        """``vit_b``/``vit_l``/``vit_h`` for the released sizes, else a description."""
        for name, (dim, depth) in MODEL_TYPES.items():
            if (self.embed_dim, self.depth) == (dim, depth):
                return name
        return f"custom ViT (embed_dim={self.embed_dim}, depth={self.depth})"


def _shape(state: dict[str, torch.Tensor], key: str) -> tuple[int, ...]:
    try:
        return tuple(state[key].shape)
    except KeyError:
        raise ModelError(
            f"The checkpoint has no tensor {key!r}, so it is not a segment-anything (SAM/MedSAM) model: "
            "use litemedsam for LiteMedSAM weights, or a SAM/MedSAM .pth file."
        ) from None


def infer_architecture(state: dict[str, torch.Tensor]) -> SamArchitecture:
    """Recover the model's hyper-parameters from tensor shapes (no config file exists for SAM checkpoints)."""
    embed_dim, _, patch_size, _ = _shape(state, "image_encoder.patch_embed.proj.weight")
    grid = _shape(state, "image_encoder.pos_embed")[1]
    depth = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("image_encoder.blocks."))
    rel_pos_rows = [_shape(state, f"image_encoder.blocks.{i}.attn.rel_pos_h") for i in range(depth)]
    head_dim = rel_pos_rows[0][1]
    global_blocks = tuple(i for i, (rows, _) in enumerate(rel_pos_rows) if rows == 2 * grid - 1)
    windows = {(rows + 1) // 2 for rows, _ in rel_pos_rows if rows != 2 * grid - 1}
    if len(windows) > 1:
        raise ModelError(
            f"The checkpoint mixes attention window sizes {sorted(windows)}: it is not a SAM image encoder."
        )
    mlp_hidden = _shape(state, "image_encoder.blocks.0.mlp.lin1.weight")[0]
    prompt_dim = _shape(state, "prompt_encoder.point_embeddings.0.weight")[1]
    decoder_depth = 1 + max(int(k.split(".")[3]) for k in state if k.startswith("mask_decoder.transformer.layers."))
    iou_layers = 1 + max(
        int(k.split(".")[3]) for k in state if k.startswith("mask_decoder.iou_prediction_head.layers.")
    )
    return SamArchitecture(
        img_size=grid * patch_size,
        patch_size=patch_size,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=embed_dim // head_dim,
        mlp_ratio=mlp_hidden / embed_dim,
        window_size=windows.pop() if windows else 0,
        global_attn_indexes=global_blocks,
        prompt_dim=prompt_dim,
        decoder_depth=decoder_depth,
        decoder_mlp_dim=_shape(state, "mask_decoder.transformer.layers.0.mlp.lin1.weight")[0],
        num_multimask_outputs=_shape(state, "mask_decoder.mask_tokens.weight")[0] - 1,
        iou_head_depth=iou_layers,
        iou_head_hidden_dim=_shape(state, "mask_decoder.iou_prediction_head.layers.0.weight")[0],
    )


def build_sam(arch: SamArchitecture) -> torch.nn.Module:
    """segment-anything's ``Sam`` with the given hyper-parameters (as its ``build_sam`` does for the released ones)."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    grid = arch.img_size // arch.patch_size
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=arch.img_size,
            patch_size=arch.patch_size,
            embed_dim=arch.embed_dim,
            depth=arch.depth,
            num_heads=arch.num_heads,
            mlp_ratio=arch.mlp_ratio,
            out_chans=arch.prompt_dim,
            qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=arch.window_size,
            global_attn_indexes=arch.global_attn_indexes,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=arch.prompt_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(arch.img_size, arch.img_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=arch.num_multimask_outputs,
            transformer=TwoWayTransformer(
                depth=arch.decoder_depth,
                embedding_dim=arch.prompt_dim,
                mlp_dim=arch.decoder_mlp_dim,
                num_heads=DECODER_HEADS,
            ),
            transformer_dim=arch.prompt_dim,
            iou_head_depth=arch.iou_head_depth,
            iou_head_hidden_dim=arch.iou_head_hidden_dim,
        ),
    )


def load_sam(path: Path, model_type: str | None = None) -> tuple[Any, SamArchitecture]:  # Sam: untyped
    """Read, check and build a segment-anything model from a local checkpoint (eval mode, on CPU)."""
    state = load_state_dict(path, "Segment-anything")
    arch = infer_architecture(state)
    if model_type is not None:
        if model_type not in MODEL_TYPES:
            raise InputError(f"Unknown SAM model type {model_type!r}: use one of {', '.join(MODEL_TYPES)}.")
        if arch.model_type != model_type:
            raise ModelError(
                f"Checkpoint {path} holds a {arch.model_type} model, not {model_type}: "
                "name its real size in the spec (or use sam:PATH to infer it)."
            )
    model = build_sam(arch)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first_line = str(exc).splitlines()[0]
        raise ModelError(f"Checkpoint {path} does not fit a segment-anything model ({first_line}).") from exc
    return model.eval(), arch


def _resize_rgb(image: np.ndarray, height: int, width: int, resample: str) -> np.ndarray:
    from PIL import Image

    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), resample=getattr(Image.Resampling, resample)))


class SamSegmenter(PromptableSegmenter):
    """A SAM or MedSAM checkpoint behind the ``Segmenter`` protocol (torch only; cuda if asked and available)."""

    def __init__(
        self,
        path: str | Path,
        *,
        model_type: str | None = None,
        flavour: str = "sam",
        device: str = "cpu",
        cache: EmbeddingCache | None = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        if flavour not in FLAVOURS:
            raise InputError(f"Unknown SAM flavour {flavour!r}: use 'sam' (segment-anything) or 'medsam'.")
        dev = resolve_device(device)
        path = Path(path).expanduser()
        model, arch = load_sam(path, model_type)
        sha256 = cached_sha256(path)  # hashed once per file state: a ViT-H checkpoint is 2.5 GB
        self.flavour = flavour
        self.architecture = arch
        self._image_encoder = model.image_encoder.to(dev)
        self._sam = model.to(dev)  # keeps pixel_mean/std and preprocess() for the sam flavour
        identity = ModelIdentity(
            name="MedSAM" if flavour == "medsam" else "SAM",
            weights=str(path),
            sha256=sha256,
            extra={"model_type": arch.model_type, "flavour": flavour, "device": str(dev), "architecture": asdict(arch)},
        )
        super().__init__(
            identity=identity,
            prompt_encoder=model.prompt_encoder,
            mask_decoder=model.mask_decoder,
            device=dev,
            cache=cache if cache is not None else EmbeddingCache(cache_bytes),
            cache_namespace=(identity.name, sha256, flavour),
        )

    def _preprocess(self, image: np.ndarray) -> tuple[torch.Tensor, InputFrame]:
        size = self.architecture.img_size
        height, width = image.shape[:2]
        if self.flavour == "medsam":
            resized = _resize_rgb(image, size, size, "BICUBIC").astype(np.float32)
            resized = (resized - resized.min()) / max(float(resized.max() - resized.min()), 1e-8)
            x = torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1)))[None].to(self.device)
            return x, InputFrame(original_hw=(height, width), resized_hw=(size, size), input_size=size)
        from segment_anything.utils.transforms import ResizeLongestSide

        resized = ResizeLongestSide(size).apply_image(image)
        x = torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1))).float()[None].to(self.device)
        frame = InputFrame(original_hw=(height, width), resized_hw=resized.shape[:2], input_size=size)
        return self._sam.preprocess(x), frame

    def _encode(self, image: np.ndarray, interrupt: Interrupt | None = None) -> EncodedImage:
        """Eager torch runs to the end: ``interrupt`` (a foreground call waiting) cannot stop it midway."""
        x, frame = self._preprocess(image)
        with torch.inference_mode():
            embedding = self._image_encoder(x)
        return EncodedImage(embedding=embedding, frame=frame)
