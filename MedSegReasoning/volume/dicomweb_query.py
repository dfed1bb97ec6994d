"""A cohort on a PACS: QIDO-RS studies queries and the series of a study, for ``batch``.

``batch`` takes a QIDO-RS query URL as its cohort, ``http(s)://HOST/PATH/studies?ModalitiesInStudy=CT&StudyDate=
20250101-20251231`` (the service root, ``/studies``, and QIDO's own query keys), and each study it finds as
``{root}/studies/{StudyInstanceUID}``. A study's series are listed here (QIDO-RS, headers only) so a series filter
can pick one before anything is downloaded; the picked series is then read as ``ask`` reads
``{root}/studies/{uid}/series/{uid}`` (``dicomweb.load_dicomweb_series``). Same client, credentials and error
sentences as ``dicomweb``.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from ..wire.errors import InputError
from .dicom import SeriesSummary
from .dicomweb import connect, http_failure

_STUDY_URL = re.compile(r"^(?P<base>https?://.+?)/studies/(?P<study>[0-9.]+)/?$", re.IGNORECASE)
_NUMBER_OF_INSTANCES = "00201209"  # NumberOfSeriesRelatedInstances


def parse_study_url(text: str) -> tuple[str, str] | None:
    """``{root}/studies/{uid}`` -> (root, uid); anything else (a series URL, a path) -> None."""
    match = _STUDY_URL.match(text.strip()) if isinstance(text, str) else None
    return (match["base"].rstrip("/"), match["study"]) if match else None


def parse_studies_query(url: str) -> tuple[str, dict[str, str]]:
    """``{root}/studies?KEY=VALUE&...`` -> (root, the query's keys); anything else is a usage error saying the form."""
    parts = urlsplit(url.strip())
    path = parts.path.rstrip("/")
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc or not path.lower().endswith("/studies"):
        raise InputError(
            f"{url} is not a DICOMweb studies query: give it as http(s)://HOST/PATH/studies?KEY=VALUE&... "
            "(e.g. http://localhost:8042/dicom-web/studies?ModalitiesInStudy=CT&StudyDate=20250101-20251231)."
        )
    root = urlunsplit((parts.scheme, parts.netloc, path[: -len("/studies")], "", ""))
    return root, dict(parse_qsl(parts.query, keep_blank_values=False))


def search_studies(url: str) -> list[str]:
    """The Study Instance UIDs the QIDO-RS query ``url`` finds, in the server's order, once each (one request: a
    server that pages its answers is given ``limit`` in the query, and ``offset`` for the next pages)."""
    root, filters = parse_studies_query(url)
    client = connect(root)
    try:
        found = client.search_for_studies(search_filters=filters or None)
    except Exception as exc:
        raise http_failure(exc, root, "search for studies") from exc
    uids = [_value(item, "0020000D") for item in found]
    return list(dict.fromkeys(u for u in uids if u))


def list_study_series(study_url: str) -> list[SeriesSummary]:
    """The series of the study at ``{root}/studies/{uid}`` (QIDO-RS, no pixels): UID, modality, description and
    number of instances, as ``volume.dicom.list_series`` gives them for a folder."""
    where = parse_study_url(study_url)
    if where is None:
        raise InputError(f"{study_url} is not a DICOMweb study URL: give http(s)://HOST/PATH/studies/STUDY_UID.")
    root, study = where
    client = connect(root)
    try:
        found = client.search_for_series(
            study_instance_uid=study, fields=["Modality", "SeriesDescription", "NumberOfSeriesRelatedInstances"]
        )
        series = []
        for item in found:
            uid = _value(item, "0020000E")
            count = _value(item, _NUMBER_OF_INSTANCES)
            if not count:  # a server that does not compute it: count the instances
                count = str(len(client.search_for_instances(study_instance_uid=study, series_instance_uid=uid)))
            series.append(SeriesSummary(uid, _value(item, "00080060"), _value(item, "0008103E"), int(count)))
    except Exception as exc:
        raise http_failure(exc, study_url, "list the study's series") from exc
    return series


def _value(item: dict, tag: str) -> str:
    values = (item.get(tag) or {}).get("Value") or [""]
    return str(values[0] if values[0] is not None else "")


__all__ = ["list_study_series", "parse_studies_query", "parse_study_url", "search_studies"]
