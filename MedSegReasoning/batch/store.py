"""A batch's output folder: each study's outputs and its rows, written once and atomically; what resume reads.

Layout of ``--out``: ``<study>/`` (``ask``'s files), ``results.csv`` (and ``results.parquet``), ``report.html``,
and the hidden ``.batch/``: ``rows/<key>.json`` per study (the record that it is done, written after its folder)
and ``lock`` (held while a run writes, so two runs never write the same study twice).

A study is done when its row file exists: its folder is put in place first (one rename of a finished folder),
then the row file (one atomic write). A run killed in between left a folder without a row: the next run does that
study again and replaces the folder.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..atomic import write_text_atomic
from ..wire.errors import InputError
from .cohort import Study, safe_name
from .study import StudyOutcome

COLUMNS = (
    "study",
    "input",
    "study_uid",
    "series_uid",
    "question",
    "entity",
    "label",
    "code",
    "volume_ml",
    "key_slice",
    "score",
    "judgment",
    "status",
    "error",
    "seconds",
    "versions",
    "series_picked",
    "attempt",
    "stored",
)
STATE_DIR = ".batch"


class BatchStore:
    """The output folder of one run: locked while open; studies done, failed and their rows."""

    def __init__(self, out: Path, *, resume: bool) -> None:
        self.out = Path(out)
        if self.out.exists() and not self.out.is_dir():
            raise InputError(f"--out {self.out} is a file: give a folder.")
        state = self.out / STATE_DIR
        if self.out.is_dir() and any(self.out.iterdir()) and not resume:
            what = "an earlier batch run" if state.is_dir() else "other files"
            raise InputError(
                f"the output folder {self.out} holds {what}: add --resume to continue it, or choose another --out."
            )
        (state / "rows").mkdir(parents=True, exist_ok=True)
        self._lock_file = open(state / "lock", "a+")  # held for the whole run
        try:
            import fcntl

            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise InputError(
                f"another batch run is writing into {self.out}: wait for it to finish, or choose another --out."
            ) from None
        except ImportError:  # no fcntl (Windows): one run at a time is then the user's to keep
            pass
        self.records: dict[str, dict[str, Any]] = {}
        for path in sorted((state / "rows").glob("*.json")):
            record = json.loads(path.read_text(encoding="utf-8"))
            self.records[record["key"]] = record

    def close(self) -> None:
        self._lock_file.close()

    def status(self, key: str) -> str | None:
        record = self.records.get(key)
        return record["status"] if record else None

    def attempts(self, key: str) -> int:
        record = self.records.get(key)
        return int(record.get("attempt", 0)) if record else 0

    def save(self, study: Study, outcome: StudyOutcome) -> dict[str, Any]:
        """Put the study's folder in place, then its row file: from then on it is done (or failed, with a reason)."""
        attempt = self.attempts(study.key) + 1
        folder = self._folder_name(study, outcome)
        if outcome.files:
            staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.out))
            for name, data in outcome.files.items():
                (staging / safe_name(name)).write_bytes(data)
            target = self.out / folder
            if target.exists():  # an earlier attempt's folder (failed, or killed before its row): replaced
                shutil.rmtree(target)
            os.replace(staging, target)
        record = {
            "key": study.key,
            "folder": folder if outcome.files else None,
            "status": outcome.status,
            "attempt": attempt,
            "worker": outcome.worker,
            "read_by": outcome.read_by,  # which process read the study and stored it back (pid@host): on Ray, tasks
            "stored_by": outcome.stored_by,
            "rows": study_rows(study, outcome, folder, attempt),
        }
        write_text_atomic(self.out / STATE_DIR / "rows" / f"{study.key}.json", json.dumps(record, indent=1) + "\n")
        self.records[study.key] = record
        return record

    def _folder_name(self, study: Study, outcome: StudyOutcome) -> str:
        """The Study Instance UID where there is one, else the study's key; unique among the run's folders."""
        earlier = self.records.get(study.key, {}).get("folder")
        if earlier:
            return str(earlier)
        uid = ((outcome.result or {}).get("input") or {}).get("study_instance_uid") or ""
        base = safe_name(uid) or study.key
        taken = {r.get("folder") for k, r in self.records.items() if k != study.key}
        name, n = base, 1
        while name in taken or name == STATE_DIR:
            n += 1
            name = f"{base}-{n}"
        return name

    def all_rows(self, order: list[str]) -> list[dict[str, Any]]:
        """Every study's rows, in cohort order (studies of earlier runs not in this cohort last)."""
        keys = [k for k in order if k in self.records] + sorted(set(self.records) - set(order))
        return [row for k in keys for row in self.records[k]["rows"]]


def study_rows(study: Study, outcome: StudyOutcome, folder: str, attempt: int) -> list[dict[str, Any]]:
    """One row per entity of the study's result (one row without an entity for a failed or empty study)."""
    result = outcome.result or {}
    source = result.get("input") or {}
    versions = json.dumps(result.get("versions"), sort_keys=True) if result.get("versions") else ""
    base = {
        "study": folder,
        "input": study.input,
        "study_uid": source.get("study_instance_uid") or "",
        "series_uid": source.get("series_instance_uid") or "",
        "question": study.question or "",
        "status": outcome.status,
        "error": outcome.error,
        "seconds": round(outcome.seconds, 3),
        "versions": versions,
        "series_picked": outcome.series_picked,
        "attempt": attempt,
        "stored": outcome.stored,
    }
    empty = {"entity": "", "label": "", "code": "", "volume_ml": None, "key_slice": None, "score": None}
    targets = result.get("targets") or []
    if not targets:
        return [{**base, **empty, "judgment": ""}]
    judged = {t.get("entity_id"): t for t in (result.get("round") or {}).get("targets", [])}
    rows = []
    for target in targets:
        term = (target.get("terminology") or {}).get("type") or {}
        code = f"{term['scheme']}:{term['value']}" if term.get("value") else ""
        rows.append(
            {
                **base,
                "entity": target.get("entity_id") or "",
                "label": target.get("label") or "",
                "code": code,
                "volume_ml": target.get("volume_ml"),
                "key_slice": target.get("key_slice"),
                "score": target.get("score"),
                "judgment": target.get("status") or (judged.get(target.get("entity_id")) or {}).get("status") or "",
            }
        )
    return rows
