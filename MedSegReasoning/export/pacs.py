"""STOW-RS to a PACS, and finding what was stored (QIDO-RS), through ``dicomweb-client``.

Objects are stored one request each, SEG before SR, so an SR never reaches the PACS without the SEG it references.
A store counts as done only when the server lists the instance as stored (Referenced SOP Sequence) and not as
failed (Failed SOP Sequence); anything else is a ``ServiceError`` naming what the PACS already holds, because a
PACS cannot be asked to forget it. Connection and credentials: ``volume.dicomweb`` (environment variables only).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..volume.dicomweb import connect, http_failure
from ..wire.errors import ServiceError


@dataclass(frozen=True)
class StoredInstance:
    """Where an object now lives on the PACS (its WADO-RS URL) and what it is."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    url: str


def dicomweb_base(url: str) -> str:
    """The service root a user gives (``http://host:8042/dicom-web``), without a trailing ``/studies``."""
    base = url.strip().rstrip("/")
    return base[: -len("/studies")] if base.lower().endswith("/studies") else base


def store_instances(url: str, datasets: Sequence[Any], names: Sequence[str] | None = None) -> list[StoredInstance]:
    """STOW-RS each dataset to ``url`` in order; returns where each one is. ``names`` label them in messages."""
    base = dicomweb_base(url)
    client = connect(base)
    names = list(names) if names is not None else [str(getattr(ds, "Modality", "object")) for ds in datasets]
    stored: list[StoredInstance] = []
    for ds, name in zip(datasets, names, strict=True):
        try:
            response = client.store_instances([ds], study_instance_uid=str(ds.StudyInstanceUID))
        except Exception as exc:
            raise _with_stored(http_failure(exc, base, f"store the {name}"), stored) from exc
        _check_response(response, ds, name, base, stored)
        stored.append(_instance(base, ds))
    return stored


def _check_response(response: Any, ds: Any, name: str, base: str, stored: list[StoredInstance]) -> None:
    uid = str(ds.SOPInstanceUID)
    failed = [str(item.get("ReferencedSOPInstanceUID", "")) for item in response.get("FailedSOPSequence", [])]
    ok = [str(item.get("ReferencedSOPInstanceUID", "")) for item in response.get("ReferencedSOPSequence", [])]
    if uid in failed or (response and uid not in ok):
        reason = _failure_reason(response)
        raise _with_stored(
            ServiceError(
                f"the DICOMweb server at {base} did not store the {name}{reason}: check that it accepts "
                f"{getattr(ds.SOPClassUID, 'name', ds.SOPClassUID)} objects, or ask its administrator."
            ),
            stored,
        )


def _failure_reason(response: Any) -> str:
    items = response.get("FailedSOPSequence", [])
    if items and "FailureReason" in items[0]:
        return f" (failure reason {items[0].FailureReason})"
    return ""


def _with_stored(error: Exception, stored: list[StoredInstance]) -> Exception:
    """Say what the PACS already has, so nobody stores it twice or thinks nothing arrived."""
    if not stored:
        return error
    already = ", ".join(f"{s.sop_instance_uid} ({s.sop_class_uid})" for s in stored)
    return type(error)(f"{error} It already stored: {already}.")


def _instance(base: str, ds: Any) -> StoredInstance:
    study, series, sop = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
    return StoredInstance(
        study_instance_uid=study,
        series_instance_uid=series,
        sop_instance_uid=sop,
        sop_class_uid=str(ds.SOPClassUID),
        url=f"{base}/studies/{study}/series/{series}/instances/{sop}",
    )


def find_instances(url: str, study_instance_uid: str, modality: str | None = None) -> list[dict[str, str]]:
    """QIDO-RS: the instances of a study (optionally of one modality) as plain UID dicts."""
    base = dicomweb_base(url)
    client = connect(base)
    filters = {"Modality": modality} if modality else None
    try:
        series = client.search_for_series(study_instance_uid=study_instance_uid, search_filters=filters)
        found = []
        for item in series:
            series_uid = item["0020000E"]["Value"][0]
            for inst in client.search_for_instances(
                study_instance_uid=study_instance_uid, series_instance_uid=series_uid
            ):
                found.append(
                    {
                        "series_instance_uid": series_uid,
                        "sop_instance_uid": inst["00080018"]["Value"][0],
                        "sop_class_uid": inst["00080016"]["Value"][0],
                        "modality": (item.get("00080060", {}).get("Value") or [""])[0],
                    }
                )
    except Exception as exc:
        raise http_failure(exc, base, "search the study") from exc
    return found


def retrieve_instance(url: str, study: str, series: str, sop: str):
    """WADO-RS one instance (a pydicom Dataset), e.g. to read a stored SEG or SR back."""
    base = dicomweb_base(url)
    client = connect(base)
    try:
        return client.retrieve_instance(study, series, sop)
    except Exception as exc:
        raise http_failure(exc, base, "send the instance") from exc


def unreachable(error: BaseException) -> bool:
    """Whether ``error`` (from a store or search here) means the server could not be reached at all (no
    connection, timed out), as opposed to a server that answered and refused: a batch stops on the first."""
    import requests

    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
