"""Installing the backend: ``create_venv`` and ``pip_install`` (pip's output turned into progress by
``PipProgress``, the whole of it copied into the log file)."""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .backend_paths import venv_python
from .child_process import run_logged
from .setup_status import SetupFailed, State, Status, StatusCallback


@dataclass
class PipProgress:
    """pip's output turned into a status: which package it is at, and a rough fraction.

    pip prints no overall percentage, so the fraction is by phase: collecting (0-0.5, one step per requirement
    seen, approaching 0.5), building (0.5-0.7), installing (0.7-0.95), done (1). Good enough for "it is moving".
    """

    collected: list[str] = field(default_factory=list)
    phase: str = "starting"
    current: str = ""
    fraction: float = 0.0
    installed: list[str] = field(default_factory=list)

    _COLLECT = re.compile(r"^(?:Collecting|Processing|Requirement already satisfied:)\s+(\S+)")
    _DOWNLOAD = re.compile(r"^\s*Downloading\s+(\S+)")
    _BUILD = re.compile(r"^\s*(?:Building wheel for|Building wheels for collected packages:)\s+(\S+)")
    _INSTALL = re.compile(r"^Installing collected packages:\s*(.+)$")
    _DONE = re.compile(r"^Successfully installed\s+(.+)$")

    def feed(self, line: str) -> bool:
        """Update from one line of pip's output; True when the status changed."""
        if m := self._DONE.match(line):
            self.installed = m.group(1).split()
            self.phase, self.current, self.fraction = "done", "", 1.0
        elif m := self._INSTALL.match(line):
            self.phase, self.current = "installing", m.group(1).strip()
            self.fraction = max(self.fraction, 0.7)
        elif m := self._BUILD.match(line):
            self.phase, self.current = "building", m.group(1).rstrip(",")
            self.fraction = max(self.fraction, 0.5)
        elif m := self._DOWNLOAD.match(line):
            self.phase, self.current = "downloading", _short(m.group(1))
        elif m := self._COLLECT.match(line):
            name = _short(m.group(1))
            self.collected.append(name)
            self.phase, self.current = "collecting", name
            n = len(self.collected)
            self.fraction = max(self.fraction, 0.5 * n / (n + 3))
        else:
            return False
        return True

    def message(self) -> str:
        if self.phase == "done":
            return f"Installed {', '.join(self.installed) or 'the backend'}."
        what = {
            "collecting": "Collecting",
            "downloading": "Downloading",
            "building": "Building",
            "installing": "Installing",
        }
        return f"{what.get(self.phase, 'Preparing')} {self.current}".strip() + "..."


def _short(spec: str) -> str:
    """A package name from a requirement, a file name or a URL, for the status line."""
    name = spec.rsplit("/", 1)[-1]
    return name.split(" ", 1)[0]


# -- the steps ---------------------------------------------------------------------------------------------------------


def create_venv(
    python: str | Path,
    venv_dir: str | Path,
    log_path: Path,
    *,
    cancel: threading.Event | None = None,
    on_status: StatusCallback | None = None,
) -> Path:
    """``<python> -m venv <venv_dir>`` (with pip, from Python's bundled wheel: no network needed); returns its python."""
    venv_dir = Path(venv_dir)
    if on_status:
        on_status(Status(State.INSTALLING, f"Creating the backend's Python environment in {venv_dir}...", fraction=0.0))
    code = run_logged([str(python), "-m", "venv", str(venv_dir)], log_path, cancel=cancel)
    exe = Path(venv_python(venv_dir))
    if code != 0 or not exe.exists():
        raise SetupFailed(
            f"could not create a Python environment in {venv_dir} with {python} (exit code {code}). Check that this "
            f"Python has the venv module and the folder is writable; details in {log_path}.",
            log_path,
        )
    return exe


def pip_install(
    python: str | Path,
    requirements: Sequence[str],
    log_path: Path,
    *,
    pip_args: Sequence[str] = (),
    cancel: threading.Event | None = None,
    on_status: StatusCallback | None = None,
) -> PipProgress:
    """``<python> -m pip install <pip_args> <requirements>`` with a status per progress line; the full log on disk.

    ``pip_args`` carries what a site needs (``--index-url``, ``--extra-index-url`` for a CUDA build of torch,
    ``--no-index --find-links DIR`` offline). Raises ``SetupFailed`` with pip's own last error line.
    """
    progress = PipProgress()
    errors: list[str] = []

    def on_line(line: str) -> None:
        if line.startswith("ERROR:") or line.startswith("error:"):
            errors.append(line)
        if progress.feed(line) and on_status is not None:
            on_status(Status(State.INSTALLING, progress.message(), fraction=progress.fraction))

    argv = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off"]
    code = run_logged([*argv, *pip_args, *requirements], log_path, on_line=on_line, cancel=cancel)
    if code != 0:
        said = errors[-1] if errors else f"pip exited with code {code}"
        raise SetupFailed(
            f"installing {' '.join(requirements)} failed: {said}. Check the network or the package index settings, "
            f"then press Install again; the full log is {log_path}.",
            log_path,
        )
    return progress
