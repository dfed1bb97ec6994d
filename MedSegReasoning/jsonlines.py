"""Reading a JSON-lines file of objects: one reader for replay files, evaluation questions and result records.

Each caller checks its own fields; this only turns lines into objects, skipping blank lines, and says which line
is broken. A crash while appending can cut the last line short: ``drop_cut_last_line`` treats that line as never
written (the runner then redoes its unit) instead of refusing the whole file.
"""

from __future__ import annotations

import json
from pathlib import Path

from .wire.errors import InputError


def read_json_objects(
    path: Path, name: str | None = None, *, hint: str = "", drop_cut_last_line: bool = False
) -> list[tuple[int, dict]]:
    """``(line number, object)`` per non-blank line of ``path``; InputError naming the line otherwise.

    ``name`` is how messages call the file (default: its path); ``hint`` is appended to them (what to do).
    """
    name = name or str(path)
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise InputError(f"{name} is not UTF-8 text (byte {exc.start} cannot be decoded){hint}.") from None
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            if drop_cut_last_line and number == len(lines):
                break
            raise InputError(f"line {number} of {name} is not JSON ({exc.msg}){hint}.") from None
        if not isinstance(item, dict):
            raise InputError(f"line {number} of {name} is not a JSON object{hint}.")
        out.append((number, item))
    return out
