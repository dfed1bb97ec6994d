"""Setting the backend up from inside Slicer: its own virtual environment, pip with progress, device, start.

Why a separate environment: the engine needs torch (gigabytes, CUDA-specific builds) and must never be installed into
Slicer's own Python, where it would clash with Slicer's packages and be lost on a Slicer update. So the module creates
a venv in the user's data folder, installs the engine there with pip (a child process, its output parsed line by line
into progress and copied whole into a log file), asks that venv's Python which device torch sees, and starts the
server from it through the wire's ``LocalServer``.

Standard library only (plus the wire, for starting and for ``kill_tree``): it runs in Slicer's Python and in tests.
Everything that differs between Windows, macOS and Linux (data folder, venv layout) is decided from an injectable
platform name and environment, so each rule is tested on every OS's terms on any machine; killing a process tree is
the wire's one ``kill_tree``, shared with the local server.

The steps live beside this file, one job each: ``backend_paths`` (where), ``setup_status`` (the status line),
``child_process`` (cancellable logged children), ``pip_install`` (venv and pip) and ``device`` (CUDA / MPS / CPU);
their names are re-exported here, so ``backend_setup`` stays the one import of the module's set-up.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..wire.errors import ClientError
from ..wire.process import LocalServer
from .backend_paths import APP_DIR_NAME, VENV_DIR_NAME, data_dir, default_venv_dir, is_installed, venv_python
from .child_process import run_logged
from .device import DEVICE_PROBE, DeviceInfo, detect_device
from .pip_install import PipProgress, create_venv, pip_install
from .setup_status import Cancelled, SetupFailed, State, Status, StatusCallback
from .torch_index import TorchSource, choose_torch_source

DEFAULT_REQUIREMENT = "medseg-reasoning"


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
    torch_source: Callable[[], TorchSource] = field(default=lambda: choose_torch_source(engine_only=True))
    """Where torch comes from (``torch_index``); asked at Install, and only when ``pip_args`` names no index."""
    status: Status = field(init=False)
    device: DeviceInfo | None = field(default=None, init=False)
    server: Any = field(default=None, init=False)
    _cancel: threading.Event = field(default_factory=threading.Event, init=False)

    @classmethod
    def in_folder(cls, venv_dir: str | Path | None) -> BackendSetup:
        """The set-up for the venv in ``venv_dir`` (Slicer's setting), or in the per-user default when it is empty."""
        return cls(venv_dir=Path(venv_dir or default_venv_dir()))

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
            f"Press Install to set it up in {self.venv_dir} (about 2.3 GB with torch's CPU build, 7.2 GB with its "
            "CUDA build), or connect to a server.",
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
            self._install_torch()
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

    def _install_torch(self) -> None:
        """torch first, from the index ``torch_index`` chooses (the CPU build on Linux without an NVIDIA GPU), the
        choice and the disk it takes said before it starts; the engine's own install then finds torch in place. A
        site's ``pip_args`` (its own index, or offline wheels) decide for themselves: nothing is probed then."""
        if self.pip_args:
            return
        source = self.torch_source()
        self._set(Status(State.INSTALLING, source.message()[0].upper() + source.message()[1:], fraction=0.0))
        if source.index_url:
            pip_install(
                self.python,
                ["torch", "torchvision"],
                self.log_path,
                pip_args=source.pip_args,
                cancel=self._cancel,
                on_status=self._set,
            )

    def start(self, *, server_factory: Callable[..., Any] | None = None) -> Any:
        """Start the server from the venv through the wire's ``LocalServer``; returns its ``MedSegClient``.

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


def run_in_background(
    setup: Callable[[], BackendSetup],
    work: Callable[[], Any],
    on_status: StatusCallback,
    on_result: Callable[[Any], None] | None = None,
) -> threading.Thread:
    """Run a set-up step off the GUI thread; its status updates go to ``on_status`` (a thread-safe queue's put).

    ``setup`` gives the module's ``BackendSetup`` (asked on the worker thread); a step that fails has already put an
    ERROR status saying what to do, so its exception ends the thread quietly and ``on_result`` is not called.
    """

    def run() -> None:
        backend = setup()
        backend.on_status = on_status
        try:
            result = work()
        except Exception:  # the step already put an ERROR status saying what to do
            return
        if on_result is not None:
            on_result(result)

    thread = threading.Thread(target=run, name="medseg-backend-setup", daemon=True)
    thread.start()
    return thread


__all__ = [
    "APP_DIR_NAME",
    "DEFAULT_REQUIREMENT",
    "DEVICE_PROBE",
    "VENV_DIR_NAME",
    "BackendSetup",
    "Cancelled",
    "DeviceInfo",
    "PipProgress",
    "SetupFailed",
    "State",
    "Status",
    "StatusCallback",
    "create_venv",
    "data_dir",
    "default_venv_dir",
    "detect_device",
    "is_installed",
    "pip_install",
    "run_in_background",
    "run_logged",
    "server_command",
    "venv_python",
]
