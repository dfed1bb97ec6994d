"""Start-or-connect on the workstation: the backend server as a child process, and the one process-tree kill.

``LocalServer`` launches ``medseg-reasoning serve --port 0`` as a child process in its own process group, reads the
port from the server's ready line, waits for health, stops the server when Python exits, and ``kill()`` ends the
whole process tree at once (what a Cancel button needs). ``kill_tree`` is that kill for any child started with
``new_process_group()``: the Slicer side's set-up steps (pip, the device probe) use it as well. Standard library
only: the client (numpy) is imported only where a server is reached, so that ``slicer.backend_setup``, which is
kept standard-library only, can import this module at its top.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .childenv import child_environment
from .errors import (
    AuthenticationFailed,
    ClientError,
    ModelUnavailable,
    ServerStartFailed,
    os_reason,
)
from .headers import READY_PREFIX

if TYPE_CHECKING:  # imported where a server is reached: setting the backend up stays standard-library only
    from .client import MedSegClient


def new_process_group() -> dict[str, Any]:
    """``subprocess.Popen`` keywords that start the child as the leader of its own process group, so that
    ``kill_tree`` (and a stop signal) reach every process it starts."""
    if sys.platform == "win32":  # sys.platform, not os.name: mypy knows the Windows-only names under this guard
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    return {"start_new_session": True}


def kill_tree(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Kill the process and every process it started: SIGKILL to its group on POSIX, ``taskkill /T /F`` on Windows;
    then wait up to ``timeout`` seconds for it to be reaped. A process started without ``new_process_group()`` on
    POSIX shares this one's group: never pass one."""
    if process.poll() is not None and os.name != "posix":
        return  # on Windows its id may already belong to another process
    if os.name == "posix":
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except OSError:  # gone already, or not ours to kill
            pass
    else:
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(process.pid)], capture_output=True, check=False)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        pass


# ---------------------------------------------------------------------------------------------------------------
# Start-or-connect: a server as a child process


class LocalServer:
    """``medseg-reasoning serve`` as a child process of this one (its own process group), on 127.0.0.1.

    ``command`` is how to run the server (default: ``medseg-reasoning serve`` found on PATH); Slicer points it at
    the engine's own Python environment, which has torch, while Slicer's has not. ``--host 127.0.0.1 --port 0`` are
    appended, then ``args``.
    """

    def __init__(
        self,
        command: Sequence[str] | None = None,
        *,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        cwd: str | Path | None = None,
        startup_timeout: float = 300.0,
    ) -> None:
        self.command = list(command) if command else _default_command()
        self.args = list(args)
        self.env = env
        self.cwd = cwd
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.ready: dict[str, Any] | None = None
        self.client: MedSegClient | None = None
        self._stdout: deque[str] = deque(maxlen=200)
        self._stderr: deque[str] = deque(maxlen=200)
        self._ready_event = threading.Event()

    def start(self, cancel: threading.Event | None = None) -> MedSegClient:
        """Launch, wait for the ready line and for health; ``cancel`` (another thread) kills it while starting."""
        if self.process is not None and self.process.poll() is None and self.client is not None:
            return self.client
        self.ready, self.client = None, None
        self._ready_event.clear()
        argv = [*self.command, "--host", "127.0.0.1", "--port", "0", *self.args]
        kwargs = new_process_group()  # own process group: kill() reaches every descendant
        env = child_environment({**(self.env or {}), "PYTHONUNBUFFERED": "1"})
        try:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                cwd=self.cwd,
                **kwargs,
            )
        except OSError as exc:
            raise ServerStartFailed(
                f"the server could not be started ({' '.join(argv[:2])}: {os_reason(exc)})."
            ) from None
        atexit.register(self.stop)
        for stream, sink, watch in (
            (self.process.stdout, self._stdout, True),
            (self.process.stderr, self._stderr, False),
        ):
            threading.Thread(target=self._drain, args=(stream, sink, watch), daemon=True).start()
        try:
            return self._await_ready(cancel)
        except BaseException:
            self.kill()  # whatever went wrong, no half-started server is left behind
            raise

    def _await_ready(self, cancel: threading.Event | None) -> MedSegClient:
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout
        while not self._ready_event.wait(0.05):
            if cancel is not None and cancel.is_set():
                raise ServerStartFailed("starting the server was cancelled.")
            if self.process.poll() is not None:
                time.sleep(0.1)  # let the drain threads collect the last lines
                raise self._start_error()
            if time.monotonic() > deadline:
                raise ServerStartFailed(f"the server did not become ready within {self.startup_timeout:.0f} s.")
        assert self.ready is not None
        token = read_token_file(Path(self.ready["token_file"]))
        from .client import MedSegClient

        self.client = MedSegClient(self.ready["url"], token)
        self.client.wait_for_health(timeout=max(deadline - time.monotonic(), 5.0), cancel=cancel)
        return self.client

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the server to stop (SIGTERM to its group), then kill what is left after ``timeout``."""
        if self.process is None:
            return
        if self.process.poll() is None:
            if sys.platform == "win32":  # a statement, not a conditional expression: mypy reads platform guards here
                self._signal(signal.CTRL_BREAK_EVENT)
            else:
                self._signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._forget()

    def kill(self) -> None:
        """End the server and every process it started, at once (Cancel)."""
        if self.process is None:
            return
        kill_tree(self.process, timeout=5.0)
        self._forget()

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(list(self._stderr)[-lines:])

    def __enter__(self) -> LocalServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _signal(self, sig: int) -> None:
        assert self.process is not None
        try:
            if os.name == "posix":
                os.killpg(self.process.pid, sig)
            else:
                self.process.send_signal(sig)
        except (ProcessLookupError, PermissionError, OSError):
            pass

    def _forget(self) -> None:
        atexit.unregister(self.stop)

    def _drain(self, stream: IO[bytes], sink: deque[str], watch_ready: bool) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            sink.append(line)
            if watch_ready and line.startswith(READY_PREFIX) and not self._ready_event.is_set():
                try:
                    self.ready = json.loads(line[len(READY_PREFIX) :])
                except ValueError:
                    continue
                self._ready_event.set()
        stream.close()

    def _start_error(self) -> ClientError:
        code = self.process.returncode if self.process else None
        said = [line for line in self._stderr if "error:" in line]
        message = said[-1].split("error:", 1)[1].strip() if said else (self.log_tail(5) or "no message")
        text = f"the server stopped while starting (exit code {code}): {message}"
        if code == 3:
            return ModelUnavailable(text, code="model_missing")
        return ServerStartFailed(text, code="start_failed")


def connect_or_start(
    url: str | None = None,
    token: str | None = None,
    *,
    server_command: Sequence[str] | None = None,
    server_args: Sequence[str] = (),
    ca_file: str | Path | None = None,
    cancel: threading.Event | None = None,
) -> tuple[MedSegClient, LocalServer | None]:
    """A configured server (``url`` + ``token``), checked with ``/v1/health``; else a local one, started now.

    A configured server that does not answer is an error, not a reason to start a local one: the user chose it.
    """
    if url:
        if not token:
            raise AuthenticationFailed("a server address was given without a token: add the token for that server.")
        from .client import MedSegClient

        client = MedSegClient(url, token, ca_file=ca_file)
        client.health()
        return client, None
    server = LocalServer(server_command, args=server_args)
    return server.start(cancel=cancel), server


def read_token_file(path: Path) -> str:
    """The first token of a token file (``name:token`` or a bare token per line)."""
    try:
        for line in Path(path).read_text("utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                return line.split(":", 1)[1].strip() if ":" in line else line
    except OSError as exc:
        raise AuthenticationFailed(f"the token file {path} cannot be read ({os_reason(exc)}).") from None
    raise AuthenticationFailed(f"the token file {path} holds no token.")


def _default_command() -> list[str]:
    exe = Path(sys.executable).with_name("medseg-reasoning")
    if exe.exists():
        return [str(exe), "serve"]
    return ["medseg-reasoning", "serve"]
