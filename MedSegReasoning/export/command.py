"""``medseg-reasoning export``: a session or an ``ask`` result as DICOM-SEG, SR, ``.seg.nrrd`` and NIfTI, to a
folder or a PACS.

Order of work, so nothing half-done is left anywhere: check the arguments and the output folder; read the session
or result (read-only: it is never changed); re-read and check the source image when DICOM is asked for; build
every object in memory (and de-identify it); only then write them all into the folder as one set
(``atomic.staged_outputs``: all files appear, or none), or store them on the PACS, SEG before SR.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..wire.errors import EXIT_OK, InputError

FORMATS = ("seg", "sr", "seg-nrrd", "nifti")
PACS_FORMATS = ("seg", "sr")
SEG_FILE = "seg.dcm"
SR_FILE = "sr.dcm"
SEG_NRRD_FILE = "segmentation.seg.nrrd"
NIFTI_STEM = "labels"
DEFAULT_OUT = Path("medseg-export")

EXPORT_EPILOG = f"""formats (--format, comma-separated):
  seg        {SEG_FILE}: DICOM-SEG referencing the source series (--seg-type auto: a label map SEG when segments
             do not overlap and no SR is written, else binary; --seg-type binary for readers older than 2024)
  sr         {SR_FILE}: DICOM SR TID 1500 measurement report (volume, key-slice diameter, question, reasoning),
             referencing the SEG's segments (needs seg)
  seg-nrrd   {SEG_NRRD_FILE}: 3D Slicer segmentation with names, colours and terminology
  nifti      {NIFTI_STEM}.nii.gz label map (value n = segment n; overlapping segments in {NIFTI_STEM}-layer2.nii.gz, ...)
             and {NIFTI_STEM}.json describing each label

seg and sr need the DICOM series the masks were made on, unchanged, at the path (or DICOMweb URL) the session or
result records. --series DIR (or the series' files) gives it where the record has no path (a session made from
voxels uploaded by a client such as the Slicer module) or a path that moved; a series whose grid, UIDs or voxels
differ from the session's volume is refused. Rejected entities are left out. The folder is never modified.

PACS (--dicomweb URL, the service root, e.g. http://localhost:8042/dicom-web): seg and sr are stored with STOW-RS.
Credentials come from the environment: MEDSEG_DICOMWEB_TOKEN (bearer), or MEDSEG_DICOMWEB_USER and
MEDSEG_DICOMWEB_PASSWORD (basic), and MEDSEG_DICOMWEB_HEADERS (JSON object of extra headers).

--deidentify applies DICOM PS3.15 Annex E's basic profile to the SEG and SR (pseudonymous patient, new UIDs,
dummy dates, no free text) and keeps the remapping locally in --deid-map (default $MEDSEG_DEID_MAP or
~/.local/share/medseg-reasoning/deid-map.json); never send that file along.

exit codes: 0 success, 2 bad input (the message says what to fix), 4 PACS unreachable or refusing
"""


def add_export_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``export`` subcommand to ``subparsers`` (an ``add_subparsers()`` result); returns its parser."""
    parser = subparsers.add_parser(
        "export",
        help="write a session's or result's segments as DICOM-SEG, SR, .seg.nrrd or NIfTI, or send them to a PACS",
        description="Export the structures of a session folder or an ask output folder.",
        epilog=EXPORT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "source", metavar="RESULT_OR_SESSION_DIR", type=Path, help="a session folder or an ask --out folder"
    )
    parser.add_argument(
        "--format", required=True, metavar="LIST", help=f"comma-separated, any of: {', '.join(FORMATS)}"
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--to", type=Path, metavar="DIR", help=f"output folder (default: ./{DEFAULT_OUT})")
    where.add_argument("--dicomweb", metavar="URL", help="store seg/sr on this DICOMweb service (STOW-RS)")
    parser.add_argument("--force", action="store_true", help="write into a non-empty --to folder")
    parser.add_argument(
        "--series",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="the DICOM series the masks were made on (a folder, or its files), where the folder records no path "
        "or one that moved",
    )
    parser.add_argument("--seg-type", choices=("auto", "binary", "labelmap"), default="auto", help="DICOM-SEG encoding")
    parser.add_argument(
        "--assign-uids",
        action="store_true",
        help="for a source series with blank Study/Series UIDs: reference it by UIDs derived from the voxels' content "
        "hash (the same ones `ask --assign-uids` records)",
    )
    parser.add_argument(
        "--deidentify", action="store_true", help="de-identify the SEG and SR (PS3.15 Annex E basic profile)"
    )
    parser.add_argument("--deid-map", type=Path, metavar="FILE", help="local UID/pseudonym remapping file")
    parser.add_argument(
        "--verifier",
        metavar="NAME",
        help="who verified the findings (Last^First): the SR is VERIFIED "
        "when every exported entity is confirmed and a verifier is named",
    )
    parser.add_argument("--organization", metavar="NAME", help="the verifier's organisation")
    parser.add_argument("--reasoner", metavar="NAME", help="reasoner model name, where the folder does not record it")
    parser.add_argument("--segmenter", metavar="NAME", help="segmenter model name, where the folder does not record it")
    return parser


@dataclass
class ExportReport:
    """What an export did: files written (or instances stored) and notes for the user."""

    written: list[str] = field(default_factory=list)
    stored: list[Any] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def run_export(args: argparse.Namespace) -> int:
    """The ``export`` command; raises ``MedSegError`` subclasses (the CLI prints them and exits with their code)."""
    report = export(args)
    for line in report.notes:
        print(line)
    return EXIT_OK


def export(args: argparse.Namespace) -> ExportReport:
    from .model import ModelNames
    from .sources import load_export_set

    formats = parse_formats(args.format)
    if args.dicomweb:
        other = [f for f in formats if f not in PACS_FORMATS]
        if other:
            raise InputError(
                f"--dicomweb stores DICOM objects only, and {', '.join(other)} is not DICOM: export it with --to DIR."
            )
    out = None if args.dicomweb else (args.to or DEFAULT_OUT)
    if out is not None:
        _check_out_dir(out, args.force)
    export_set = load_export_set(args.source, ModelNames(reasoner=args.reasoner, segmenter=args.segmenter))
    report = ExportReport()
    dicom = _build_dicom(export_set, formats, args, report.notes)
    report.notes.insert(0, _summary(export_set))
    if args.dicomweb:
        _store(args.dicomweb, dicom, report)
    else:
        assert out is not None
        _write(out, export_set, formats, dicom, args.deidentify, report)
    report.notes.extend(_dicom_notes(dicom, export_set, args))
    return report


def parse_formats(text: str) -> list[str]:
    """``seg,sr`` -> ``["seg", "sr"]``; unknown names, an empty list, or sr without seg are refused."""
    formats = list(dict.fromkeys(f.strip().lower() for f in text.split(",") if f.strip()))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise InputError(
            f"--format {text!r} names {', '.join(unknown) or 'nothing'}: give a comma-separated list of "
            f"{', '.join(FORMATS)}."
        )
    if "sr" in formats and "seg" not in formats:
        raise InputError("the SR references the SEG's segments, so sr needs seg: use --format seg,sr.")
    return formats


def _check_out_dir(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"--to {out} is a file: give a folder.")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise InputError(f"the output folder {out} is not empty: choose another --to, or add --force to write into it.")


def _build_dicom(export_set, formats: list[str], args: argparse.Namespace, notes: list[str]) -> dict[str, Any]:
    """SEG and SR in memory, de-identified when asked (the remapping is saved before anything leaves)."""
    series = getattr(args, "series", None)
    if "seg" not in formats:
        if series:
            notes.append("--series is only read for seg and sr: left unused.")
        return {}
    from .dicom_seg import build_dicom_seg, read_source_headers_with_uids
    from .source_check import load_checked_source
    from .sr import build_measurement_report

    seg_type = _seg_type(args.seg_type, formats)
    volume = load_checked_source(export_set, series=series, notes=notes)
    headers, assigned = read_source_headers_with_uids(volume, getattr(args, "assign_uids", False))
    if assigned is not None:
        notes.append(assigned.describe() if assigned.assigned else "--assign-uids: the series has its own UIDs, kept.")
    seg = build_dicom_seg(volume, export_set.seg_specs(), export_set.models.algorithm(), seg_type, headers)
    objects: dict[str, Any] = {"seg": seg}
    if "sr" in formats:
        objects["sr"] = build_measurement_report(
            export_set,
            seg,
            headers,
            verifier=args.verifier,
            organization=args.organization,
            include_free_text=not args.deidentify,
        )
    if args.deidentify:
        from .deidentify import DeidentificationMap, deidentify

        mapping = DeidentificationMap.load(args.deid_map)
        objects = {key: deidentify(ds, mapping) for key, ds in objects.items()}
        mapping.save()
    return objects


def _seg_type(requested: str, formats: list[str]) -> str:
    """An SR references its SEG's segments by number, and validators (dciodvfy 2026) and report readers accept
    that reference for Segmentation Storage only, not yet for the 2024 Label Map Segmentation Storage: with an SR,
    the SEG is binary."""
    if "sr" not in formats:
        return requested
    if requested == "labelmap":
        raise InputError(
            "an SR can reference the segments of a binary SEG only (validators and report viewers do not accept a "
            "label map SEG there yet): use --seg-type auto or binary with sr, or export seg alone as a label map."
        )
    return "binary"


def _write(
    out: Path, export_set, formats: list[str], dicom: dict[str, Any], deidentified: bool, report: ExportReport
) -> None:
    from ..atomic import staged_outputs
    from .nifti import write_nifti_labels
    from .slicer_seg import write_seg_nrrd

    created = not out.exists()
    try:
        with staged_outputs(out) as staging:
            names: list[str] = []
            for key, name in (("seg", SEG_FILE), ("sr", SR_FILE)):
                if key in dicom:
                    dicom[key].save_as(staging / name, enforce_file_format=True)
                    names.append(name)
            if "seg-nrrd" in formats:
                names.append(write_seg_nrrd(export_set, staging / SEG_NRRD_FILE).name)
            if "nifti" in formats:
                names.extend(p.name for p in write_nifti_labels(export_set, staging, NIFTI_STEM, deidentified))
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    report.written = names
    report.notes.append(f"wrote {', '.join(names)} to {out}")


def _store(url: str, dicom: dict[str, Any], report: ExportReport) -> None:
    from .pacs import store_instances

    keys = [k for k in ("seg", "sr") if k in dicom]
    report.stored = store_instances(url, [dicom[k] for k in keys], names=[k.upper() for k in keys])
    for key, item in zip(keys, report.stored, strict=True):
        report.notes.append(f"stored {key.upper()} at {item.url}")


def _summary(export_set) -> str:
    names = ", ".join(f"{s.entity_id} {s.name}" for s in export_set.segments)
    text = f"exporting {len(export_set.segments)} structure(s) from {export_set.origin}: {names}"
    if export_set.left_out:
        text += f"; left out: {', '.join(export_set.left_out)}"
    return text


def _dicom_notes(dicom: dict[str, Any], export_set, args: argparse.Namespace) -> list[str]:
    notes = []
    if "seg" in dicom:
        notes.append(f"SEG: {dicom['seg'].SegmentationType} segmentation, {len(export_set.segments)} segment(s)")
    if "sr" in dicom:
        flag = dicom["sr"].VerificationFlag
        why = ""
        if flag != "VERIFIED":
            why = (
                " (give --verifier to mark confirmed findings verified)"
                if export_set.all_confirmed
                else " (not every exported entity is confirmed)"
            )
        notes.append(f"SR: verification {flag}{why}")
    if args.deidentify and dicom:
        from .deidentify import default_map_path

        where = args.deid_map or default_map_path()
        notes.append(f"de-identified; the remapping is kept in {os.fspath(where)} (do not send it along)")
    return notes
