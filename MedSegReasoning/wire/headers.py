"""The names both sides of the HTTP API must spell alike (docs/wire-format.md): path prefix, headers, ready line.

HTTP header names are case-insensitive; the server reads and writes these through Starlette, which compares them
case-insensitively and sends them lower-cased. Standard library only.
"""

from __future__ import annotations

API = "/v1"
"""Every endpoint's path prefix."""

VOLUME_HEADER = "X-MedSeg-Volume"
"""The volume's description (shape, dtype, LPS geometry, optional content hash and DICOM UIDs) as JSON, sent with
its voxels so that every limit is checked before one byte of the body is read."""

ROUND_ID_HEADER = "X-MedSeg-Round-Id"
"""The id of the round a streamed answer belongs to (what a cancel names)."""

AFFINITY_HEADER = "X-MedSeg-Affinity"
"""A random id per client, so that a proxy in front of several replicas keeps one client on one (docs/deployment.md)."""

READY_PREFIX = "MEDSEG-SERVER-READY "
"""What ``medseg-reasoning serve`` prints before the JSON of its address and token file, once it listens; the
local-server manager (``wire.process.LocalServer``) waits for that line."""
