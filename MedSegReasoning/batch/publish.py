"""``batch --dicomweb URL``: each finished study's SEG and SR stored on a PACS, by ``export --dicomweb``'s own code.

The study's outputs (what ``ask`` wrote) are put in a scratch folder and exported from there exactly as
``medseg-reasoning export OUT/<study> --format seg,sr --dicomweb URL`` exports them (the source series re-read and
checked, SEG and SR built, SEG stored before SR, a store counted only when the PACS confirms it). On Ray,
``store_back`` runs as a task while the actors go on with the next studies; its answer is small (where the objects
are, or why not), and the driver alone saves the study once it has it (``apply``): with where its objects are (the
``stored`` column), or, when the PACS refused them, as failed with the PACS's sentence: its outputs are kept and
``--resume`` tries it again. A PACS that cannot be reached stops the run (exit 4) after that study's row is saved:
every further study would fail the same way.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

from ..wire.errors import MedSegError, ServiceError
from .read import process_name
from .study import StudyOutcome

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Publication:
    """What storing a study's SEG and SR gave: their URLs, or the reason they are not stored."""

    stored: str = ""  # the WADO-RS URLs the PACS confirmed, space-separated
    error: str = ""  # the store's sentence when it failed
    unreachable: bool = False  # the PACS could not be reached at all: the run stops
    by: str = ""  # the process that stored it (pid@host)


def store_back(url: str, outcome: StudyOutcome) -> Publication:
    """Build ``outcome``'s SEG and SR from its outputs and store them at ``url``; never raises for a store that
    failed (the answer says why)."""
    from ..export.command import add_export_parser, export
    from ..export.pacs import unreachable

    scratch = Path(tempfile.mkdtemp(prefix="medseg-batch-pacs-"))
    try:
        for name, data in outcome.files.items():
            (scratch / Path(name).name).write_bytes(data)
        parser = argparse.ArgumentParser(prog="medseg-reasoning")
        add_export_parser(parser.add_subparsers(dest="command"))
        args = parser.parse_args(["export", str(scratch), "--format", "seg,sr", "--dicomweb", url])
        try:
            report = export(args)
        except MedSegError as exc:
            return Publication(error=str(exc), unreachable=unreachable(exc), by=process_name())
        except Exception as exc:  # an unexpected error stays this study's; the traceback goes to the log
            log.warning("storing %s: %s", outcome.key, traceback.format_exc())
            return Publication(error=f"internal error ({type(exc).__name__}: {exc})", by=process_name())
        return Publication(stored=" ".join(item.url for item in report.stored), by=process_name())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def apply(outcome: StudyOutcome, publication: Publication) -> tuple[StudyOutcome, MedSegError | None]:
    """``outcome`` with where its SEG and SR are, or failed with the reason; and the error that must stop the run
    (the PACS unreachable), or None."""
    if not publication.error:
        return replace(outcome, stored=publication.stored, stored_by=publication.by), None
    error = f"not stored on the PACS: {publication.error}"
    failed = replace(outcome, status="failed", error=error, stored_by=publication.by)
    return failed, ServiceError(publication.error) if publication.unreachable else None


def publish(url: str, outcome: StudyOutcome) -> tuple[StudyOutcome, MedSegError | None]:
    """In this process: ``store_back`` then ``apply`` (a study that is not ok is not stored)."""
    if outcome.status != "ok":
        return outcome, None
    return apply(outcome, store_back(url, outcome))


__all__ = ["Publication", "apply", "publish", "store_back"]
