"""Where torch comes from (``slicer/torch_index``): the CPU build on Linux without an NVIDIA GPU when PyTorch's CPU
index answers, PyPI otherwise (said, with the disk it takes); the same rule in install.sh and the Slicer installer.

The probe is faked where a branch is chosen (these machines reach PyPI only); the real probe is exercised against
local HTTP servers: one that answers, one that is closed, one too slow."""

from __future__ import annotations

import http.server
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from MedSegReasoning.slicer import backend_setup as bs
from MedSegReasoning.slicer.torch_index import (
    CPU_INDEX,
    TorchSource,
    choose_torch_source,
    has_nvidia_gpu,
    index_answers,
)

ROOT = Path(__file__).resolve().parents[2]


def _never(url: str) -> bool:
    raise AssertionError("the index was probed where the rule needs no probe")


def test_linux_without_gpu_takes_the_cpu_index_when_it_answers():
    probed: list[str] = []
    source = choose_torch_source(system="Linux", nvidia=False, probe=lambda u: probed.append(u) or True, environ={})
    assert probed == [CPU_INDEX]
    assert source.index_url == CPU_INDEX and source.pip_args == ["--index-url", CPU_INDEX] and source.build == "cpu"
    assert "CPU build" in source.message() and "4.4 GB" in source.message()
    assert (
        "2.3 GB"
        in choose_torch_source(
            system="Linux", nvidia=False, probe=lambda u: True, environ={}, engine_only=True
        ).message()
    )


def test_linux_without_gpu_falls_back_to_pypi_and_says_so_when_the_index_is_silent():
    source = choose_torch_source(system="Linux", nvidia=False, probe=lambda u: False, environ={})
    assert source.index_url is None and source.pip_args == []
    assert "did not answer" in source.message() and "falling back to PyPI" in source.message()
    assert "9.2 GB" in source.message() and "MEDSEG_TORCH_INDEX" in source.message()


@pytest.mark.parametrize(("system", "nvidia"), [("Linux", True), ("Windows", False), ("Darwin", False)])
def test_a_gpu_or_another_os_keeps_pypi_without_probing(system, nvidia):
    source = choose_torch_source(system=system, nvidia=nvidia, probe=_never, environ={})
    assert source.index_url is None
    assert ("NVIDIA GPU is present" in source.reason) == nvidia


def test_the_environment_names_the_index_or_pypi():
    assert choose_torch_source(probe=_never, environ={"MEDSEG_TORCH_INDEX": "pypi"}).index_url is None
    mirror = "https://mirror.example/torch-cpu"
    assert choose_torch_source(probe=_never, environ={"MEDSEG_TORCH_INDEX": mirror}).index_url == mirror


def test_nvidia_is_seen_from_nvidia_smi_or_the_driver(tmp_path):
    missing = tmp_path / "no-driver"
    assert not has_nvidia_gpu(which=lambda name: None, driver=missing)
    assert has_nvidia_gpu(which=lambda name: "/usr/bin/nvidia-smi", driver=missing)
    (tmp_path / "driver").mkdir()
    assert has_nvidia_gpu(which=lambda name: None, driver=tmp_path / "driver")


class _Index(http.server.BaseHTTPRequestHandler):
    delay_s = 0.0

    def do_GET(self):
        time.sleep(self.delay_s)
        ok = self.path == "/whl/cpu/torch/"
        self.send_response(200 if ok else 404)
        self.end_headers()
        self.wfile.write(b"<a>torch-2.14.1+cpu.whl</a>" if ok else b"")

    def log_message(self, *args):
        pass


def _serve(delay_s: float) -> http.server.ThreadingHTTPServer:
    handler = type("Handler", (_Index,), {"delay_s": delay_s})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_the_probe_answers_yes_no_and_gives_up_on_a_slow_index():
    fast, slow = _serve(0.0), _serve(3.0)
    try:
        assert index_answers(f"http://127.0.0.1:{fast.server_port}/whl/cpu", timeout_s=2)
        assert not index_answers(f"http://127.0.0.1:{fast.server_port}/elsewhere", timeout_s=2)
        t0 = time.monotonic()
        assert not index_answers(f"http://127.0.0.1:{slow.server_port}/whl/cpu", timeout_s=0.5)
        assert time.monotonic() - t0 < 2.5
        closed = fast.server_port
    finally:
        fast.shutdown()
        fast.server_close()
        slow.shutdown()
        slow.server_close()
    assert not index_answers(f"http://127.0.0.1:{closed}/whl/cpu", timeout_s=1)


@pytest.mark.parametrize(
    ("setting", "expected"), [("pypi", ""), ("https://mirror.example/cpu", "https://mirror.example/cpu")]
)
def test_install_sh_takes_the_rule_s_index_and_prints_it_first(setting, expected):
    """install.sh sourced defines its functions only; choose_torch_index runs the same Python rule as Slicer."""
    env = {**os.environ, "MEDSEG_TORCH_INDEX": setting}
    script = 'source ./install.sh && choose_torch_index && echo "index=[$TORCH_INDEX]"'
    out = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("install.sh: torch from") and "GB" in lines[0]
    assert lines[-1] == f"index=[{expected}]"


def test_slicer_installer_installs_torch_from_the_chosen_index_first_saying_the_size(tmp_path, monkeypatch):
    calls: list[tuple[list[str], list[str]]] = []
    monkeypatch.setattr(bs, "create_venv", lambda *a, **k: None)
    monkeypatch.setattr(
        bs, "pip_install", lambda python, reqs, log, pip_args=(), **k: calls.append((list(reqs), list(pip_args)))
    )
    monkeypatch.setattr(bs, "detect_device", lambda python: bs.DeviceInfo.from_json({"torch": "2.14.1+cpu"}))
    statuses: list = []
    cpu = TorchSource(CPU_INDEX, "cpu", "no NVIDIA GPU: torch's CPU build", engine_only=True)
    setup = bs.BackendSetup(venv_dir=tmp_path / "venv", on_status=statuses.append, torch_source=lambda: cpu)
    setup.install()
    assert calls[0] == (["torch", "torchvision"], ["--index-url", CPU_INDEX])
    assert calls[1] == ([bs.DEFAULT_REQUIREMENT], [])
    assert "2.3 GB" in statuses[0].message  # said before anything is downloaded

    calls.clear()
    offline = bs.BackendSetup(venv_dir=tmp_path / "v2", pip_args=["--no-index"], torch_source=lambda: _never(""))
    offline.install()
    assert calls == [([bs.DEFAULT_REQUIREMENT], ["--no-index"])]


_FAKE_PYTHON = """#!/bin/bash
# python3 for install.sh: the real one runs torch_index.py; "-m venv DIR" makes a venv whose python logs pip's args
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
  mkdir -p "$3/bin"
  printf '%s\\n' '#!/bin/bash' 'echo "$*" >> "$PIP_LOG"' \\
    'case "$*" in *--index-url*) [ -n "$FAIL_INDEX" ] && exit 1;; esac' 'exit 0' > "$3/bin/python"
  chmod +x "$3/bin/python"
  exit 0
fi
exec "$REAL_PYTHON" "$@"
"""


@pytest.mark.parametrize(
    ("setting", "fail_index", "torch_lines"),
    [
        ("https://idx.example/cpu", "", ["--index-url https://idx.example/cpu torch==2.14.1 torchvision==0.29.1"]),
        (
            "https://idx.example/cpu",
            "1",
            [
                "--index-url https://idx.example/cpu torch==2.14.1 torchvision==0.29.1",
                "torch==2.14.1 torchvision==0.29.1",
            ],
        ),
        ("pypi", "", ["torch==2.14.1 torchvision==0.29.1"]),
    ],
)
def test_install_sh_installs_torch_from_the_chosen_index_and_falls_back_to_pypi(
    tmp_path, setting, fail_index, torch_lines
):
    """The whole of install.sh with pip faked (and no apt-get on the PATH): the pip commands it runs, in order."""
    import shutil
    import sys

    repo = tmp_path / "repo"
    (repo / "MedSegReasoning" / "slicer").mkdir(parents=True)
    shutil.copy(ROOT / "install.sh", repo)
    shutil.copy(ROOT / "MedSegReasoning" / "slicer" / "torch_index.py", repo / "MedSegReasoning" / "slicer")
    tools = tmp_path / "bin"  # only what install.sh needs, so that apt-get is absent
    tools.mkdir()
    for tool in ("bash", "sed", "dirname", "mkdir", "chmod", "id", "cat", "printf"):
        if found := shutil.which(tool):
            (tools / tool).symlink_to(found)
    fake = tmp_path / "python3"
    fake.write_text(_FAKE_PYTHON)
    fake.chmod(0o755)
    log = tmp_path / "pip.log"
    env = {
        "PATH": str(tools),
        "PYTHON": str(fake),
        "REAL_PYTHON": sys.executable,
        "PIP_LOG": str(log),
        "FAIL_INDEX": fail_index,
        "MEDSEG_TORCH_INDEX": setting,
    }
    out = subprocess.run(["bash", "./install.sh"], cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].startswith("install.sh: torch from")  # the choice comes first
    assert ("falling back to PyPI" in out.stderr) == bool(fail_index)
    pip = [line.removeprefix("-m pip install -q ") for line in log.read_text().splitlines()]
    assert pip == ["--upgrade pip", *torch_lines, "-e .[test,sample]"]
