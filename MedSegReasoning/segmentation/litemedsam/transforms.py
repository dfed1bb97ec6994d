"""Input transforms kept apart from the model, as segment-anything does: the slice resized and padded to the
model's square input (the official inference script's preprocessing), and a box and points as prompt tokens in
that frame.
"""

from __future__ import annotations

import numpy as np

from .._embedding import (
    InputFrame,
)
from .checkpoint import INPUT_SIZE


# -- input transform ----------------------------------------------------------------------------------------
def resize_longest_side(image: np.ndarray, target: int = INPUT_SIZE) -> np.ndarray:
    """Resize an (H, W, 3) uint8 image so its longest side is ``target``, keeping the aspect ratio.

    Downscaling averages pixel areas (the reference's ``cv2.INTER_AREA``); the rare upscaling is bilinear.
    """
    from PIL import Image

    height, width = image.shape[:2]
    scale = target / max(height, width)
    new_h, new_w = int(height * scale + 0.5), int(width * scale + 0.5)
    if (new_h, new_w) == (height, width):
        return image
    resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(image).resize((new_w, new_h), resample=resample))


def preprocess(image: np.ndarray) -> tuple[np.ndarray, InputFrame]:
    """(H, W, 3) uint8 -> (1, 3, 256, 256) float32 in [0, 1], zero-padded bottom/right, and its frame."""
    resized = resize_longest_side(image).astype(np.float32)
    low, high = float(resized.min()), float(resized.max())
    normalised = (resized - low) / max(high - low, 1e-8)
    h, w = normalised.shape[:2]
    padded = np.zeros((1, 3, INPUT_SIZE, INPUT_SIZE), dtype=np.float32)
    padded[0, :, :h, :w] = normalised.transpose(2, 0, 1)
    return padded, InputFrame(original_hw=image.shape[:2], resized_hw=(h, w), input_size=INPUT_SIZE)


def prompt_tokens(
    box: np.ndarray | None, points: np.ndarray | None, labels: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """A prompt in the input frame as the exported decoder takes it: ``coords`` (1, N, 2) and ``labels`` (1, N).

    The order and padding are the prompt encoder's: points first (labels 1/0), then the box's corners (2, 3); points
    without a box get a padding token (-1).
    """
    coords: list[np.ndarray] = []
    values: list[np.ndarray] = []
    if points is not None and labels is not None and len(points):
        coords.append(np.asarray(points, dtype=np.float32).reshape(-1, 2))
        values.append(np.asarray(labels, dtype=np.float32).reshape(-1))
    if box is not None:
        coords.append(np.asarray(box, dtype=np.float32).reshape(2, 2))
        values.append(np.array([2.0, 3.0], dtype=np.float32))
    else:
        coords.append(np.zeros((1, 2), dtype=np.float32))
        values.append(np.array([-1.0], dtype=np.float32))
    return np.concatenate(coords)[None], np.concatenate(values)[None]
