"""U-MRG (MedReasoner) as parquet: one question per row, 2D; row groups read one at a time, on demand."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ...wire.errors import InputError
from .units import UMRG_COLUMNS, Case, Turn, Unit, _read_beside, decode_image, decode_mask, image_volume


def _parquet_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.parquet") if p.is_file())


def read_umrg(path: Path) -> list[Unit]:
    """Index U-MRG parquet rows; pixels are decoded per row group only when a row is loaded."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError("reading U-MRG parquet needs pyarrow: pip install 'medseg-reasoning[eval]'.") from None
    files = [path] if path.is_file() else _parquet_files(path)
    units: list[Unit] = []
    for file in files:
        try:
            pf = pq.ParquetFile(file)
        except Exception as exc:  # pyarrow raises its own ArrowInvalid for a non-parquet file
            raise InputError(f"{file} is not a readable parquet file ({exc}).") from None
        columns = pf.schema_arrow.names
        missing = [c for c in UMRG_COLUMNS if c not in columns]
        if missing:
            raise InputError(
                f"{file} lacks the U-MRG column(s) {', '.join(missing)} (it has {', '.join(columns)}): U-MRG rows "
                "need images, masks, prompt and reward_model (ground_truth with bbox_2d/point_2d)."
            )
        light = [c for c in ("prompt", "reward_model", "extra_info") if c in columns]
        table = pf.read(columns=light).to_pylist()
        groups = _row_group_starts(pf)
        reader = _RowGroupReader(pf, file)
        for row, meta in enumerate(table):
            extra = meta.get("extra_info") or {}
            sample_id = str(extra.get("id") if extra.get("id") is not None else f"{file.stem}:{row}")
            category = extra.get("category")
            units.append(
                Unit(
                    sample_id,
                    False,
                    _umrg_loader(reader, groups, row, meta, sample_id),
                    case=sample_id,
                    category=str(category) if category is not None else None,
                )
            )
    return units


def _row_group_starts(pf) -> list[int]:
    starts, n = [], 0
    for g in range(pf.num_row_groups):
        starts.append(n)
        n += pf.metadata.row_group(g).num_rows
    return starts


class _RowGroupReader:
    """Reads the image columns one row group at a time and keeps the last one (rows are visited in order)."""

    def __init__(self, pf, file: Path) -> None:
        self.pf = pf
        self.file = file
        self.group: int | None = None
        self.rows: list[dict] = []

    def row(self, group: int, index: int) -> dict:
        if group != self.group:
            self.rows = self.pf.read_row_group(group, columns=["images", "masks"]).to_pylist()
            self.group = group
        return self.rows[index]


def _umrg_loader(reader: _RowGroupReader, starts: list[int], row: int, meta: dict, sample_id: str):
    def load() -> Case:
        group = max(g for g, s in enumerate(starts) if s <= row)
        pixels = reader.row(group, row - starts[group])
        image = decode_image(_image_bytes(pixels.get("images"), "images", sample_id, reader.file), f"{sample_id}/image")
        mask = decode_mask(_image_bytes(pixels.get("masks"), "masks", sample_id, reader.file), f"{sample_id}/mask")
        if mask.shape != image.shape:
            raise InputError(f"sample {sample_id}: the mask is {mask.shape} but the image {image.shape}.")
        truth = _umrg_truth(meta.get("reward_model"), sample_id)
        turn = Turn(
            question=_umrg_question(meta.get("prompt"), sample_id),
            truth=mask[None],
            label=(meta.get("extra_info") or {}).get("category"),
            truth_points=truth.get("point_2d"),
            truth_box=truth.get("bbox_2d"),
        )
        category = (meta.get("extra_info") or {}).get("category")
        return Case(sample_id, sample_id, image_volume(image, sample_id), (turn,), category=category)

    return load


def _image_bytes(value: Any, column: str, sample_id: str, file: Path) -> bytes:
    """The first image of a column: HF ``{"bytes", "path"}`` structs, raw bytes, or a path beside the file."""
    item = value[0] if isinstance(value, list | tuple) and value else value
    if isinstance(item, Mapping):
        if item.get("bytes"):
            return bytes(item["bytes"])
        if item.get("path"):
            return _read_beside(file, str(item["path"]), f"sample {sample_id}: {column}")
    if isinstance(item, bytes | bytearray):
        return bytes(item)
    if isinstance(item, str) and item:
        return _read_beside(file, item, f"sample {sample_id}: {column}")
    raise InputError(f"sample {sample_id} has no image in its '{column}' column (expected a list of {{bytes, path}}).")


_IMAGE_TOKEN = re.compile(r"<image>\s*")


def _umrg_question(prompt: Any, sample_id: str) -> str:
    text: object  # the parquet's prompt, checked below
    if isinstance(prompt, str):
        text = prompt
    elif isinstance(prompt, list | tuple) and prompt:
        users = [m for m in prompt if isinstance(m, Mapping) and m.get("role", "user") == "user"]
        text = users[0].get("content") if users else None
    else:
        text = None
    if not isinstance(text, str) or not _IMAGE_TOKEN.sub("", text).strip():
        raise InputError(
            f"sample {sample_id}: 'prompt' holds no question (expected [{{'role': 'user', 'content': ...}}])."
        )
    return _IMAGE_TOKEN.sub("", text).strip()


def _umrg_truth(reward_model: Any, sample_id: str) -> dict:
    """``reward_model.ground_truth`` (a JSON string in MedReasoner's parquet) -> box and point pair, checked."""
    gt = reward_model.get("ground_truth") if isinstance(reward_model, Mapping) else None
    if isinstance(gt, str):
        try:
            gt = json.loads(gt)
        except json.JSONDecodeError:
            raise InputError(f"sample {sample_id}: reward_model.ground_truth is not JSON.") from None
    if not isinstance(gt, Mapping):
        raise InputError(f"sample {sample_id}: reward_model.ground_truth is missing (expected bbox_2d and point_2d).")
    out: dict = {}
    box = gt.get("bbox_2d")
    if box is not None:
        if not (isinstance(box, list | tuple) and len(box) == 4):
            raise InputError(f"sample {sample_id}: ground_truth bbox_2d must be [x1, y1, x2, y2], got {box!r}.")
        out["bbox_2d"] = tuple(float(v) for v in box)
    points = gt.get("point_2d")
    if points is not None:
        if not (isinstance(points, list | tuple) and len(points) == 2 and all(len(p) == 2 for p in points)):
            raise InputError(f"sample {sample_id}: ground_truth point_2d must be [[x, y], [x, y]], got {points!r}.")
        out["point_2d"] = tuple((float(p[0]), float(p[1])) for p in points)
    return out
