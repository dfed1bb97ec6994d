"""Dataset layouts for ``medseg-reasoning eval``: each reader turns its format into the same ``Case``/``Turn`` objects.

Three layouts (``docs/evaluation.md``, "Datasets and modes", says what was verified against the published code):

- ``umrg``: MedReasoner's U-MRG-14K as parquet (the verl/EasyR1 RL format): ``images`` and ``masks`` (lists of
  ``{"bytes", "path"}`` image structs, the first of each is used), ``prompt`` (a chat list whose first message's
  ``content`` is the question), ``reward_model.ground_truth`` (a JSON string with ``bbox_2d`` and ``point_2d``),
  ``extra_info`` (``id``, ``category``, ``supercategory``). One question per row, 2D.
- ``mrmedseg``: MediRound's MR-MedSeg dialogues: a JSON list of ``{"task", "conversations": [...]}``; human turns
  carry ``[IMAGE256:path]`` (the image) and ``[MASK-ENCODE:path][BOX-ENCODE:path]`` (an earlier round's output
  the question refers to, ``ind`` its 0-based round), gpt turns ``[MASK-DECODE:path]`` (the truth of the round).
- ``folder``: 3D (or 2D) volumes beside label maps and a ``questions.jsonl`` (one line per question: ``volume``,
  ``labels``, ``question``, ``label`` value; optional ``id``, ``name``, ``category``, ``round``, ``reference``,
  ``dialogue``).

Readers index the dataset cheaply (ids, question text) and decode images or volumes only in ``Unit.load()``, so a
resumed run skips finished samples without reading their pixels, and a broken sample fails alone.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..jsonlines import read_json_objects
from ..volume.core import Geometry, Volume, VolumeSource
from ..wire.errors import InputError

LAYOUTS = ("umrg", "mrmedseg", "folder")
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


# --- U-MRG (MedReasoner) parquet ---------------------------------------------------------------------------------------


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


def _read_beside(file: Path, name: str, what: str) -> bytes:
    path = Path(name) if Path(name).is_absolute() else file.parent / name
    if not path.is_file():
        raise InputError(f"{what}: the image file {path} does not exist.")
    return path.read_bytes()


_IMAGE_TOKEN = re.compile(r"<image>\s*")


def _umrg_question(prompt: Any, sample_id: str) -> str:
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


# --- MR-MedSeg (MediRound) ---------------------------------------------------------------------------------------------

_BRACKET = re.compile(r"\[(IMAGE256|MASK-ENCODE|BOX-ENCODE|MASK-DECODE|REF-DECODE):([^\]]+)\]")


def _json_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.json") if p.is_file())


def read_mrmedseg(path: Path) -> list[Unit]:
    """Index MR-MedSeg dialogues; paths inside the brackets are relative to the JSON file's folder."""
    files = [path] if path.is_file() else _json_files(path)
    units: list[Unit] = []
    for file in files:
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"{file} is not a readable JSON file ({exc}).") from None
        entries = [data] if isinstance(data, Mapping) else data
        if not isinstance(entries, list):
            raise InputError(f"{file} must hold a list of MR-MedSeg dialogues (objects with 'conversations').")
        for n, entry in enumerate(entries):
            parsed = _parse_dialogue(entry, f"{file.name}[{n}]")
            if parsed is None:
                continue
            image, rounds = parsed
            dialogue_id = str(entry.get("id") or f"{file.stem}:{n}:{Path(image).stem}")
            units.append(Unit(dialogue_id, True, _mrmedseg_loader(file.parent, dialogue_id, image, rounds), case=image))
    return units


def _parse_dialogue(entry: Any, where: str) -> tuple[str, list[dict]] | None:
    """``(image path, rounds)`` with each round's question, truth path and referenced rounds; None for non-seg."""
    if not isinstance(entry, Mapping) or not isinstance(entry.get("conversations"), list):
        raise InputError(f"{where}: an MR-MedSeg dialogue needs a 'conversations' list of {{from, value}} turns.")
    if entry.get("task", "segmentation") != "segmentation":
        return None
    turns = entry["conversations"]
    if len(turns) % 2:
        raise InputError(f"{where}: 'conversations' must alternate human and gpt turns (found {len(turns)} turns).")
    image: str | None = None
    rounds: list[dict] = []
    outputs: dict[str, int] = {}  # mask path -> the round (1-based) that produced it
    for r in range(len(turns) // 2):
        human, gpt = turns[2 * r], turns[2 * r + 1]
        if human.get("from") != "human" or gpt.get("from") != "gpt":
            raise InputError(f"{where}: turn {2 * r + 1} must come from 'human' and turn {2 * r + 2} from 'gpt'.")
        refs: list[int] = []
        for kind, value in _BRACKET.findall(str(human.get("value", ""))):
            if kind == "IMAGE256":
                image = value.strip()
            elif kind == "MASK-ENCODE" and value.strip() in outputs:
                refs.append(outputs[value.strip()])
        if isinstance(human.get("ind"), int) and not refs:
            refs.append(human["ind"] + 1)  # "ind": the 0-based round whose output the question encodes
        decode = [v.strip() for k, v in _BRACKET.findall(str(gpt.get("value", ""))) if k == "MASK-DECODE"]
        if len(decode) != 1:
            raise InputError(f"{where}: round {r + 1}'s gpt turn must hold exactly one [MASK-DECODE:path].")
        question = _BRACKET.sub("", str(human.get("value", ""))).strip()
        if not question:
            raise InputError(f"{where}: round {r + 1} has no question text besides its brackets.")
        outputs[decode[0]] = r + 1
        rounds.append({"question": question, "truth": decode[0], "references": tuple(sorted(set(refs)))})
    if image is None:
        raise InputError(f"{where}: no [IMAGE256:path] in the first human turn: the dialogue names no image.")
    return image, rounds


def _mrmedseg_loader(root: Path, dialogue_id: str, image: str, rounds: list[dict]):
    def load() -> Case:
        pixels = decode_image(_read_beside(root / "x", image, f"dialogue {dialogue_id}"), image)
        turns = []
        for r, spec in enumerate(rounds, 1):
            mask = decode_mask(_read_beside(root / "x", spec["truth"], f"dialogue {dialogue_id}"), spec["truth"])
            if mask.shape != pixels.shape:
                raise InputError(
                    f"dialogue {dialogue_id}: mask {spec['truth']} is {mask.shape}, the image {pixels.shape}."
                )
            turns.append(Turn(spec["question"], mask[None], round=r, references=spec["references"]))
        return Case(dialogue_id, image, image_volume(pixels, image), tuple(turns), dialogue=True)

    return load


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
            from ..volume.loader import load_volume

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
