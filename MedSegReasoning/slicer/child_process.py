"""Child processes that can be cancelled: ``run_logged`` runs one with its output logged line by line, and
the wire's one ``kill_tree`` (``wire.process``, shared with the local server) kills it with everything it started (its
own process group on POSIX, ``taskkill /T`` on Windows), so that Cancel really stops the work."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ..wire.childenv import child_environment, set_startup_environment
from ..wire.process import kill_tree, new_process_group
from .setup_status import Cancelled, SetupFailed


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


def start_children_like_slicer() -> None:
    """The backend's own Python (pip, server, export) must not inherit Slicer's launcher settings (its Python
    home and site-packages): children start from the environment Slicer itself was started with. Outside the Slicer
    application (tests, ``slicer-core``) there is no launcher and nothing to do."""
    import slicer

    if getattr(slicer, "app", None) is not None:
        set_startup_environment(slicer.util.startupEnvironment())
