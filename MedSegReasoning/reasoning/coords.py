"""Coordinate conventions: what the numbers in a model's box mean, and how they become pixels of our image.

Each Qwen-VL generation (and each checkpoint trained on top of one) was taught its own coordinate frame, and a
box read in the wrong frame lands on the wrong organ without any error. So every adapter declares its
convention by name, and one function converts::

    model coordinates --(convention, size of the rendered view)--> view pixels --(views.Tile)--> voxel indices

Conventions:

- ``qwen2-vl``:   a 0-1000 grid over the image, whatever its size (Qwen2-VL's ``<|box_start|>`` training format).
- ``qwen2.5-vl``: absolute pixels of the image *after* the processor's ``smart_resize`` (sides rounded to
  multiples of ``patch_size * merge_size``, total pixels clamped); a 300x217 slice is seen as 308x224 and its
  boxes come in those pixels. MedReasoner's base Lingshu and plain Qwen2.5-VL use this.
- ``qwen3-vl``:   a 0-1000 grid again (Qwen3-VL went back to relative coordinates).
- ``fixed-840``:  MedReasoner and Seg-Zero resize every image to 840x840 before the model; boxes are pixels of
  that square.
- ``pixels``:     pixels of the image exactly as rendered (hand-written replay files, models that do no resizing).

The resize arithmetic is transformers' own ``smart_resize`` (imported lazily: it pulls in torch), never a copy,
so a change there shows up here instead of silently shifting boxes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np

from ..wire.errors import InputError

ConventionKind = Literal["grid", "resized", "fixed", "pixels"]
GRID_EXTENT = 1000
FIXED_SIDE = 840


@dataclass(frozen=True)
class ResizeRule:
    """The parameters of a Qwen-VL image processor's ``smart_resize``.

    Defaults are Qwen2.5-VL's released ``preprocessor_config.json``. An in-process adapter builds the rule from
    the processor it actually loaded, so a checkpoint with other limits converts correctly.
    """

    patch_size: int = 14
    merge_size: int = 2
    min_pixels: int = 56 * 56
    max_pixels: int = 12_845_056

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """``(width, height)`` of the image the model sees for an input of ``(width, height)``."""
        return _smart_resize(int(width), int(height), self.factor, self.min_pixels, self.max_pixels)


QWEN2_5_VL_RULE = ResizeRule()
QWEN3_VL_RULE = ResizeRule(patch_size=16, merge_size=2, min_pixels=65_536, max_pixels=16_777_216)
# For servers whose processor settings we cannot read (Ollama, llama.cpp, a vLLM started with other limits):
# 1280 merged patches is the smallest default among them (transformers' class default), so an image already
# resized to this rule is left as it is by each of them, and the boxes come back in pixels we know.
SERVER_SAFE_RULE = ResizeRule(max_pixels=1280 * 28 * 28)


@lru_cache(maxsize=256)
def _smart_resize(width: int, height: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    try:
        h, w = smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    except ValueError as exc:  # e.g. an aspect ratio above 200
        raise InputError(f"a {width}x{height} image cannot be given to a Qwen-VL model: {exc}.") from None
    return int(w), int(h)


@dataclass(frozen=True)
class Convention:
    """One named coordinate convention; see the module docstring for what each means."""

    name: str
    kind: ConventionKind
    rule: ResizeRule | None = None

    def frame(self, width: int, height: int) -> tuple[float, float]:
        """The extent of the model's coordinates for a view of ``width`` x ``height`` pixels: ``(fw, fh)``.

        Valid model coordinates lie in ``[0, fw] x [0, fh]`` (the far edge included: models write 1000 or the
        image width for a box touching the border).
        """
        if self.kind == "grid":
            return (float(GRID_EXTENT), float(GRID_EXTENT))
        if self.kind == "fixed":
            return (float(FIXED_SIDE), float(FIXED_SIDE))
        if self.kind == "resized":
            w, h = (self.rule or QWEN2_5_VL_RULE).resized_size(width, height)
            return (float(w), float(h))
        return (float(width), float(height))

    def model_input_size(self, width: int, height: int) -> tuple[int, int]:
        """The size we resize a view to before handing it to the model (or its server) ourselves."""
        if self.kind == "fixed":
            return (FIXED_SIDE, FIXED_SIDE)
        return (int(width), int(height))

    def to_view_pixels(self, x: float, y: float, width: int, height: int) -> tuple[float, float]:
        """Model coordinates -> continuous pixel position in the rendered view (0 = left/top edge)."""
        fw, fh = self.frame(width, height)
        return (x * width / fw, y * height / fh)

    def from_view_pixels(self, px: float, py: float, width: int, height: int) -> tuple[float, float]:
        """The inverse of ``to_view_pixels``: where a pixel of our view sits in the model's coordinates."""
        fw, fh = self.frame(width, height)
        return (px * fw / width, py * fh / height)

    def describe(self, width: int, height: int) -> str:
        """One sentence for the prompt: how the model must write coordinates for this view."""
        fw, fh = self.frame(width, height)
        if self.kind == "grid":
            return (
                "coordinates are on a 0-1000 grid: x from 0 (left edge) to 1000 (right edge), "
                "y from 0 (top edge) to 1000 (bottom edge), whatever the image size"
            )
        return (
            f"coordinates are pixels of the {int(fw)}x{int(fh)} image: x from 0 (left edge) to {int(fw)}, "
            f"y from 0 (top edge) to {int(fh)}"
        )


def get_convention(name: str, rule: ResizeRule | None = None) -> Convention:
    """The convention called ``name``; ``rule`` overrides the resize parameters of ``qwen2.5-vl``."""
    key = name.strip().lower()
    if key in ("qwen2-vl", "qwen3-vl"):
        return Convention(key, "grid")
    if key == "qwen2.5-vl":
        return Convention(key, "resized", rule or QWEN2_5_VL_RULE)
    if key == "fixed-840":
        return Convention(key, "fixed")
    if key == "pixels":
        return Convention(key, "pixels")
    raise InputError(f"unknown coordinate convention '{name}': use one of {', '.join(CONVENTION_NAMES)}.")


CONVENTION_NAMES: tuple[str, ...] = ("qwen2-vl", "qwen2.5-vl", "qwen3-vl", "fixed-840", "pixels")
CONVENTION_BY_MODEL_TYPE: dict[str, str] = {
    "qwen2_vl": "qwen2-vl",
    "qwen2_5_vl": "qwen2.5-vl",
    "qwen3_vl": "qwen3-vl",
    "qwen3_vl_moe": "qwen3-vl",
}


def guess_convention(model_name: str) -> str:
    """A convention from a served model's name (``qwen2.5vl:7b``, ``Qwen/Qwen3-VL-8B-Instruct``...).

    Only for servers, which do not tell us their architecture; the guess is recorded in the reasoner identity,
    and ``create_reasoner(..., convention=...)`` overrides it.
    """
    name = model_name.lower().replace("_", "").replace("-", "").replace(" ", "")
    if any(key in name for key in ("medreasoner", "segzero", "visionreasoner")):
        return "fixed-840"
    if "qwen3" in name:
        return "qwen3-vl"
    if "qwen2vl" in name and "qwen2.5" not in name and "qwen25" not in name:
        return "qwen2-vl"
    return "qwen2.5-vl"


def resize_for_model(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` (H, W, 3 uint8) resized to ``size`` = (width, height) with bicubic filtering, as the processors do.

    Grey images (all our views) are resized as one channel: a third of the time, the same pixels.
    """
    if (image.shape[1], image.shape[0]) == tuple(size):
        return image
    from PIL import Image

    if is_grey(image):
        grey = np.asarray(Image.fromarray(image[..., 0]).resize(size, Image.Resampling.BICUBIC))
        return np.repeat(grey[..., None], 3, axis=2)
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC))


def is_grey(image: np.ndarray) -> bool:
    """True for an (H, W, 3) image whose three channels are equal."""
    return (
        image.ndim == 3
        and image.shape[2] == 3
        and np.array_equal(image[..., 0], image[..., 1])
        and np.array_equal(image[..., 0], image[..., 2])
    )
