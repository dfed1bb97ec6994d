"""Where the backend goes on each OS: the per-user data folder, the venv in it and the venv's interpreter.

Everything that differs between Windows, macOS and Linux is decided here from an injectable platform name and
environment, so each rule is tested on every OS's terms on any machine.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path, PurePath, PurePosixPath, PureWindowsPath

APP_DIR_NAME = "MedSegReasoning"
VENV_DIR_NAME = "backend-venv"


def data_dir(platform: str | None = None, env: Mapping[str, str] | None = None, home: str | None = None) -> PurePath:
    """The per-user data folder for the backend: Windows ``%LOCALAPPDATA%``, macOS ``~/Library/Application Support``,
    elsewhere ``$XDG_DATA_HOME`` or ``~/.local/share`` (the XDG base directory rule), each plus ``MedSegReasoning``.

    ``platform`` is ``sys.platform``'s value (``win32``, ``darwin``, ``linux``...); ``env`` and ``home`` default to
    this process's, and are parameters so that each OS's rule can be checked on any OS.
    """
    platform = platform or sys.platform
    env = os.environ if env is None else env
    if platform.startswith("win"):
        home_w = PureWindowsPath(home or env.get("USERPROFILE") or str(Path.home()))
        base = env.get("LOCALAPPDATA")
        root_w = PureWindowsPath(base) if base else home_w / "AppData" / "Local"
        return root_w / APP_DIR_NAME
    home_p = PurePosixPath(home or env.get("HOME") or str(Path.home()))
    if platform == "darwin":
        return home_p / "Library" / "Application Support" / APP_DIR_NAME
    xdg = env.get("XDG_DATA_HOME", "")
    root = PurePosixPath(xdg) if xdg and PurePosixPath(xdg).is_absolute() else home_p / ".local" / "share"
    return root / APP_DIR_NAME


def default_venv_dir(
    platform: str | None = None, env: Mapping[str, str] | None = None, home: str | None = None
) -> PurePath:
    return data_dir(platform, env, home) / VENV_DIR_NAME


def venv_python(venv_dir: str | PurePath, platform: str | None = None) -> PurePath:
    """The venv's interpreter: ``Scripts\\python.exe`` on Windows, ``bin/python`` elsewhere (venv's own layout)."""
    platform = platform or sys.platform
    if platform.startswith("win"):
        return PureWindowsPath(venv_dir) / "Scripts" / "python.exe"
    return PurePosixPath(venv_dir) / "bin" / "python"


def is_installed(venv_dir: str | Path) -> bool:
    return Path(venv_python(venv_dir)).exists()
