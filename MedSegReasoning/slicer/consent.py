"""Consent before images leave this computer: a server that is not on this machine gets the input volume only after
the user agreed once for that server. The answer is kept in Slicer's settings (``qt.QSettings``, passed in), never
in the scene, so a shared scene file carries no one's consent."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from ..wire.network import is_loopback_host

SETTINGS_CONSENT_PREFIX = "MedSegReasoning/ConsentedServers/"


def is_local_server(url: str) -> bool:
    """Loopback by the same rule the client and the server use (``MedSegReasoning.wire.network``)."""
    try:
        host = urlsplit(url if "://" in url else f"http://{url}").hostname or ""
    except ValueError:
        return False
    return is_loopback_host(host)


def has_consent(settings: Any, url: str) -> bool:
    """Images leave this computer only after the user agreed once for that server (kept in Slicer's settings)."""
    return is_local_server(url) or settings.value(SETTINGS_CONSENT_PREFIX + url, "") == "yes"


def record_consent(settings: Any, url: str) -> None:
    if not is_local_server(url):
        settings.setValue(SETTINGS_CONSENT_PREFIX + url, "yes")
