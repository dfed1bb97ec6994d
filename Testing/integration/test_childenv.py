"""Child Pythons of another installation (the backend venv started from Slicer) start clean of the host's Python
variables: a PYTHONHOME like Slicer's launcher sets would otherwise stop them before they run a line."""

from __future__ import annotations

import sys

import pytest

from MedSegReasoning.slicer.backend_setup import detect_device
from MedSegReasoning.wire.childenv import child_environment, set_startup_environment


@pytest.fixture(autouse=True)
def _reset():
    yield
    set_startup_environment(None)


def test_host_python_variables_are_dropped_whatever_their_case(monkeypatch):
    monkeypatch.setenv("PYTHONHOME", "/opt/Slicer/lib/Python")
    monkeypatch.setenv("PYTHONPATH", "/opt/Slicer/lib/site-packages")
    monkeypatch.setenv("MEDSEG_KEEP_ME", "1")
    env = child_environment({"PYTHONUNBUFFERED": "1"})
    assert "PYTHONHOME" not in env and "PYTHONPATH" not in env
    assert env["MEDSEG_KEEP_ME"] == "1" and env["PYTHONUNBUFFERED"] == "1"
    set_startup_environment({"Path": "C:\\Windows", "PythonHome": "C:\\Slicer\\lib\\Python"})
    assert child_environment() == {"Path": "C:\\Windows"}


def test_the_startup_environment_replaces_the_launchers_one(monkeypatch):
    monkeypatch.setenv("LD_LIBRARY_PATH", "/opt/Slicer/lib")
    set_startup_environment({"PATH": "/usr/bin:/bin", "HOME": "/home/u"})
    env = child_environment()
    assert "LD_LIBRARY_PATH" not in env and env["PATH"] == "/usr/bin:/bin"


def test_a_child_python_starts_although_the_host_set_a_foreign_pythonhome(monkeypatch):
    """Without the clean environment this interpreter dies at start-up ("No module named 'encodings'")."""
    monkeypatch.setenv("PYTHONHOME", "/nonexistent/slicer-python-home")
    device = detect_device(sys.executable, timeout=120)
    assert device.cpu and device.device == "cpu" and device.python
