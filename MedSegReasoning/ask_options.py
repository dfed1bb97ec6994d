"""What ``ask`` is asked besides the volume: the prompt (``--box``/``--point`` parsed into a ``VoxelPrompt``) and
the options of its outputs. Shared by ``ask``, ``demo`` and ``batch`` (each study of a cohort is asked as ``ask``
asks), so it sits below the front ends.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .wire.errors import InputError

__all__ = ["AskOptions", "parse_prompt", "positive_seconds"]


def _ints(text: str, what: str, counts: Sequence[int], form: str) -> list[int]:
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise InputError(f"{what} '{text}' is not a list of whole numbers: write it as {form}.") from None
    if len(values) not in counts:
        raise InputError(f"{what} '{text}' has {len(values)} values: write it as {form}.")
    return values


def parse_prompt(box: str | None, points: Sequence[str]):
    """Turn ``--box``/``--point`` texts into one ``VoxelPrompt`` (or None when neither was given)."""
    from .pipeline import VoxelPrompt

    if box is None and not points:
        return None
    slices: set[int] = set()
    box_ijij = None
    if box is not None:
        i0, j0, i1, j1, k = _ints(box, "--box", (5,), "I0,J0,I1,J1,K")
        box_ijij = (i0, j0, i1, j1)
        slices.add(k)
    pts: list[tuple[int, int]] = []
    labels: list[int] = []
    for text in points:
        values = _ints(text, "--point", (3, 4), "I,J,K or I,J,K,0|1")
        label = values[3] if len(values) == 4 else 1
        if label not in (0, 1):
            raise InputError(f"--point '{text}' ends in {label}: the label must be 1 (foreground) or 0 (background).")
        pts.append((values[0], values[1]))
        labels.append(label)
        slices.add(values[2])
    if len(slices) > 1:
        raise InputError(
            f"the prompt spans slices {sorted(slices)}: --box and --point must all be on the same slice K."
        )
    return VoxelPrompt(k=slices.pop(), box=box_ijij, points=tuple(pts), labels=tuple(labels))


@dataclass(frozen=True)
class AskOptions:
    """What ``ask`` does besides the prompt; ``demo`` fills it in itself."""

    out: Path
    question: str | None = None
    label: str = "Segment 1"
    window: str | None = None
    segmenter: str = "litemedsam"
    propagate: bool = True
    assign_uids: bool = False  # blank source UIDs get ones derived from the content hash (export/assigned_uids.py)


def positive_seconds(text: str) -> float:
    """argparse type of ``--reasoner-timeout`` (``ask``, ``eval``): a positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"'{text}' is not a positive number of seconds (e.g. 600)")
    return value
