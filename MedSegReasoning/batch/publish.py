"""``batch --dicomweb URL``: each finished study's SEG and SR stored on a PACS, by ``export --dicomweb``'s own code.

The study's outputs (what ``ask`` wrote) are put in a scratch folder and exported from there exactly as
``medseg-reasoning export OUT/<study> --format seg,sr --dicomweb URL`` exports them (the source series re-read and
checked, SEG before SR, a store counted only when the PACS confirms it). Then the study is saved with where its
objects are (the ``stored`` column), or, when the PACS refused them, as failed with the PACS's sentence: its outputs
are kept and ``--resume`` tries it again. A PACS that cannot be reached stops the run (exit 4) after that study's
row is saved: every further study would fail the same way.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from ..wire.errors import MedSegError
from .study import StudyOutcome


def publish(url: str, outcome: StudyOutcome) -> tuple[StudyOutcome, MedSegError | None]:
    """``outcome`` with its SEG and SR stored at ``url`` (``stored``), or failed with the reason; and the error
    that must stop the run (the PACS unreachable), or None."""
    from ..export.command import add_export_parser, export
    from ..export.pacs import unreachable

    if outcome.status != "ok":
        return outcome, None
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
            failed = replace(outcome, status="failed", error=f"not stored on the PACS: {exc}")
            return failed, exc if unreachable(exc) else None
        return replace(outcome, stored=" ".join(item.url for item in report.stored)), None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


__all__ = ["publish"]
