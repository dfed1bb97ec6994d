"""The environment a child Python of *another* installation gets: the backend's venv started from inside Slicer.

Why: Slicer's launcher sets ``PYTHONHOME``, ``PYTHONPATH`` and library paths for Slicer's own Python. Inherited by
the backend venv's interpreter, they make it load Slicer's standard library and site-packages (another Python
version, another numpy) and fail in ways that say nothing about the cause. Slicer offers the environment as it was
before its launcher changed it (``slicer.util.startupEnvironment()``); the Slicer module hands it to
``set_startup_environment`` once, and every child process (pip, the device probe, the server, the DICOM export) is
started with ``child_environment()``. Outside Slicer the base is this process's own environment. Standard library
only: the Slicer side imports it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping

# Variables that tie an interpreter to one installation; a child of another installation must not inherit them.
HOST_PYTHON_VARIABLES = frozenset(
    {"PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONEXECUTABLE", "__PYVENV_LAUNCHER__", "VIRTUAL_ENV"}
)

_lock = threading.Lock()
_startup: dict[str, str] | None = None


def set_startup_environment(env: Mapping[str, str] | None) -> None:
    """The environment before the host application's launcher changed it (None: use ``os.environ`` again)."""
    global _startup
    with _lock:
        _startup = None if env is None else {str(k): str(v) for k, v in env.items() if k}


def child_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A fresh environment for a child Python: the startup (or current) environment without the host's Python
    variables (matched case-insensitively, as Windows does), plus ``extra``."""
    with _lock:
        base = dict(_startup) if _startup is not None else dict(os.environ)
    env = {k: v for k, v in base.items() if k.upper() not in HOST_PYTHON_VARIABLES}
    env.update(extra or {})
    return env
