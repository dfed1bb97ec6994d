"""Which versions of the wire each side speaks, how they say so, and the one sentence when they cannot talk.

Why: a Slicer extension is updated by the Extensions Manager while a department's server is updated by its
operator, so an extension 1.0 meeting a server 0.x (or the reverse) is the ordinary case, not an accident. Each
request of ``MedSegClient`` names the client's package version and the wire version it speaks; the server serves
the wire versions from ``MIN_WIRE_VERSION`` to ``WIRE_VERSION`` and refuses others (400
``wire_version_unsupported``) with a sentence that says which side to update. Every authenticated answer names the
server's package version and wire versions, so a client also notices a server that predates this check but
advertises versions it does not share. A request without the headers (curl, scripts) is served as the current
wire version. Standard library only (docs/wire-format.md, "Versions").
"""

from __future__ import annotations

import re

from .. import __version__

PACKAGE_VERSION: str = __version__
"""This package's release (``MedSegReasoning.__version__``), which a client sends and a server announces."""

WIRE_VERSION = 1
"""The wire version this package speaks (docs/wire-format.md); the URL prefix ``/v1`` carries the same number."""
MIN_WIRE_VERSION = 1
"""The oldest wire version this package's server still serves."""

CLIENT_VERSION_HEADER = "X-MedSeg-Client-Version"
"""Request: the client's MedSegReasoning version (e.g. ``0.1.0``); informative, for the refusal's sentence."""
WIRE_VERSION_HEADER = "X-MedSeg-Wire-Version"
"""Request: the wire version the client speaks. Absent: the server's current one."""
SERVER_VERSION_HEADER = "X-MedSeg-Server-Version"
"""Answer: the server's MedSegReasoning version."""
WIRE_VERSIONS_HEADER = "X-MedSeg-Wire-Versions"
"""Answer: the wire versions the server serves, ``"<min>-<max>"`` (e.g. ``1-1``)."""

_RANGE = re.compile(r"\s*(\d{1,6})\s*-\s*(\d{1,6})\s*")
_NUMBER = re.compile(r"\s*(\d{1,6})\s*")


def parse_wire_version(value: str | None) -> int | None:
    """The wire version a request names; None when it names none; ``ValueError`` when it is not a number."""
    if value is None or not value.strip():
        return None
    match = _NUMBER.fullmatch(value)
    if match is None:
        raise ValueError(f"the {WIRE_VERSION_HEADER} header must be a whole number, got {value[:40]!r}")
    return int(match.group(1))


def parse_wire_range(value: str | None) -> tuple[int, int] | None:
    """The ``(min, max)`` of a server's ``X-MedSeg-Wire-Versions`` answer; None when absent or malformed."""
    match = _RANGE.fullmatch(value or "")
    if match is None:
        return None
    low, high = int(match.group(1)), int(match.group(2))
    return (low, high) if low <= high else None


def wire_range_header(low: int = MIN_WIRE_VERSION, high: int = WIRE_VERSION) -> str:
    return f"{low}-{high}"


def mismatch_sentence(
    client_wire: int,
    client_version: str | None,
    server_range: tuple[int, int],
    server_version: str | None,
) -> str | None:
    """None when the client's wire version is one the server serves; else the sentence that says who must update.

    The same words on both sides: the server sends it with its refusal, a client says it when a server answers
    with versions it does not share."""
    low, high = server_range
    if low <= client_wire <= high:
        return None
    client = f"MedSegReasoning {client_version}" if client_version else "a MedSegReasoning client"
    server = f"MedSegReasoning {server_version}" if server_version else "MedSegReasoning"
    versions = f"wire version {low}" if low == high else f"wire versions {low} to {high}"
    if client_wire < low:
        return (
            f"this client ({client}, wire version {client_wire}) is older than the server ({server}, {versions}): "
            f"update the MedSegReasoning extension or package to {server_version or 'the server version'} or later."
        )
    return (
        f"this client ({client}, wire version {client_wire}) is newer than the server ({server}, {versions}): ask "
        f"the server's operator to update it to MedSegReasoning {client_version or 'the client version'} or later, "
        f"or use a MedSegReasoning {server_version or 'release'} client with it."
    )
