"""Opening a dataset: its layout named or detected from what the path holds, then read by that layout's reader."""

from __future__ import annotations

from pathlib import Path

from ...wire.errors import InputError
from .folder import read_folder
from .mrmedseg import _json_files, read_mrmedseg
from .umrg import _parquet_files, read_umrg
from .units import QUESTIONS_FILE, Dataset

LAYOUTS = ("umrg", "mrmedseg", "folder")


def open_dataset(path: str | Path, layout: str = "auto") -> Dataset:
    """Index the dataset at ``path`` in ``layout`` (``auto`` detects it); InputError when it cannot be read."""
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"the dataset {path} does not exist: give a parquet file, an MR-MedSeg JSON file or a folder.")
    if layout == "auto":
        layout = detect_layout(path)
    if layout not in LAYOUTS:
        raise InputError(f"unknown layout '{layout}': use auto, {', '.join(LAYOUTS)}.")
    reader = {"umrg": read_umrg, "mrmedseg": read_mrmedseg, "folder": read_folder}[layout]
    units = reader(path)
    if not units:
        raise InputError(f"the dataset {path} ({layout} layout) holds no questions: nothing to evaluate.")
    ids = [u.id for u in units]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:3]
        raise InputError(f"the dataset {path} repeats the sample id(s) {', '.join(dup)}: ids must be unique to resume.")
    return Dataset(path, layout, units)


def detect_layout(path: Path) -> str:
    """The layout of ``path`` from what it holds: parquet -> umrg, questions.jsonl -> folder, JSON -> mrmedseg."""
    path = Path(path)
    if path.is_file():
        name = path.name.lower()
        if name.endswith(".parquet"):
            return "umrg"
        if name.endswith(".jsonl"):
            return "folder"
        if name.endswith(".json"):
            return "mrmedseg"
    elif path.is_dir():
        if (path / QUESTIONS_FILE).is_file():
            return "folder"
        if _parquet_files(path):
            return "umrg"
        if _json_files(path):
            return "mrmedseg"
    raise InputError(
        f"cannot tell the layout of {path}: expected a .parquet file or a folder of them (U-MRG), an MR-MedSeg "
        f".json file or a folder with one, or a folder with {QUESTIONS_FILE}; or give --layout."
    )
