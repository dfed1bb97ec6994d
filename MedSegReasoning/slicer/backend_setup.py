"""Setting the backend up from inside Slicer: its own virtual environment, pip with progress, device, start.

Why a separate environment: the engine needs torch (gigabytes, CUDA-specific builds) and must never be installed into
Slicer's own Python, where it would clash with Slicer's packages and be lost on a Slicer update. So the module creates
a venv in the user's data folder, installs the engine there with pip (a child process, its output parsed line by line
into progress and copied whole into a log file), asks that venv's Python which device torch sees, and starts the
server from it through the wire's ``LocalServer``.

Standard library only (plus the wire, for starting and for ``kill_tree``): it runs in Slicer's Python and in tests.
Everything that differs between Windows, macOS and Linux (data folder, venv layout) is decided here from an
injectable platform name and environment, so each rule is tested on every OS's terms on any machine; killing a
process tree is the wire's one ``kill_tree``, shared with the local server.
"""

from __future__ import annotations

import enum
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath, PurePosixPath, PureWindowsPath
from typing import Any

from ..wire.childenv import child_environment
from ..wire.errors import ClientError
from ..wire.process import LocalServer, kill_tree, new_process_group

APP_DIR_NAME = "MedSegReasoning"
VENV_DIR_NAME = "backend-venv"
DEFAULT_REQUIREMENT = "medseg-reasoning"


# -- status ---------------------------------------------------------------------------------------------------------


class State(str, enum.Enum):
    """What the status line says the backend is doing."""

    NOT_INSTALLED = "not-installed"
    INSTALLING = "installing"
    STARTING = "starting"
    LOADING_MODEL = "loading-model"
    READY = "ready"
    ERROR = "error"


@dataclass(frozen=True)
class Status:
    """One status line: the state, what is happening, and (for errors and missing installs) what the user can do."""

    state: State
    message: str
    action: str = ""
    fraction: float | None = None

    def line(self) -> str:
        text = self.message
        if self.fraction is not None:
            text += f" ({self.fraction * 100:.0f}%)"
        return f"{text} {self.action}".strip()


StatusCallback = Callable[[Status], None]


# -- where things go ------------------------------------------------------------------------------------------------


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
        root = PureWindowsPath(base) if base else home_w / "AppData" / "Local"
        return root / APP_DIR_NAME
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


# -- child processes that can be cancelled ----------------------------------------------------------------------------


class Cancelled(Exception):
    """The user cancelled; the child process and everything it started were killed."""


class SetupFailed(Exception):
    """A set-up step failed; ``str()`` says what happened and what to do, ``log`` is the full log file."""

    def __init__(self, message: str, log: Path | None = None) -> None:
        super().__init__(message)
        self.log = log


def run_logged(
    argv: Sequence[str],
    log_path: Path,
    *,
    on_line: Callable[[str], None] | None = None,
    cancel: threading.Event | None = None,
    env: Mapping[str, str] | None = None,
) -> int:
    """Run ``argv``, append every output line to ``log_path`` and hand it to ``on_line``; return the exit code.

    Setting ``cancel`` (from another thread, e.g. the Cancel button) kills the whole process tree and raises
    ``Cancelled``. stderr is merged into stdout so the log keeps the order the user would have seen.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"$ {' '.join(str(a) for a in argv)}\n")
        log.flush()
        try:
            process = subprocess.Popen(
                [str(a) for a in argv],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=child_environment({**(env or {}), "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8"}),
                **new_process_group(),
            )
        except OSError as exc:
            log.write(f"could not start: {exc}\n")
            raise SetupFailed(f"could not run {argv[0]} ({exc.strerror or exc}).", log_path) from None
        lines: list[str] = []
        reader = threading.Thread(target=_read_lines, args=(process, lines), daemon=True)
        reader.start()
        seen = 0
        while True:
            done = process.poll() is not None and not reader.is_alive()
            while seen < len(lines):
                line = lines[seen]
                seen += 1
                log.write(line + "\n")
                if on_line is not None:
                    on_line(line)
            log.flush()
            if done:
                break
            if cancel is not None and cancel.is_set():
                kill_tree(process)
                log.write("cancelled by the user\n")
                raise Cancelled(f"{Path(str(argv[0])).name} was cancelled; nothing more was installed.")
            time.sleep(0.05)
        log.write(f"exit code {process.returncode}\n")
        return int(process.returncode)


def _read_lines(process: subprocess.Popen, sink: list[str]) -> None:
    assert process.stdout is not None
    for raw in iter(process.stdout.readline, b""):
        sink.append(raw.decode("utf-8", "replace").rstrip("\r\n"))
    process.stdout.close()
    process.wait()


# -- pip progress -----------------------------------------------------------------------------------------------------


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


DEVICE_PROBE = r"""
import json, platform, sys
out = {"python": platform.python_version(), "torch": None, "cuda": False, "mps": False, "cpu": True,
       "cuda_devices": [], "device": "cpu", "error": None}
try:
    import torch
except Exception as exc:
    out["error"] = f"torch is not installed in this environment ({type(exc).__name__}: {exc})"
else:
    out["torch"] = torch.__version__
    try:
        if torch.cuda.is_available():
            out["cuda"] = True
            out["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            out["device"] = "cuda"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            out["mps"] = True
            if out["device"] == "cpu":
                out["device"] = "mps"
    except Exception as exc:
        out["error"] = f"torch could not query the GPU ({type(exc).__name__}: {exc})"
print("MEDSEG-DEVICE " + json.dumps(out))
"""


@dataclass(frozen=True)
class DeviceInfo:
    """Which device the backend's torch will use: CUDA (with GPU names), Apple MPS, or CPU; None torch = absent."""

    torch: str | None
    cuda: bool
    mps: bool
    cpu: bool
    device: str
    cuda_devices: tuple[str, ...] = ()
    python: str = ""
    error: str | None = None

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> DeviceInfo:
        return DeviceInfo(
            torch=data.get("torch"),
            cuda=bool(data.get("cuda")),
            mps=bool(data.get("mps")),
            cpu=bool(data.get("cpu", True)),
            device=str(data.get("device", "cpu")),
            cuda_devices=tuple(data.get("cuda_devices") or ()),
            python=str(data.get("python", "")),
            error=data.get("error"),
        )

    def describe(self) -> str:
        if self.torch is None:
            return "torch is not installed in the backend environment: install the backend first."
        if self.cuda:
            return f"CUDA GPU: {', '.join(self.cuda_devices) or 'yes'} (torch {self.torch})"
        if self.mps:
            return f"Apple GPU (MPS) (torch {self.torch})"
        return f"CPU only: no GPU found by torch {self.torch}; rounds will be slow"


def detect_device(python: str | Path, *, timeout: float = 120.0) -> DeviceInfo:
    """Run the backend's Python on a tiny script that prints what torch sees, and parse it (torch missing is fine)."""
    try:
        result = subprocess.run(
            [str(python), "-c", DEVICE_PROBE],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=child_environment(),
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SetupFailed(f"could not run the backend's Python {python} to detect the device ({exc}).") from None
    for line in result.stdout.splitlines():
        if line.startswith("MEDSEG-DEVICE "):
            return DeviceInfo.from_json(json.loads(line[len("MEDSEG-DEVICE ") :]))
    raise SetupFailed(
        f"the backend's Python {python} did not report its device (exit code {result.returncode}): "
        f"{(result.stderr.strip().splitlines() or ['no message'])[-1]}"
    )


def server_command(python: str | Path) -> list[str]:
    """How to run ``serve`` from the backend environment (``LocalServer`` appends host and port)."""
    return [str(python), "-m", "MedSegReasoning.server"]


# -- the whole set-up, as the widget drives it ------------------------------------------------------------------------


@dataclass
class BackendSetup:
    """Install-or-start for the module: one object per widget, driven from a worker thread.

    ``status`` is always the latest ``Status``; ``on_status`` is called on every change (the widget marshals it to
    the GUI thread). ``cancel()`` stops whatever step runs, killing its process tree.
    """

    venv_dir: Path = field(default_factory=lambda: Path(default_venv_dir()))
    base_python: str = field(default_factory=lambda: sys.executable)
    requirements: Sequence[str] = (DEFAULT_REQUIREMENT,)
    pip_args: Sequence[str] = ()
    server_args: Sequence[str] = ()
    on_status: StatusCallback | None = None
    status: Status = field(init=False)
    device: DeviceInfo | None = field(default=None, init=False)
    server: Any = field(default=None, init=False)
    _cancel: threading.Event = field(default_factory=threading.Event, init=False)

    def __post_init__(self) -> None:
        self.venv_dir = Path(self.venv_dir)
        self.status = self.initial_status()

    @property
    def python(self) -> Path:
        return Path(venv_python(self.venv_dir))

    @property
    def log_path(self) -> Path:
        return self.venv_dir.parent / "backend-setup.log"

    def initial_status(self) -> Status:
        if is_installed(self.venv_dir):
            return Status(State.STARTING, "The backend is installed but not running.", "Press Start.")
        return Status(
            State.NOT_INSTALLED,
            "The reasoning backend is not installed.",
            f"Press Install to set it up in {self.venv_dir} (a few GB), or connect to a server.",
        )

    def cancel(self) -> None:
        self._cancel.set()
        if self.server is not None:
            self.server.kill()

    def install(self) -> DeviceInfo:
        """Create the venv if needed, pip install, detect the device. Errors end in an ERROR status, then re-raise."""
        self._cancel.clear()
        try:
            if not is_installed(self.venv_dir):
                create_venv(self.base_python, self.venv_dir, self.log_path, cancel=self._cancel, on_status=self._set)
            pip_install(
                self.python,
                self.requirements,
                self.log_path,
                pip_args=self.pip_args,
                cancel=self._cancel,
                on_status=self._set,
            )
            self.device = detect_device(self.python)
        except Cancelled as exc:
            self._set(Status(State.ERROR, str(exc), "Press Install to try again."))
            raise
        except SetupFailed as exc:
            self._set(Status(State.ERROR, str(exc), "See the log for details."))
            raise
        self._set(Status(State.STARTING, f"Installed. Device: {self.device.describe()}", "Press Start."))
        return self.device

    def start(self, *, server_factory: Callable[..., Any] | None = None) -> Any:
        """Start the server from the venv through the client's ``LocalServer``; returns its ``MedSegClient``.

        The status goes starting -> loading-model (the server announced it is loading models) -> ready.
        """
        self._cancel.clear()
        if server_factory is None and not is_installed(self.venv_dir):
            self._set(self.initial_status())
            raise SetupFailed(f"the backend is not installed in {self.venv_dir}: press Install first.")
        factory = server_factory or LocalServer
        self.server = factory(server_command(self.python), args=list(self.server_args))
        self._set(Status(State.STARTING, "Starting the reasoning backend..."))
        watcher = threading.Thread(target=self._watch_loading, daemon=True)
        watcher.start()
        try:
            client = self.server.start(cancel=self._cancel)
        except ClientError as exc:
            action = (
                "Install the missing model, then press Start."
                if exc.code == "model_missing"
                else (f"Check the log ({self.log_path}) or reinstall the backend.")
            )
            self._set(Status(State.ERROR, f"The backend did not start: {exc}", action))
            raise
        device = (client.capabilities() or {}).get("device", "")
        self._set(Status(State.READY, f"Ready{f' on {device}' if device else ''}."))
        return client

    def _watch_loading(self) -> None:
        # LocalServer keeps the child's last output lines; ``serve`` prints "loading models" (on stderr) before its
        # ready line, so that line is the one sign of the model loading that the launcher's surface offers.
        while self.status.state == State.STARTING and not self._cancel.is_set():
            lines = [*getattr(self.server, "_stdout", ()), *getattr(self.server, "_stderr", ())]
            if any("loading models" in line for line in lines):
                self._set(Status(State.LOADING_MODEL, "Loading the models (the first time can take minutes)..."))
                return
            time.sleep(0.1)

    def _set(self, status: Status) -> None:
        if status.state == State.LOADING_MODEL and self.status.state != State.STARTING:
            return  # the ready or error status already came
        self.status = status
        if self.on_status is not None:
            self.on_status(status)


__all__ = [
    "BackendSetup",
    "Cancelled",
    "DeviceInfo",
    "PipProgress",
    "SetupFailed",
    "State",
    "Status",
    "create_venv",
    "data_dir",
    "default_venv_dir",
    "detect_device",
    "pip_install",
    "run_logged",
    "server_command",
    "venv_python",
]
