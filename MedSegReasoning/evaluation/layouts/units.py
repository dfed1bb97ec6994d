"""What every layout reader produces: ``Turn`` (one question and its truth), ``Case`` (a volume and its turns),
``Unit`` (an indexed sample whose pixels load only in ``load()``) and ``Dataset``; and 2D images as one-slice volumes.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...volume.core import Geometry, Volume, VolumeSource
from ...wire.errors import InputError

QUESTIONS_FILE = "questions.jsonl"
UMRG_COLUMNS = ("images", "masks", "prompt", "reward_model")


@dataclass(frozen=True)
class Turn:
    """One question about a case, with its truth on the case volume's grid.

    ``round`` is 1-based in a dialogue (None for a single question); ``references`` are the earlier rounds whose
    masks the question refers to. ``truth_points`` is the dataset's own point pair ``((x, y), (x, y))`` in pixels
    (U-MRG's ``point_2d``), scored against the reasoner's two points; ``truth_box`` is the dataset's own box,
    kept for the record (scores use the box of the truth mask, in the same voxel frame as the answers).
    """

    question: str
    truth: np.ndarray  # bool [k, j, i]
    round: int | None = None
    label: str | None = None
    references: tuple[int, ...] = ()
    truth_points: tuple[tuple[float, float], tuple[float, float]] | None = None
    truth_box: tuple[float, float, float, float] | None = None


@dataclass
class Case:
    """A volume (a 2D image is a one-slice volume) and its questions; ``dialogue`` when they are rounds."""

    id: str
    case: str
    volume: Volume
    turns: tuple[Turn, ...]
    category: str | None = None
    dialogue: bool = False

    @property
    def dimension(self) -> int:
        return 2 if self.volume.shape[0] == 1 else 3


@dataclass(frozen=True)
class Unit:
    """What the runner schedules: one question, or one whole dialogue (its rounds depend on each other)."""

    id: str
    dialogue: bool
    load: Callable[[], Case] = field(repr=False, compare=False)
    case: str = ""
    category: str | None = None


@dataclass
class Dataset:
    path: Path
    layout: str
    units: list[Unit]

    def __len__(self) -> int:
        return len(self.units)

    def __iter__(self) -> Iterator[Unit]:
        return iter(self.units)


# --- 2D images ----------------------------------------------------------------------------------------------------


def image_volume(pixels: np.ndarray, name: str) -> Volume:
    """A 2D grey image as a one-slice volume (1 mm pixels, identity axes): pixel (x, y) is voxel (i, j, 0)."""
    array = np.asarray(pixels)
    if array.ndim != 2:
        raise InputError(f"the image {name} is not a 2D grey image (shape {array.shape}).")
    geometry = Geometry.from_arrays((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), np.eye(3))
    return Volume(array[None].copy(), geometry, modality="", source=VolumeSource(kind="array", path=name))


def decode_image(data: bytes, name: str) -> np.ndarray:
    """Image bytes -> 2D array: colour images become luminance (the segmenter and views are grey-level)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                return np.asarray(image).astype(np.float32 if image.mode == "F" else np.int32)
            return np.asarray(image.convert("L"))
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"the image {name} cannot be decoded ({exc}).") from None


def decode_mask(data: bytes, name: str) -> np.ndarray:
    """A 0/255 mask image -> bool (above half range is foreground, as MedReasoner's ``mask / 255``)."""
    pixels = decode_image(data, name)
    top = 255 if pixels.max() > 1 else 1
    return pixels > top / 2


def _read_beside(file: Path, name: str, what: str) -> bytes:
    path = Path(name) if Path(name).is_absolute() else file.parent / name
    if not path.is_file():
        raise InputError(f"{what}: the image file {path} does not exist.")
    return path.read_bytes()
