"""A DICOMweb series as a ``Volume``: ``ask`` on ``https://pacs/dicom-web/studies/{uid}/series/{uid}``.

The series is downloaded (WADO-RS) into a local folder and read by the same DICOM reader as a folder on disk, so a
PACS series passes exactly the geometry checks a local one does (one series, no gaps, one orientation, ...). The
files stay: ``Volume.source.dicom.files`` points at them, and a DICOM-SEG or SR made later must reference exactly
the instances the mask was drawn on.

Talking to the server goes through ``dicomweb-client`` (requests underneath). Credentials never appear on the
command line or in a URL; they come from the environment, because command lines end up in shell histories and
process lists:

- ``MEDSEG_DICOMWEB_TOKEN``: sent as ``Authorization: Bearer <token>``;
- ``MEDSEG_DICOMWEB_USER`` and ``MEDSEG_DICOMWEB_PASSWORD``: HTTP Basic authentication;
- ``MEDSEG_DICOMWEB_HEADERS``: any further headers as a JSON object, e.g. ``{"X-Api-Key": "..."}``.

Every failure becomes one sentence: the server unreachable (``ServiceError``, exit 4), refusing or failing
(``ServiceError``), or the URL naming nothing (``InputError``, exit 2). Values of credentials are never printed.
"""

from __future__ import annotations

import atexit
import base64
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..wire.errors import InputError, MedSegError, ServiceError
from .core import Volume, VolumeSource

ENV_TOKEN = "MEDSEG_DICOMWEB_TOKEN"
ENV_USER = "MEDSEG_DICOMWEB_USER"
ENV_PASSWORD = "MEDSEG_DICOMWEB_PASSWORD"
ENV_HEADERS = "MEDSEG_DICOMWEB_HEADERS"

TIMEOUT_S = (5.0, 120.0)  # (connect, read): a PACS that is down fails fast; a big series may take a while
RETRY_ATTEMPTS = 3  # 429/503/504 and dropped connections are retried with short exponential back-off ...
RETRY_WAIT_MS = 100  # ... starting at 0.2 s, so "the PACS is down" is said within about a second

_SERIES_URL = re.compile(
    r"^(?P<base>https?://.+?)/studies/(?P<study>[0-9.]+)/series/(?P<series>[0-9.]+)/?$", re.IGNORECASE
)


@dataclass(frozen=True)
class SeriesUrl:
    """``{base}/studies/{study}/series/{series}``: where the DICOMweb service lives and which series."""

    base: str
    study_instance_uid: str
    series_instance_uid: str

    @property
    def url(self) -> str:
        return f"{self.base}/studies/{self.study_instance_uid}/series/{self.series_instance_uid}"


def is_dicomweb_url(text: str | os.PathLike) -> bool:
    """True for ``http(s)://`` inputs: the loader sends those here instead of to the file readers."""
    return isinstance(text, str) and text.lower().startswith(("http://", "https://"))


def parse_series_url(url: str) -> SeriesUrl:
    """Split a WADO-RS series URL into service base and UIDs, or say what the URL must look like."""
    match = _SERIES_URL.match(url.strip())
    if not match:
        raise InputError(
            f"{url} is not a DICOMweb series URL: give it as http(s)://HOST/PATH/studies/STUDY_UID/series/SERIES_UID "
            "(e.g. http://localhost:8042/dicom-web/studies/1.2.3/series/1.2.3.4)."
        )
    return SeriesUrl(match["base"].rstrip("/"), match["study"], match["series"])


def headers_from_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The HTTP headers the environment asks for (see the module docstring); no variables, no headers."""
    env = os.environ if environ is None else environ
    headers: dict[str, str] = {}
    extra = env.get(ENV_HEADERS, "").strip()
    if extra:
        try:
            parsed = json.loads(extra)
        except json.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict) or not all(isinstance(v, str) for v in parsed.values()):
            raise InputError(
                f'{ENV_HEADERS} must be a JSON object of header names and string values, e.g. {{"X-Api-Key": "..."}}.'
            )
        headers.update({str(k): v for k, v in parsed.items()})
    user, password = env.get(ENV_USER, ""), env.get(ENV_PASSWORD, "")
    if user or password:
        if not (user and password):
            raise InputError(f"set both {ENV_USER} and {ENV_PASSWORD} for HTTP Basic authentication, or neither.")
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    token = env.get(ENV_TOKEN, "").strip()
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def connect(base_url: str, headers: Mapping[str, str] | None = None):
    """A ``dicomweb_client.DICOMwebClient`` for ``base_url`` with the environment's credentials and short retries."""
    from dicomweb_client import DICOMwebClient

    client = DICOMwebClient(
        url=base_url.rstrip("/"),
        headers=dict(headers_from_env() if headers is None else headers),
        timeout=TIMEOUT_S,
    )
    client.set_http_retry_params(retry=True, max_attempts=RETRY_ATTEMPTS, wait_exponential_multiplier=RETRY_WAIT_MS)
    return client


def http_failure(exc: Exception, url: str, action: str) -> MedSegError:
    """One sentence for a failed request: what was tried, what the server said, what to do."""
    import requests

    if isinstance(exc, MedSegError):
        return exc
    if isinstance(exc, requests.exceptions.HTTPError) and exc.response is not None:
        status = exc.response.status_code
        reason = _server_reason(exc.response)
        if status in (401, 403):
            return ServiceError(
                f"the DICOMweb server at {url} refused to {action} (HTTP {status}{reason}): set {ENV_TOKEN}, or "
                f"{ENV_USER} and {ENV_PASSWORD}, to credentials it accepts."
            )
        if status == 404:
            return InputError(
                f"the DICOMweb server at {url} has nothing there to {action} (HTTP 404{reason}): check the URL, "
                "its study and series UIDs, and the service path (e.g. /dicom-web)."
            )
        if 400 <= status < 500:
            return ServiceError(
                f"the DICOMweb server at {url} rejected the request to {action} (HTTP {status}{reason}): "
                "check that it accepts these objects, or ask its administrator."
            )
        return ServiceError(
            f"the DICOMweb server at {url} failed to {action} (HTTP {status}{reason}): try again later, "
            "or ask its administrator."
        )
    if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
        return ServiceError(
            f"the DICOMweb server at {url} is not reachable ({type(exc).__name__}): check that it is running and "
            "the URL (host, port, path), then try again."
        )
    if isinstance(exc, requests.exceptions.RequestException):
        return ServiceError(f"the request to {action} at {url} failed ({type(exc).__name__}: {exc}): try again.")
    return ServiceError(
        f"the DICOMweb server at {url} sent an answer this tool cannot read while trying to {action} "
        f"({type(exc).__name__}: {exc}): check that the URL points at a DICOMweb service."
    )


def _server_reason(response: Any) -> str:
    """The server's own short explanation, when it sends one (never the request, which may carry credentials)."""
    text = (getattr(response, "text", "") or "").strip()
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        text = str(doc.get("Details") or doc.get("Message") or doc.get("message") or "")
    text = " ".join(text.split())
    if not text or text.startswith("<"):
        return ""
    return f": {text[:160]}"


# ---------------------------------------------------------------------------------------------------------------
def load_dicomweb_series(url: str, dest: str | Path | None = None, headers: Mapping[str, str] | None = None) -> Volume:
    """Download the series at ``url`` (WADO-RS) and read it like a DICOM folder; see the module docstring.

    ``dest`` is the folder the instances are saved in (created; it must be empty or absent). Without it, a
    temporary folder is made that lives until this process ends. On failure nothing downloaded is left behind.
    """
    from .dicom import read_dicom_folder

    where = parse_series_url(url)
    folder, owned = _destination(dest)
    try:
        count = download_series(where, folder, headers)
        if count == 0:
            raise InputError(
                f"the DICOMweb server at {where.base} returned no instances for series {where.series_instance_uid}: "
                "check the study and series UIDs."
            )
        volume = read_dicom_folder(folder, where.series_instance_uid)
    except BaseException:
        if owned:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            _empty_folder(folder)
        raise
    if owned:
        atexit.register(shutil.rmtree, folder, True)
    return Volume(
        array=volume.array,
        geometry=volume.geometry,
        modality=volume.modality,
        source=VolumeSource(kind="dicomweb", path=where.url, dicom=volume.source.dicom),
    )


def download_series(where: SeriesUrl, folder: Path, headers: Mapping[str, str] | None = None) -> int:
    """Save every instance of the series into ``folder`` as ``<SOPInstanceUID>.dcm``; returns how many."""
    client = connect(where.base, headers)
    count = 0
    try:
        for ds in client.iter_series(where.study_instance_uid, where.series_instance_uid):
            _save_instance(ds, folder)
            count += 1
    except Exception as exc:
        raise http_failure(exc, where.url, "send the series") from exc
    return count


def _save_instance(ds, folder: Path) -> None:
    """Part-10 file with the instance's own UID as its name (unique within a series, safe as a file name)."""
    uid = str(getattr(ds, "SOPInstanceUID", "") or "")
    if not re.fullmatch(r"[0-9.]{1,64}", uid):
        raise InputError("the DICOMweb server sent an instance without a valid SOP Instance UID: it cannot be used.")
    ds.save_as(folder / f"{uid}.dcm", enforce_file_format=True)


def _destination(dest: str | Path | None) -> tuple[Path, bool]:
    if dest is None:
        return Path(tempfile.mkdtemp(prefix="medseg-dicomweb-")), True
    folder = Path(dest)
    if folder.exists() and any(folder.iterdir()):
        raise InputError(f"the download folder {folder} is not empty: give an empty or new folder.")
    folder.mkdir(parents=True, exist_ok=True)
    return folder, False


def _empty_folder(folder: Path) -> None:
    for item in _files(folder):
        item.unlink(missing_ok=True)


def _files(folder: Path) -> Iterable[Path]:
    return [p for p in folder.iterdir() if p.is_file()] if folder.is_dir() else []
