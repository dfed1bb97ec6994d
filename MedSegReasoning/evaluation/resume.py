"""Resuming an ``eval`` run: the samples already written, the run's identity (``run.json``) and the files' writes.

A resumed run must be the same evaluation; finished units are found in ``samples.jsonl`` and skipped; each unit's
records are appended (and fsynced) together, so the file never holds half a dialogue.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..jsonlines import read_json_objects
from ..wire.errors import InputError
from .layouts import Dataset
from .options import REASONER_MODES, RUN_FILE, EvalOptions


def read_existing(path: Path) -> list[dict]:
    """Records already written; a last line cut off by a crash is dropped (its unit is run again)."""
    if not path.is_file():
        return []
    records = []
    hint = ": the file was edited; start a new --out"
    for number, record in read_json_objects(path, hint=hint, drop_cut_last_line=True):
        if "sample" not in record:
            raise InputError(f"line {number} of {path} is not a sample record: start a new --out.")
        records.append(record)
    return records


def done_units(records: list[dict]) -> set[tuple[str, str | None]]:
    """``(unit id, feed)`` pairs already finished: a question's sample id, or a dialogue's id with its feed."""
    done = set()
    for r in records:
        if r.get("dialogue") is not None:
            done.add((r["dialogue"], r.get("feed")))
        else:
            done.add((r["sample"], None))
    return done


def run_identity(dataset: Dataset, options: EvalOptions) -> dict:
    import dataclasses

    identity = {
        "dataset": str(dataset.path.resolve()),
        "layout": dataset.layout,
        "mode": options.mode,
        "segmenter": options.segmenter if options.mode != "reasoner" else None,
        "reasoner": options.reasoner.spec if options.reasoner is not None and options.mode in REASONER_MODES else None,
        "propagate": options.propagate,
        "nsd_tolerance_mm": options.nsd_tolerance_mm,
    }
    if options.mode == "interactive":
        identity["corrections"] = options.corrections
    if options.propagation is not None:
        identity["propagation"] = dataclasses.asdict(options.propagation)
    return identity


_SAME_RUN_KEYS = ("dataset", "layout", "mode", "segmenter", "reasoner")
_SAME_RUN_KEYS_IF_RECORDED = ("corrections", "propagation")
"""Compared only where the earlier run.json has them (files written before they existed resume as before)."""


def check_run_file(out: Path, dataset: Dataset, options: EvalOptions) -> None:
    """A resumed run must be the same evaluation: mixing modes or datasets in one samples.jsonl is refused."""
    path = out / RUN_FILE
    if not options.resume or not path.is_file():
        return
    try:
        before = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return
    now = run_identity(dataset, options)
    keys = [*_SAME_RUN_KEYS, *(k for k in _SAME_RUN_KEYS_IF_RECORDED if k in before or k in now)]
    changed = [k for k in keys if before.get(k) != now.get(k)]
    if changed:
        what = ", ".join(f"{k} {before.get(k)!r} -> {now.get(k)!r}" for k in changed)
        raise InputError(f"--resume in {out} continues another evaluation ({what}): use a new --out for this one.")


def rewrite_samples(path: Path, records: list[dict]) -> None:
    from ..atomic import write_text_atomic

    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in records))


def append_samples(path: Path, records: list[dict]) -> None:
    """One write per unit, flushed to disk: a crash loses at most the unit in progress."""
    with path.open("a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))
        f.flush()
        os.fsync(f.fileno())


def write_json(path: Path, data: dict) -> None:
    from ..atomic import write_text_atomic

    write_text_atomic(path, json.dumps(data, indent=2) + "\n")
