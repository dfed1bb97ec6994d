"""The ``folder`` layout: volumes beside label maps and a ``questions.jsonl`` (one line per question)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...jsonlines import read_json_objects
from ...volume.core import Volume
from ...wire.errors import InputError
from .units import QUESTIONS_FILE, Case, Turn, Unit

# --- folder: volumes + label maps + questions.jsonl --------------------------------------------------------------------


def read_folder(path: Path) -> list[Unit]:
    """Index ``questions.jsonl``: single questions (no ``round``) and dialogues (lines sharing ``dialogue``)."""
    file = path if path.is_file() else path / QUESTIONS_FILE
    root = file.parent
    if not file.is_file():
        raise InputError(f"{path} has no {QUESTIONS_FILE}: the folder layout needs one question per line.")
    lines = _read_jsonl(file)
    cache = _VolumeCache(root)
    units: list[Unit] = []
    dialogues: dict[str, list[dict]] = {}
    for line in lines:
        if line.get("round") is None:
            sample_id = str(line.get("id") or f"q{line['_line']}")
            units.append(
                Unit(
                    sample_id,
                    False,
                    _folder_loader(cache, sample_id, [line], False),
                    line["volume"],
                    line.get("category"),
                )
            )
        else:
            dialogues.setdefault(str(line.get("dialogue") or line["volume"]), []).append(line)
    for dialogue_id, group in dialogues.items():
        group.sort(key=lambda d: d["round"])
        numbers = [d["round"] for d in group]
        if numbers != list(range(1, len(group) + 1)):
            raise InputError(
                f"{file}: dialogue {dialogue_id} has rounds {numbers}: number them 1, 2, 3, ... once each."
            )
        if len({d["volume"] for d in group}) != 1:
            raise InputError(f"{file}: dialogue {dialogue_id} spans several volumes: a dialogue is about one volume.")
        units.append(
            Unit(
                dialogue_id,
                True,
                _folder_loader(cache, dialogue_id, group, True),
                group[0]["volume"],
                group[0].get("category"),
            )
        )
    return units


_FOLDER_REQUIRED = ("volume", "labels", "question", "label")


def _read_jsonl(file: Path) -> list[dict]:
    lines = []
    for number, item in read_json_objects(file):
        missing = [k for k in _FOLDER_REQUIRED if item.get(k) in (None, "")]
        if missing:
            raise InputError(
                f"line {number} of {file} lacks {', '.join(missing)}: each line needs volume, labels (the label "
                "map), question and label (its value in the label map)."
            )
        if isinstance(item["label"], bool) or not isinstance(item["label"], int):
            raise InputError(f"line {number} of {file}: 'label' must be the whole-number value in the label map.")
        rnd = item.get("round")
        if rnd is not None and (isinstance(rnd, bool) or not isinstance(rnd, int) or rnd < 1):
            raise InputError(f"line {number} of {file}: 'round' must be a whole number from 1.")
        refs = item.get("reference")
        refs = [] if refs is None else [refs] if isinstance(refs, int) else refs
        if not all(isinstance(r, int) and rnd is not None and 1 <= r < rnd for r in refs):
            raise InputError(f"line {number} of {file}: 'reference' must name earlier rounds of the same dialogue.")
        item["reference"] = tuple(refs)
        item["_line"] = number
        lines.append(item)
    return lines


class _VolumeCache:
    """The last volume and label map read: consecutive questions about one volume read it once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.key: tuple[str, str] | None = None
        self.value: tuple[Volume, np.ndarray] | None = None

    def get(self, volume: str, labels: str) -> tuple[Volume, np.ndarray]:
        if self.key != (volume, labels) or self.value is None:
            from ...volume.loader import load_volume

            image = load_volume(self._path(volume))
            label_map = load_volume(self._path(labels))
            if label_map.shape != image.shape or not label_map.geometry.is_close(image.geometry, tol_mm=0.01):
                raise InputError(
                    f"the label map {labels} is not on the grid of {volume} (shapes {label_map.shape} and "
                    f"{image.shape}): resample it onto the volume first."
                )
            self.key, self.value = (volume, labels), (image, np.rint(label_map.array).astype(np.int64))
        return self.value

    def _path(self, name: str) -> Path:
        path = Path(name) if Path(name).is_absolute() else self.root / name
        if not path.exists():
            raise InputError(f"{path} does not exist (named in {QUESTIONS_FILE}).")
        return path


def _folder_loader(cache: _VolumeCache, unit_id: str, lines: list[dict], dialogue: bool):
    def load() -> Case:
        volume, labels = cache.get(lines[0]["volume"], lines[0]["labels"])
        turns = []
        for line in lines:
            if line["labels"] != lines[0]["labels"]:
                raise InputError(f"dialogue {unit_id}: all rounds must use the same label map.")
            truth = labels == line["label"]
            turns.append(
                Turn(
                    question=str(line["question"]),
                    truth=truth,
                    round=line.get("round"),
                    label=line.get("name"),
                    references=line["reference"],
                )
            )
        return Case(unit_id, str(lines[0]["volume"]), volume, tuple(turns), lines[0].get("category"), dialogue)

    return load
