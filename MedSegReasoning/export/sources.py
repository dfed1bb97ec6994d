"""From a session folder or an ``ask`` result folder to an ``ExportSet``, and the source image checked again.

Reading never changes the folder: the session is loaded read-only (``load_session`` writes nothing), masks come
from its content-addressed files, and nothing is saved back. Which structures are exported:

- session: every entity that is not *rejected* (rejected ones stay in the record, like in the dialogue, and the
  summary says they were left out), numbered 1..n in entity order;
- result: every target of ``result.json``, numbered 1..n in its order, masks from its label map.

AUTOMATIC vs SEMIAUTOMATIC (DICOM's Segment Algorithm Type): a mask is AUTOMATIC when a reasoner placed the prompt
(the round has reasoning text or a reasoner call) and nobody edited it; a user's own box or point, or an edit in
Slicer, makes it SEMIAUTOMATIC.

The source image is checked again before a DICOM export in ``source_check.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..terminology.codes import CodedTerminology
from ..terminology.matcher import default_terminology
from ..volume.core import Geometry
from ..wire.errors import InputError
from ..wire.masks import CompactMask
from .model import ExportSegment, ExportSet, ModelNames, RoundText, default_color

SESSION_FILE = "session.json"
RESULT_FILE = "result.json"
RESULT_SCHEMA = "medseg-reasoning/result"
_UID_NAMES = {
    "study_instance_uid": "Study Instance UID",
    "series_instance_uid": "Series Instance UID",
    "frame_of_reference_uid": "Frame of Reference UID",
}


def load_export_set(folder: str | Path, models: ModelNames | None = None) -> ExportSet:
    """The structures of a session folder or an ``ask`` result folder; ``models`` fill in or override the model
    names the folder records (sessions do not record them yet)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise InputError(
            f"{folder} is not a folder: give a session folder (with {SESSION_FILE}) or an ask output folder (with {RESULT_FILE})."
        )
    if (folder / SESSION_FILE).is_file():
        export_set = _from_session(folder)
    elif (folder / RESULT_FILE).is_file():
        export_set = _from_result(folder)
    else:
        raise InputError(
            f"{folder} holds neither {SESSION_FILE} nor {RESULT_FILE}: give a session folder or an ask output folder."
        )
    if models is not None:
        export_set.models = _merge_models(export_set.models, models)
    return export_set


def _merge_models(recorded: ModelNames, given: ModelNames) -> ModelNames:
    return ModelNames(
        reasoner=given.reasoner or recorded.reasoner,
        segmenter=given.segmenter or recorded.segmenter,
        reasoner_version=given.reasoner_version or (recorded.reasoner_version if not given.reasoner else ""),
        segmenter_version=given.segmenter_version or (recorded.segmenter_version if not given.segmenter else ""),
    )


# ---------------------------------------------------------------------------------------------------------------
# Sessions


def _from_session(folder: Path) -> ExportSet:
    from ..dialogue.findings import measure
    from ..dialogue.restore import load_session

    session = load_session(folder)
    doc = _read_json(folder / SESSION_FILE)
    geometry, shape = session.geometry, session.shape
    rounds = {r.index: r for r in session.rounds}
    kept = [e for e in session.entities.values() if e.review != "rejected"]
    left_out = tuple(f"{e.id} ({e.name}, rejected)" for e in session.entities.values() if e.review == "rejected")
    if not kept:
        what = "only rejected entities" if left_out else "no entities"
        raise InputError(f"the session in {folder} has {what}: there is nothing to export.")
    segments = []
    for number, entity in enumerate(kept, start=1):
        mask = _dense_or_refuse(entity.mask, shape, f"entity {entity.id} ('{entity.name}')")
        m = measure(entity.mask, geometry, entity.key_slice)
        placed_by_reasoner = _reasoner_placed(rounds.get(entity.updated_round) or rounds.get(entity.round))
        segments.append(
            ExportSegment(
                number=number,
                entity_id=entity.id,
                name=entity.name,
                mask=mask,
                terminology=entity.terminology,
                color=tuple(entity.color),  # type: ignore[arg-type]  # a copy of the entity's Color (R, G, B)
                automatic=placed_by_reasoner and not entity.edited,
                tracking_uid=_tracking_uid(session.created, entity.id),
                review=entity.review,
                edited=entity.edited,
                round=entity.updated_round or entity.round,
                findings=entity.findings,
                key_slice=m.key_slice,
                volume_ml=m.volume_ml,
                max_diameter_mm=m.max_diameter_mm,
            )
        )
    volume_doc = doc.get("volume", {}) if isinstance(doc.get("volume"), dict) else {}
    return ExportSet(
        origin=str(folder),
        kind="session",
        source_path=session.volume.path,
        shape=shape,
        geometry=geometry,
        modality=session.volume.modality,
        segments=tuple(segments),
        models=_session_models(doc),
        rounds=tuple(RoundText(r.index, r.question, r.reasoning) for r in session.rounds),
        left_out=left_out,
        content_hash=session.volume.content_hash,
        recorded_uids=_session_uids(session.volume, volume_doc),
    )


def _session_uids(record: Any, volume_doc: dict) -> dict[str, str]:
    """The source UIDs a session records: ``volume.dicom`` (what ``VolumeRecord`` writes), or the same keys directly
    under ``volume`` (early sessions)."""
    uids = {k: str(getattr(record, k, "") or "") for k in _UID_NAMES}
    uids.update({k: str(volume_doc[k]) for k in _UID_NAMES if volume_doc.get(k)})
    return {k: v for k, v in uids.items() if v}


def _reasoner_placed(rnd: Any) -> bool:
    """A reasoner answered this round (its plan came with reasoning text, or a reasoner was called)."""
    return rnd is not None and (bool(getattr(rnd, "reasoning", "")) or "reason_s" in getattr(rnd, "timings", {}))


def _session_models(doc: dict) -> ModelNames:
    """``session.json`` may carry ``"models": {"reasoner": {...}, "segmenter": {...}}`` (ReasonerIdentity /
    ModelIdentity dicts); older sessions do not, and the export command's --reasoner/--segmenter fill in."""
    models = found if isinstance(found := doc.get("models"), dict) else {}
    reasoner = found if isinstance(found := models.get("reasoner"), dict) else {}
    segmenter = found if isinstance(found := models.get("segmenter"), dict) else {}
    return ModelNames(
        reasoner=reasoner.get("name") or None,
        segmenter=segmenter.get("name") or None,
        reasoner_version=str(reasoner.get("revision") or ""),
        segmenter_version=_weights_version(segmenter),
    )


def _weights_version(identity: dict) -> str:
    sha = str(identity.get("sha256") or "")
    return f"sha256:{sha[:12]}" if sha else ""


def _tracking_uid(created: str, entity_id: str) -> str:
    """The same structure gets the same tracking UID in every export of its session (PACS tools join on it)."""
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=["medseg-reasoning tracking", created, entity_id]))


# ---------------------------------------------------------------------------------------------------------------
# ask results


def _from_result(folder: Path) -> ExportSet:
    from ..dialogue.findings import measure
    from ..volume.itk_io import read_itk_image

    doc = _read_json(folder / RESULT_FILE)
    if doc.get("schema") != RESULT_SCHEMA:
        raise InputError(f"{folder / RESULT_FILE} is not a {RESULT_SCHEMA} file.")
    source = doc.get("input") or {}
    mask_name = (doc.get("outputs") or {}).get("mask") or "mask.nii.gz"
    mask_path = folder / mask_name
    if not mask_path.is_file():
        raise InputError(f"{mask_path} is missing: the ask output folder is incomplete; run ask again.")
    labels = read_itk_image(mask_path)
    geometry = _recorded_geometry(source) or labels.geometry
    if tuple(source.get("shape_ijk") or labels.size_ijk) != labels.size_ijk or not labels.geometry.is_close(geometry):
        raise InputError(
            f"{mask_path} is not on the grid result.json records for its input: the folder was mixed up; run ask again."
        )
    targets = doc.get("targets") or []
    if not targets:
        raise InputError(f"{folder / RESULT_FILE} lists no targets: there is nothing to export.")
    terminology = default_terminology()
    reasoner = doc.get("reasoner") if isinstance(doc.get("reasoner"), dict) else None
    round_doc = found if isinstance(found := doc.get("round"), dict) else {}
    round_index = int(round_doc.get("index", 1)) if round_doc else (1 if doc.get("question") else None)
    segments = []
    for number, target in enumerate(targets, start=1):
        label = str(target.get("label") or f"Segment {number}")
        dense = np.asarray(labels.array) == int(target["value"])
        entity_id = str(target.get("entity_id") or f"T{number}")
        if not dense.any():
            raise InputError(
                f"target {entity_id} ('{label}') has an empty mask in {mask_path}: nothing can be exported for it; "
                "run ask again, or export a session instead."
            )
        coded = _result_terminology(target, terminology)
        m = measure(CompactMask.from_dense(dense), labels.geometry, target.get("key_slice"))
        name = coded.display_name if coded.coded else label
        segments.append(
            ExportSegment(
                number=number,
                entity_id=entity_id,
                name=name,
                mask=dense,
                terminology=coded,
                color=coded.color or default_color(number - 1),
                automatic=reasoner is not None,
                tracking_uid=_tracking_uid(str(doc.get("created", "")), entity_id),
                round=round_index,
                findings=str(target.get("findings") or ""),
                key_slice=m.key_slice,
                volume_ml=m.volume_ml,
                max_diameter_mm=m.max_diameter_mm,
            )
        )
    segmenter = (doc.get("versions") or {}).get("segmenter") or {}
    models = ModelNames(
        reasoner=reasoner.get("name") if reasoner else None,
        segmenter=segmenter.get("name") or None,
        reasoner_version=str(reasoner.get("revision") or "") if reasoner else "",
        segmenter_version=_weights_version(segmenter),
    )
    rounds: tuple[RoundText, ...] = ()
    if doc.get("question"):
        rounds = (RoundText(round_index or 1, str(doc["question"]), str(round_doc.get("reasoning") or "")),)
    return ExportSet(
        origin=str(folder),
        kind="result",
        source_path=str(source.get("path") or ""),
        shape=labels.shape,
        geometry=labels.geometry,
        modality=str(source.get("modality") or ""),
        segments=tuple(segments),
        models=models,
        rounds=rounds,
        content_hash=source.get("content_sha256"),
        recorded_uids={k: str(source[k]) for k in _UID_NAMES if source.get(k)},
    )


def _recorded_geometry(source: dict) -> Geometry | None:
    try:
        return Geometry.from_arrays(source["origin_lps_mm"], source["spacing_mm"], source["direction"])
    except (KeyError, TypeError, ValueError):
        return None


def _result_terminology(target: dict, terminology) -> CodedTerminology:
    """The codes the round recorded, else the label mapped without the embedding model (fast, and no guess)."""
    if isinstance(target.get("terminology"), dict):
        try:
            return CodedTerminology.from_dict(target["terminology"])
        except (KeyError, TypeError, ValueError):
            pass
    return terminology.match(str(target.get("label") or "structure"), use_embedding=False)


# ---------------------------------------------------------------------------------------------------------------
def _dense_or_refuse(mask: CompactMask, shape: tuple[int, int, int], what: str) -> np.ndarray:
    if mask.is_empty:
        raise InputError(f"{what} has an empty mask: delete it or segment it again, then export.")
    dense = mask.to_dense(shape)
    if not dense.any():
        raise InputError(f"{what} has an empty mask: delete it or segment it again, then export.")
    return dense


def _read_json(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text("utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path} cannot be read as JSON ({exc}): the folder is damaged.") from None
    if not isinstance(doc, dict):
        raise InputError(f"{path} does not hold a JSON object: the folder is damaged.")
    return doc
