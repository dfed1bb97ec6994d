"""Backend set-up without a network: a real venv, a real pip install of a package built here, real child processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path, PurePosixPath, PureWindowsPath

import pytest

from MedSegReasoning.slicer import backend_setup as bs
from MedSegReasoning.slicer.backend_setup import (
    BackendSetup,
    Cancelled,
    PipProgress,
    SetupFailed,
    State,
    Status,
    create_venv,
    data_dir,
    default_venv_dir,
    detect_device,
    pip_install,
    run_logged,
    venv_python,
)

TESTING = Path(__file__).resolve().parents[1]


# -- paths per OS ---------------------------------------------------------------------------------------------------


def test_data_folder_per_os_rules() -> None:
    win = data_dir("win32", {"LOCALAPPDATA": r"C:\Users\ann\AppData\Local"}, home=r"C:\Users\ann")
    assert win == PureWindowsPath(r"C:\Users\ann\AppData\Local\MedSegReasoning")
    assert data_dir("win32", {}, home=r"C:\Users\ann") == PureWindowsPath(r"C:\Users\ann\AppData\Local\MedSegReasoning")
    assert data_dir("darwin", {}, home="/Users/ann") == PurePosixPath(
        "/Users/ann/Library/Application Support/MedSegReasoning"
    )
    assert data_dir("linux", {"XDG_DATA_HOME": "/data/ann"}, home="/home/ann") == PurePosixPath(
        "/data/ann/MedSegReasoning"
    )
    # the XDG spec: an empty or relative XDG_DATA_HOME is ignored
    assert data_dir("linux", {"XDG_DATA_HOME": ""}, home="/home/ann") == PurePosixPath(
        "/home/ann/.local/share/MedSegReasoning"
    )
    assert data_dir("linux", {"XDG_DATA_HOME": "rel"}, home="/home/ann") == PurePosixPath(
        "/home/ann/.local/share/MedSegReasoning"
    )
    assert default_venv_dir("darwin", {}, home="/Users/ann").name == "backend-venv"
    assert venv_python(r"C:\x\venv", "win32") == PureWindowsPath(r"C:\x\venv\Scripts\python.exe")
    assert venv_python("/x/venv", "linux") == PurePosixPath("/x/venv/bin/python")
    assert venv_python("/x/venv", "darwin") == PurePosixPath("/x/venv/bin/python")


# -- pip output -> progress ---------------------------------------------------------------------------------------------


def test_pip_lines_become_progress() -> None:
    p = PipProgress()
    assert not p.feed("Looking in indexes: https://pypi.org/simple")
    assert p.feed("Collecting torch>=2.1 (from medseg-reasoning)")
    assert (p.phase, p.current) == ("collecting", "torch>=2.1") and 0 < p.fraction < 0.5
    first = p.fraction
    assert p.feed("  Downloading torch-2.14.1-cp311-cp311-manylinux_2_28_x86_64.whl (900 MB)")
    assert p.phase == "downloading" and p.current.startswith("torch-2.14.1")
    p.feed("Collecting numpy>=1.26")
    assert p.fraction > first
    p.feed("Building wheels for collected packages: medseg-reasoning")
    assert p.phase == "building" and p.fraction >= 0.5
    p.feed("Installing collected packages: numpy, torch, medseg-reasoning")
    assert p.phase == "installing" and p.fraction >= 0.7 and "torch" in p.message()
    p.feed("Successfully installed medseg-reasoning-0.1 numpy-2.0 torch-2.14.1")
    assert p.fraction == 1.0 and p.installed == ["medseg-reasoning-0.1", "numpy-2.0", "torch-2.14.1"]
    assert "torch-2.14.1" in p.message()


def test_status_line_says_what_to_do() -> None:
    s = Status(State.ERROR, "Installing failed.", "See the log.")
    assert s.line() == "Installing failed. See the log."
    assert Status(State.INSTALLING, "Collecting x...", fraction=0.25).line() == "Collecting x... (25%)"
    assert {s.value for s in State} == {"not-installed", "installing", "starting", "loading-model", "ready", "error"}
    fresh = BackendSetup(venv_dir=Path("/nonexistent/medseg/backend-venv"))
    assert fresh.status.state == State.NOT_INSTALLED and "Install" in fresh.status.action


# -- a real venv and a real offline pip install -------------------------------------------------------------------------


def _build_wheel(tmp: Path) -> Path:
    project = tmp / "tinypkg"
    (project / "tinypkg").mkdir(parents=True)
    (project / "tinypkg" / "__init__.py").write_text("ANSWER = 42\n")
    (project / "pyproject.toml").write_text(
        textwrap.dedent(
            """
            [build-system]
            requires = ["setuptools>=61"]
            build-backend = "setuptools.build_meta"
            [project]
            name = "tinypkg"
            version = "1.2.3"
            """
        )
    )
    wheels = tmp / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(project)],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheels.glob("tinypkg-1.2.3-*.whl")
    return wheel


@pytest.mark.slow
def test_real_venv_offline_install_with_progress_log_and_device(tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path)
    statuses: list[Status] = []
    setup = BackendSetup(
        venv_dir=tmp_path / "data" / "backend-venv",
        base_python=sys.executable,
        requirements=["tinypkg"],
        pip_args=["--no-index", "--find-links", str(wheel.parent)],
        on_status=statuses.append,
    )
    device = setup.install()

    python = setup.python
    assert python.exists()
    out = subprocess.run(
        [str(python), "-c", "import tinypkg, sys; print(tinypkg.ANSWER, sys.prefix)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out[0] == "42" and Path(out[1]).resolve() == (tmp_path / "data" / "backend-venv").resolve()
    # the installer's own Python is untouched
    assert subprocess.run([sys.executable, "-c", "import tinypkg"], capture_output=True).returncode != 0

    states = [s.state for s in statuses]
    assert states[0] == State.INSTALLING and states[-1] == State.STARTING
    messages = [s.message for s in statuses if s.state == State.INSTALLING]
    assert any("tinypkg" in m for m in messages), messages
    assert statuses[-2].fraction == 1.0 and "tinypkg-1.2.3" in statuses[-2].message
    log = setup.log_path.read_text()
    assert "-m venv" in log and "Successfully installed tinypkg-1.2.3" in log and "exit code 0" in log

    # a fresh venv has no torch: detected and said, not crashed
    assert device.torch is None and device.cpu and not device.cuda and device.device == "cpu"
    assert "torch is not installed" in (device.error or "") and "install the backend" in device.describe()

    # a second install into the existing venv reuses it (no second "-m venv")
    setup.install()
    assert setup.log_path.read_text().count("-m venv") == 1


def test_pip_failure_gives_pips_error_and_the_log(tmp_path: Path) -> None:
    log = tmp_path / "setup.log"
    with pytest.raises(SetupFailed, match="No matching distribution|Could not find a version") as failed:
        pip_install(sys.executable, ["surely-not-a-package-xyz"], log, pip_args=["--no-index", "--dry-run"])
    assert failed.value.log == log and str(log) in str(failed.value) and "exit code" in log.read_text()


def test_venv_creation_failure_is_a_sentence(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(SetupFailed, match="could not create a Python environment"):
        create_venv(sys.executable, tmp_path / "file" / "venv", tmp_path / "log")
    with pytest.raises(SetupFailed, match="could not run"):
        run_logged([str(tmp_path / "no-such-python"), "-V"], tmp_path / "log")


@pytest.mark.slow
def test_device_detection_with_torch_sees_the_cpu() -> None:
    pytest.importorskip("torch")
    info = detect_device(sys.executable)
    import torch

    assert info.torch == torch.__version__ and info.cpu and info.error is None
    assert info.cuda == torch.cuda.is_available()
    assert info.device == ("cuda" if info.cuda else "mps" if info.mps else "cpu")
    if not info.cuda and not info.mps:
        assert info.describe().startswith("CPU only")


# -- cancel kills the whole tree -----------------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a killed child not yet reaped by its (dead) parent is a zombie: count it as gone
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")


@pytest.mark.skipif(os.name != "posix", reason="the POSIX branch (process group); Windows uses taskkill /T")
def test_cancel_kills_a_long_install_and_its_children(tmp_path: Path) -> None:
    # A fake "python -m pip install": prints like pip, starts a grandchild, then hangs as a slow download would.
    fake = tmp_path / "fakepython"
    pids = tmp_path / "pids"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import os, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
        f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
        "print('Collecting torch>=2.1', flush=True)\n"
        "print('  Downloading torch-2.14.1-cp311-cp311-manylinux_2_28_x86_64.whl (900 MB)', flush=True)\n"
        "time.sleep(300)\n"
    )
    fake.chmod(0o755)
    cancel = threading.Event()
    statuses: list[Status] = []
    log = tmp_path / "setup.log"
    errors: list[BaseException] = []

    def install() -> None:
        try:
            pip_install(fake, ["medseg-reasoning"], log, cancel=cancel, on_status=statuses.append)
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=install)
    worker.start()
    deadline = time.monotonic() + 30
    while not (any(s.message.startswith("Downloading") for s in statuses) and pids.exists()):
        assert time.monotonic() < deadline, "the fake pip never reported progress"
        time.sleep(0.05)
    parent, grandchild = (int(p) for p in pids.read_text().split())
    assert _alive(parent) and _alive(grandchild)
    started = time.monotonic()
    cancel.set()
    worker.join(15)
    assert not worker.is_alive() and time.monotonic() - started < 5
    assert len(errors) == 1 and isinstance(errors[0], Cancelled)
    deadline = time.monotonic() + 5
    while (_alive(parent) or _alive(grandchild)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(parent) and not _alive(grandchild), "cancel left processes behind"
    assert "cancelled by the user" in log.read_text()


# -- starting the server through the client's launcher ------------------------------------------------------------------


@pytest.mark.slow  # a server child process
def test_start_goes_to_ready_through_local_server(tmp_path: Path) -> None:
    from support.server import write_tokens

    from MedSegReasoning.wire.process import LocalServer

    write_tokens(tmp_path / "tokens")
    statuses: list[Status] = []
    commands: list[list[str]] = []

    def factory(command, args):
        commands.append(list(command))
        child = [
            sys.executable,
            str(TESTING / "support" / "server.py"),
            "--state-dir",
            str(tmp_path / "state"),
            "--token-file",
            str(tmp_path / "tokens"),
        ]
        return LocalServer(child, args=args, startup_timeout=60)

    setup = BackendSetup(venv_dir=tmp_path / "venv", on_status=statuses.append)
    client = setup.start(server_factory=factory)
    try:
        assert client.health()["status"] == "ok"
        assert commands == [[str(setup.python), "-m", "MedSegReasoning.server"]]
        states = [s.state for s in statuses]
        assert states[0] == State.STARTING and states[-1] == State.READY
        assert setup.status.state == State.READY
    finally:
        setup.server.stop()


def test_start_failure_is_an_error_status_with_an_action(tmp_path: Path) -> None:
    from MedSegReasoning.wire.errors import ClientError
    from MedSegReasoning.wire.process import LocalServer

    def factory(command, args):
        return LocalServer(
            [sys.executable, "-c", "import sys; print('serve: error: no GPU memory', file=sys.stderr); sys.exit(4)"],
            args=args,
            startup_timeout=30,
        )

    setup = BackendSetup(venv_dir=tmp_path / "venv")
    with pytest.raises(ClientError):
        setup.start(server_factory=factory)
    assert setup.status.state == State.ERROR and "no GPU memory" in setup.status.message
    assert setup.status.action


def test_module_is_stdlib_only() -> None:
    probe = "import sys; import MedSegReasoning.slicer.backend_setup; print(sorted(m for m in ('numpy', 'torch', 'slicer', 'qt') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=TESTING.parent)
    assert out.stdout.strip() == "[]"
    assert bs.server_command("/v/bin/python") == ["/v/bin/python", "-m", "MedSegReasoning.server"]


def test_start_without_install_says_press_install(tmp_path: Path) -> None:
    setup = BackendSetup(venv_dir=tmp_path / "none")
    with pytest.raises(SetupFailed, match="press Install"):
        setup.start()
    assert setup.status.state == State.NOT_INSTALLED and "Install" in setup.status.action


def test_loading_model_is_shown_between_starting_and_ready(tmp_path: Path) -> None:
    """The server prints "loading models" (server/cli.py) long before its ready line; the status line says so."""
    from collections import deque

    class SlowModelServer:  # LocalServer's surface: _stdout lines, start(cancel) -> client, kill()
        def __init__(self, command, args):
            self._stdout = deque()

        def start(self, cancel=None):
            self._stdout.append("medseg-reasoning serve: loading models (segmenter litemedsam, reasoner none)")
            deadline = time.monotonic() + 5
            while not any(s.state == State.LOADING_MODEL for s in statuses) and time.monotonic() < deadline:
                time.sleep(0.02)
            return types.SimpleNamespace(capabilities=lambda: {"device": "cuda:0"})

        def kill(self):
            pass

    import types

    statuses: list[Status] = []
    setup = BackendSetup(venv_dir=tmp_path / "venv", on_status=statuses.append)
    setup.start(server_factory=SlowModelServer)
    assert [s.state for s in statuses] == [State.STARTING, State.LOADING_MODEL, State.READY]
    assert statuses[-1].message == "Ready on cuda:0."


@pytest.mark.slow
def test_start_the_real_server_from_an_environment_and_run_a_replayed_round(tmp_path: Path) -> None:
    """What the module's self-test does inside Slicer: the backend environment's ``python -m MedSegReasoning.server``
    with the replay reasoner and real LiteMedSAM, started through ``LocalServer``, one round, then stopped.
    This project's own venv plays the installed backend environment."""
    pytest.importorskip("torch")
    from support.server import BOX_A, small_volume, write_tokens

    venv = Path(sys.prefix)
    if not is_installed_here(venv):
        pytest.skip(f"{venv} is not a venv with bin/python")
    write_tokens(tmp_path / "tokens")
    replay = tmp_path / "answers.jsonl"
    replay.write_text(
        "".join(
            json.dumps(line) + "\n"
            for line in [
                {
                    "round": 1,
                    "step": "pick_slice",
                    "raw": json.dumps({"reasoning": "r", "targets": [{"slice": 1, "label": "mass"}]}),
                },
                {
                    "round": 1,
                    "step": "locate",
                    "raw": json.dumps(
                        {"reasoning": "r", "targets": [{"slice": 1, "bbox": BOX_A, "points": [], "label": "mass"}]}
                    ),
                },
            ]
        )
    )
    statuses: list[Status] = []
    setup = BackendSetup(
        venv_dir=venv,
        server_args=[
            "--reasoner",
            f"replay:{replay}",
            "--token-file",
            str(tmp_path / "tokens"),
            "--state-dir",
            str(tmp_path / "state"),
        ],
        on_status=statuses.append,
    )
    client = setup.start()
    try:
        assert [s.state for s in statuses] == [State.STARTING, State.LOADING_MODEL, State.READY]
        assert statuses[-1].message.startswith("Ready on cpu")
        volume = small_volume()
        g = volume.geometry
        sid = client.create_session()
        client.upload_volume(sid, volume.array, g.origin, g.spacing, g.direction, "CT")
        result = client.ask(sid, "Segment the mass.", propagate=False)
        assert [e.id for e in result.entities] == ["E1"] and result.entities[0].voxels > 100
    finally:
        pid = setup.server.process.pid
        setup.server.stop()
    assert not setup.server.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def is_installed_here(venv: Path) -> bool:
    return bs.is_installed(venv) and (venv / "pyvenv.cfg").exists()
