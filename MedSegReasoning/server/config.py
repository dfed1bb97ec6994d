"""What a server instance is allowed to do: where it listens, who may call it, how much it accepts.

Defaults are the safe ones, because the usual user never configures anything: the Slicer module starts the
server on the workstation, on 127.0.0.1, with a random token. Everything a department changes for a shared GPU
server (host, tokens, limits, how long idle sessions live) is a field here and a ``serve`` option.

This module is stdlib-only: the CLI imports it to parse options without loading FastAPI or a model.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..wire.errors import InputError
from ..wire.network import is_loopback_host as is_loopback
from ..wire.version import WIRE_VERSION as WIRE_VERSION  # the wire format's version (docs/wire-format.md)

APP_DIR_NAME = "medseg-reasoning"

ALLOWED_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
"""Voxel types a volume may arrive in: what DICOM, NIfTI and NRRD readers hand Slicer, nothing exotic."""

GiB = 1 << 30
MiB = 1 << 20


@dataclass(frozen=True)
class Limits:
    """Upload and capacity limits; checked before a request body is read (see ``guard.py``)."""

    max_upload_bytes: int = 2 * GiB  # a volume body, as sent (compressed or not)
    max_voxels: int = 768 * 1024 * 1024  # 512 x 512 x 3000 slices
    max_volume_bytes: int = 2 * GiB  # a volume's voxels once decoded (shape x itemsize), checked from the header
    max_json_bytes: int = 256 * MiB  # any other body: a mask edit of a whole-body entity is tens of MB
    max_question_chars: int = 4000
    max_prompts: int = 16
    dtypes: tuple[str, ...] = ALLOWED_DTYPES

    def to_dict(self) -> dict:
        return {
            "max_upload_bytes": self.max_upload_bytes,
            "max_voxels": self.max_voxels,
            "max_volume_bytes": self.max_volume_bytes,
            "max_json_bytes": self.max_json_bytes,
            "max_question_chars": self.max_question_chars,
            "max_prompts": self.max_prompts,
            "dtypes": list(self.dtypes),
        }


@dataclass(frozen=True)
class ServerConfig:
    """One server's settings. ``token_file`` None means: a random token in the user's config folder."""

    host: str = "127.0.0.1"
    port: int = 0
    token_file: Path | None = None
    state_dir: Path | None = None  # sessions and the audit log; default: the user's state folder
    limits: Limits = field(default_factory=Limits)
    max_sessions: int = 16
    max_sessions_per_token: int = 8  # one user (token) cannot take every slot; capped at max_sessions
    session_idle_s: float = 3600.0
    evict_idle_s: float = 600.0  # when full, a session idle this long makes room (its client restores the archive)
    sweep_interval_s: float = 30.0
    heartbeat_s: float = 10.0  # an SSE comment line this often keeps proxies from closing a quiet stream
    upload_budget_bytes: int = 4 * GiB  # decoded voxels of all uploads in flight together (server-wide)
    volume_cache_bytes: int = 4 * GiB  # uploaded volumes kept for re-use by content hash (per token)
    reasoner_workers: int = 1  # >1 only for a reasoner behind a batching server (vLLM): see docs/deployment.md
    device: str = "cpu"
    docs_ui: bool = False  # Swagger UI cannot send the bearer token; the OpenAPI JSON is always served (with it)

    def resolved_state_dir(self) -> Path:
        return Path(self.state_dir) if self.state_dir is not None else user_state_dir() / "server"

    @property
    def sessions_dir(self) -> Path:
        return self.resolved_state_dir() / "sessions"

    @property
    def audit_path(self) -> Path:
        return self.resolved_state_dir() / "audit.log"

    def check_bind(self) -> None:
        """Refuse to listen beyond this machine unless the operator chose the tokens (``--token-file``).

        A token made up on the fly sits in one user's home folder; nobody else can know it, so a server reachable
        from the network with it would be useless at best, and a sign that the operator has not thought about who
        may call it at worst.
        """
        if not is_loopback(self.host) and self.token_file is None:
            raise InputError(
                f"refusing to listen on {self.host}, which other machines can reach, without an explicit token file: "
                "give --token-file FILE (one 'name:token' per line, one per user) or listen on 127.0.0.1."
            )


def user_config_dir() -> Path:
    """The per-user configuration folder of this application (``$MEDSEG_CONFIG_DIR`` overrides it)."""
    override = os.environ.get("MEDSEG_CONFIG_DIR")
    if override:
        return Path(override).expanduser()
    return _platform_dir("XDG_CONFIG_HOME", ".config", "APPDATA", "Library/Application Support")


def user_state_dir() -> Path:
    """The per-user folder for server state: sessions and the audit log (``$MEDSEG_STATE_DIR`` overrides it)."""
    override = os.environ.get("MEDSEG_STATE_DIR")
    if override:
        return Path(override).expanduser()
    return _platform_dir("XDG_STATE_HOME", ".local/state", "LOCALAPPDATA", "Library/Application Support")


def _platform_dir(xdg_var: str, xdg_default: str, windows_var: str, mac_dir: str) -> Path:
    if sys.platform == "win32":
        base = Path(os.environ.get(windows_var) or Path.home() / "AppData" / "Roaming")
    elif sys.platform == "darwin":
        base = Path.home() / mac_dir
    else:
        base = Path(os.environ.get(xdg_var) or Path.home() / xdg_default)
    return base / APP_DIR_NAME
