"""Helpers for the segmenter tests and benchmark: the real CT with its reference labels, and a tiny SAM.

The CT is read with SimpleITK directly (not through ``MedSegReasoning.volume``) so these tests depend on the
segmenter alone. The reference labels are stored with the row axis flipped relative to the DICOM series, so
they are resampled onto the CT grid in physical space (nearest neighbour), never compared by raw index.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

SOFT_TISSUE = (40.0, 400.0)  # level, width (HU)
# Organs checked against DESIGN.md's LiteMedSAM figures: label name -> Dice floor asserted by the tests
# (a bit below what was measured; the numbers are in the segmentation.litemedsam package docstring).
ORGAN_DICE_FLOORS = {  # measured: 0.977, 0.973, 0.925, 0.932, 0.886 (both backends)
    "liver": 0.95,
    "spleen": 0.94,
    "stomach": 0.89,
    "aorta": 0.89,
    "inferior_vena_cava": 0.84,
}


@dataclass(frozen=True)
class CTCase:
    """The real CT as ``[k, j, i]`` HU and the reference labels resampled onto the same grid."""

    hu: np.ndarray
    labels: np.ndarray
    names: dict[str, int]  # structure name -> label value


@lru_cache(maxsize=2)
def load_ct_case(folder: Path) -> CTCase:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder / "dicom")))
    ct = reader.Execute()
    reference = sitk.ReadImage(str(folder / "reference-labels.nii.gz"))
    on_ct_grid = sitk.Resample(reference, ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0, reference.GetPixelID())
    names = {name: int(value) for value, name in json.loads((folder / "labels.json").read_text()).items()}
    return CTCase(
        hu=sitk.GetArrayFromImage(ct).astype(np.float32),
        labels=sitk.GetArrayFromImage(on_ct_grid).astype(np.int32),
        names=names,
    )


def window_rgb(hu_slice: np.ndarray, level: float = SOFT_TISSUE[0], width: float = SOFT_TISSUE[1]) -> np.ndarray:
    """A HU slice windowed to uint8 and repeated into three channels, as the models take it."""
    low = level - width / 2
    gray = np.clip((hu_slice - low) / width, 0.0, 1.0) * 255.0
    return np.repeat(np.round(gray).astype(np.uint8)[..., None], 3, axis=2)


def largest_slice(labels: np.ndarray, value: int) -> int:
    """The axial slice index with the most voxels of ``value``."""
    return int(np.argmax((labels == value).sum(axis=(1, 2))))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(a, b).sum() / total)


def organ_case(case: CTCase, name: str) -> tuple[int, np.ndarray, np.ndarray]:
    """(slice index, RGB image, reference mask) on the organ's largest slice."""
    value = case.names[name]
    k = largest_slice(case.labels, value)
    return k, window_rgb(case.hu[k]), case.labels[k] == value


def innermost_point(mask: np.ndarray) -> tuple[float, float]:
    """The (x, y) pixel deepest inside ``mask`` (maximum of the distance transform): a reasoner's click."""
    from scipy.ndimage import distance_transform_edt

    distance = distance_transform_edt(mask)
    y, x = np.unravel_index(int(np.argmax(distance)), mask.shape)
    return float(x), float(y)


# -- a tiny randomly initialised SAM, saved as a real checkpoint ----------------------------------------------
TINY_SAM = {
    "img_size": 64,
    "patch_size": 16,
    "embed_dim": 32,
    "depth": 2,
    "num_heads": 2,
    "window_size": 2,
    "global_attn_indexes": (1,),
    "prompt_dim": 32,
    "decoder_mlp_dim": 64,
    "iou_hidden": 32,
}


def build_tiny_sam():
    """A segment-anything ``Sam`` with every dimension shrunk (~0.2 M parameters, milliseconds per call).

    The prompt embedding width (= encoder ``out_chans`` = decoder ``transformer_dim``) can be 32: the decoder
    only needs it divisible by 8 (its upscaling goes to dim // 8) and by the decoder's 8 heads. The input is
    64x64 pixels in 16-pixel patches, so the embedding grid is 4x4 and the low-resolution masks 16x16.
    """
    from functools import partial

    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    c = TINY_SAM
    torch.manual_seed(0)
    grid = c["img_size"] // c["patch_size"]
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=c["img_size"],
            patch_size=c["patch_size"],
            embed_dim=c["embed_dim"],
            depth=c["depth"],
            num_heads=c["num_heads"],
            mlp_ratio=4,
            out_chans=c["prompt_dim"],
            qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=c["window_size"],
            global_attn_indexes=c["global_attn_indexes"],
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=c["prompt_dim"],
            image_embedding_size=(grid, grid),
            input_image_size=(c["img_size"], c["img_size"]),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=2, embedding_dim=c["prompt_dim"], mlp_dim=c["decoder_mlp_dim"], num_heads=8
            ),
            transformer_dim=c["prompt_dim"],
            iou_head_depth=3,
            iou_head_hidden_dim=c["iou_hidden"],
        ),
    )
    # Random (non-zero) relative position tables, so a loader that ignored them would change the output.
    with torch.no_grad():
        for name, param in sam.named_parameters():
            if "rel_pos" in name:
                param.normal_(0, 0.02)
    return sam.eval()


def save_tiny_sam(path: Path) -> Path:
    import torch

    torch.save(build_tiny_sam().state_dict(), path)
    return path
