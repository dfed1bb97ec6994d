"""MR-MedSeg (MediRound) dialogues: a JSON list of conversations whose bracketed tokens name images and masks."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ...wire.errors import InputError
from .units import Case, Turn, Unit, _read_beside, decode_image, decode_mask, image_volume

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
