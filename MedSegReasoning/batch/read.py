"""Reading one study of a batch: its series picked (``--series-filter``) and its volume read, apart from the model.

On Ray this runs as a task (``pool.py``) whose result, an object reference, is handed to a segmenter actor: the
actor spends its time on the model while the next studies are read. In-process the same function runs in line, so
both paths give the same rows. A study that cannot be read is not an exception here but a ``StudyRead`` with the
reason, which the actor turns into that study's failed row.

A series read from DICOMweb is downloaded into a scratch folder that is removed again: the instances' headers (no
pixels) travel with the volume, because the SEG the round writes references them and the actor may run on another
node (``materialise_headers`` puts them back as files in the actor's scratch folder).
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import socket
import tempfile
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..wire.errors import MedSegError
from .cohort import SeriesFilter, Study

log = logging.getLogger(__name__)


@dataclass
class StudyRead:
    """A study's volume, ready for a worker, or why it could not be read."""

    volume: Any = None  # volume.core.Volume; None when the read failed
    picked: str = ""  # --series-filter's sentence on the series it picked
    seconds: float = 0.0
    error: str = ""
    by: str = ""  # the process that read it (``pid@host``): on Ray a task's, not the driver's nor an actor's
    headers: dict[str, bytes] = field(default_factory=dict)  # DICOMweb: the instances' headers by file name


def process_name() -> str:
    """``pid@host``: which process did a step of a study (recorded in its row file, ``.batch/rows``)."""
    return f"{os.getpid()}@{socket.gethostname()}"


def read_study(study: Study, series_filter: str | None) -> StudyRead:
    """``study``'s volume (its series picked by ``series_filter`` first), or the reason it cannot be read."""
    t0 = time.perf_counter()
    picked = ""
    try:
        volume, picked, headers = _read(study, series_filter)
        return StudyRead(volume, picked, time.perf_counter() - t0, by=process_name(), headers=headers)
    except Exception as exc:  # stays this study's
        error = study_error(study.key, exc, "reading")
    return StudyRead(None, picked, time.perf_counter() - t0, error, by=process_name())


def _read(study: Study, series_filter: str | None) -> tuple[Any, str, dict[str, bytes]]:
    from ..volume import load_volume
    from ..volume.dicomweb_query import parse_study_url

    series_uid, picked = None, ""
    source = study.input
    rule = SeriesFilter.parse(series_filter)
    if parse_study_url(source) is not None:  # a study of a DICOMweb cohort: pick its series, then read that
        series_uid, picked = (rule or SeriesFilter()).pick(source)
        source = f"{source.rstrip('/')}/series/{series_uid}"
    elif rule is not None and Path(source).is_dir():
        series_uid, picked = rule.pick(Path(source))
    from ..volume.dicomweb import is_dicomweb_url

    if not is_dicomweb_url(source):
        return load_volume(source, series_uid=series_uid), picked, {}
    scratch = Path(tempfile.mkdtemp(prefix="medseg-batch-read-"))
    try:
        volume = _load_dicomweb(source, scratch / "series")
        return volume, picked, _headers(volume)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _load_dicomweb(url: str, folder: Path):
    from ..volume.dicomweb import load_dicomweb_series
    from ..volume.finite import with_finite_voxels

    return with_finite_voxels(load_dicomweb_series(url, dest=folder))


def _headers(volume) -> dict[str, bytes]:
    """The source instances' headers (pixel data left out), by file name, in the order of ``files``."""
    import pydicom

    info = volume.source.dicom
    headers: dict[str, bytes] = {}
    for path in info.files if info is not None else ():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        headers[Path(path).name] = buffer.getvalue()
    return headers


def materialise_headers(read: StudyRead, folder: Path):
    """``read``'s volume, its DICOM source files being the shipped headers written into ``folder`` (where there are
    any; else the volume as read)."""
    info = read.volume.source.dicom
    if not read.headers or info is None:
        return read.volume
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in read.headers.items():
        (folder / Path(name).name).write_bytes(data)
    files = tuple(str(folder / Path(f).name) for f in info.files)
    source = replace(read.volume.source, dicom=replace(info, files=files))
    return replace(read.volume, source=source)


def sentence(exc: BaseException) -> str:
    """An error as a row's reason: its first line, at most 500 characters."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:500]


EXPECTED_STUDY_ERRORS = (MedSegError, OSError, ValueError, RuntimeError, MemoryError)


def study_error(key: str, exc: Exception, doing: str) -> str:
    """The reason a failed row carries: an expected error's own sentence (its traceback at debug level); for an
    unexpected one, its type and text, the traceback going to the log, so the run goes on either way."""
    if isinstance(exc, EXPECTED_STUDY_ERRORS):
        log.debug("study %s: %s failed", key, doing, exc_info=True)
        return sentence(exc)
    log.warning("study %s: %s: %s", key, doing, traceback.format_exc())
    return f"internal error ({type(exc).__name__}: {exc})"


__all__ = ["StudyRead", "materialise_headers", "process_name", "read_study", "sentence", "study_error"]
