"""A cohort as a list of studies: a folder of studies or a manifest (CSV or JSON lines), each study with its
question or box, checked whole before anything runs.

A study with neither a question nor a box is a usage error for the whole run (exit 2), found here, before a model
loads: a cohort of 2,000 should not fail on its 1,999th study for an option the user forgot.
"""

from __future__ import annotations

import csv
import fnmatch
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..wire.errors import InputError

MANIFEST_SUFFIXES = (".csv", ".jsonl", ".ndjson")
_VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".dcm")


@dataclass(frozen=True)
class Study:
    """One study of the cohort: its input, what is asked of it, and its stable key (resume finds it again)."""

    key: str  # the input's name made safe and unique in the cohort: rows and work files are named by it
    input: str
    question: str | None = None
    box: str | None = None  # as ``ask --box`` takes it: I0,J0,I1,J1,K
    label: str | None = None


def read_cohort(cohort: str | Path, question: str | None, questions: Sequence[str]) -> list[Study]:
    """The studies of ``cohort`` (a folder of studies, a manifest, or a DICOMweb QIDO-RS studies query), each with
    its question or box.

    A row's own question or box wins; the rest get ``question``, or ``questions`` (one per study, in order).
    """
    from ..volume.dicomweb import is_dicomweb_url

    if is_dicomweb_url(str(cohort)):
        rows = _query_studies(str(cohort))
        return _studies(rows, question, questions)
    cohort = Path(cohort).expanduser()
    if not cohort.exists():
        raise InputError(f"the cohort {cohort} does not exist: give a folder of studies or a manifest (.csv, .jsonl).")
    if cohort.is_dir():
        rows = [{"input": str(p)} for p in _folder_studies(cohort)]
        if not rows:
            raise InputError(
                f"the cohort folder {cohort} holds no studies: put one DICOM series folder, NIfTI or NRRD file per "
                "study in it."
            )
    elif cohort.name.lower().endswith(MANIFEST_SUFFIXES):
        rows = _read_manifest(cohort)
    else:
        raise InputError(
            f"{cohort} is neither a folder of studies nor a manifest: give a folder, a .csv or a .jsonl file."
        )
    return _studies(rows, question, questions)


def _query_studies(url: str) -> list[dict[str, str]]:
    """A QIDO-RS studies query as one row per study found: ``{root}/studies/{StudyInstanceUID}`` (its key is the
    UID); the study's series is picked when it runs (``--series-filter``)."""
    from ..volume.dicomweb_query import parse_studies_query, search_studies

    root, _filters = parse_studies_query(url)
    uids = search_studies(url)
    if not uids:
        raise InputError(f"the DICOMweb query {url} found no studies: check its keys and values (QIDO-RS).")
    return [{"input": f"{root}/studies/{uid}"} for uid in uids]


def _studies(rows: list[dict[str, str]], question: str | None, questions: Sequence[str]) -> list[Study]:
    if questions and len(questions) != len(rows):
        raise InputError(
            f"--questions gives {len(questions)} question(s) for {len(rows)} studies: give one line per study, "
            "or put each study's question in the manifest."
        )
    keys = _unique_keys([row["input"] for row in rows])
    studies = []
    for n, (row, key) in enumerate(zip(rows, keys, strict=True)):
        asked = row.get("question") or (questions[n] if questions else question) or None
        box = row.get("box") or None
        if box:
            _check_box(box, row["input"])
        if not asked and not box:
            raise InputError(
                f"study {row['input']} has neither a question nor a box: give --question TEXT, --questions FILE, "
                "or a question or box column in the manifest."
            )
        studies.append(
            Study(key, row["input"], asked if not box else row.get("question") or None, box, row.get("label"))
        )
    return studies


def _check_box(box: str, source: str) -> None:
    """The box's form, checked before anything runs (whether it fits the volume is the study's own check)."""
    from ..ask_options import parse_prompt

    try:
        parse_prompt(box, [])
    except InputError as exc:
        raise InputError(f'study {source}: {exc} (in a CSV manifest, quote the box: "10,20,60,80,5")') from None


def read_questions(path: Path) -> list[str]:
    """``--questions FILE``: one question per line, blank lines ignored."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InputError(f"--questions {path} cannot be read ({exc.strerror or exc}): check the path.") from None
    return [line.strip() for line in lines if line.strip()]


def _folder_studies(folder: Path) -> list[Path]:
    """One study per sub-folder (a DICOM series) or volume file, in name order; hidden entries are skipped."""
    found = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir() or entry.name.lower().endswith(_VOLUME_SUFFIXES):
            found.append(entry)
    return found


def _read_manifest(path: Path) -> list[dict[str, str]]:
    text = path.read_text(encoding="utf-8-sig")
    if path.name.lower().endswith(".csv"):
        rows = [dict(r) for r in csv.DictReader(text.splitlines())]
    else:
        rows = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path} line {n} is not JSON ({exc.msg}): write one object per line.") from None
            if not isinstance(row, dict):
                raise InputError(f"{path} line {n} is not a JSON object: write one object per line.")
            rows.append(row)
    if not rows:
        raise InputError(f"the manifest {path} lists no studies: give one row per study with an input column.")
    out = []
    for n, row in enumerate(rows, start=1):
        clean = {str(k).strip().lower(): str(v).strip() for k, v in row.items() if k is not None and v is not None}
        if not clean.get("input"):
            raise InputError(f"{path} row {n} has no input: every row needs an input (a study's folder or file).")
        source = Path(clean["input"]).expanduser()
        if not source.is_absolute() and "://" not in clean["input"]:
            clean["input"] = str(path.parent / source)  # relative to the manifest, not to where the command runs
        out.append(clean)
    return out


def _unique_keys(inputs: Sequence[str]) -> list[str]:
    """Safe names (letters, digits, ``._-``) for the inputs; a name taken twice gets ``-2``, ``-3``."""
    keys: list[str] = []
    seen: set[str] = set()
    for source in inputs:
        name = Path(source.rstrip("/")).name
        for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".dcm"):
            if name.lower().endswith(suffix):
                name = name[: -len(suffix)]
                break
        base = safe_name(name) or "study"
        key, n = base, 1
        while key in seen:
            n += 1
            key = f"{base}-{n}"
        seen.add(key)
        keys.append(key)
    return keys


def safe_name(text: str) -> str:
    """``text`` as a file name that is the same on every system (letters, digits, ``._-``), at most 120 long."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:120]


# --- picking the series of a study ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SeriesFilter:
    """``--series-filter``: which series of a study's DICOM folder is read.

    Clauses, comma-separated: ``modality=CT``, ``description=GLOB`` (case-insensitive, ``*abdomen*``) and
    ``most-slices`` (of the series left, the one with the most files). Without ``most-slices``, more than one series
    left is the study's error, naming them."""

    modality: str | None = None
    description: str | None = None
    most_slices: bool = False

    @staticmethod
    def parse(text: str | None) -> SeriesFilter | None:
        if not text:
            return None
        modality = description = None
        most = False
        for clause in (c.strip() for c in text.split(",") if c.strip()):
            key, sep, value = clause.partition("=")
            key = key.strip().lower()
            if key == "modality" and sep and value.strip():
                modality = value.strip().upper()
            elif key == "description" and sep and value.strip():
                description = value.strip()
            elif key in ("most-slices", "largest") and not sep:
                most = True
            else:
                raise InputError(
                    f"--series-filter clause '{clause}' is not understood: use modality=CT, description=PATTERN "
                    "and most-slices, comma-separated."
                )
        return SeriesFilter(modality, description, most)

    def pick(self, folder: Path | str) -> tuple[str, str]:
        """The UID of the series this filter picks in ``folder`` (or a DICOMweb study URL), and a sentence on what
        was picked and why."""
        from ..volume.dicom import list_series
        from ..volume.dicomweb_query import list_study_series

        series = list_study_series(folder) if isinstance(folder, str) else list_series(folder)
        left = [
            s
            for s in series
            if (self.modality is None or s.modality.upper() == self.modality)
            and (self.description is None or fnmatch.fnmatch(s.description.lower(), self.description.lower()))
        ]
        if not left:
            described = "; ".join(f"{s.uid} ({s.modality}, '{s.description}', {s.files} files)" for s in series)
            raise InputError(f"no series of {folder} passes the series filter; the series there: {described}.")
        if len(left) > 1 and not self.most_slices:
            described = "; ".join(f"{s.uid} ({s.modality}, '{s.description}', {s.files} files)" for s in left)
            raise InputError(
                f"{len(left)} series of {folder} pass the series filter ({described}): narrow it, or add most-slices."
            )
        chosen = max(left, key=lambda s: s.files)
        return chosen.uid, f"{chosen.modality} '{chosen.description}' ({chosen.files} files) of {len(series)} series"
