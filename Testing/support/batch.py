"""Builders of the batch tests: tiny studies (NIfTI files, DICOM series), and segmenter sources a Ray actor can
build in its own process (a monkeypatched factory does not reach it). Plain builders, imported as
``support.batch``; the actors import them too (the tests put Testing/ on the workers' PYTHONPATH)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

BOX = "14,12,46,44,3"  # around every study's block (the blocks differ in size, so their volumes do)


def block_array(n: int) -> np.ndarray:
    """8 slices of 56 x 60: a bright block (200) whose size depends on ``n``, in soft tissue (-100)."""
    a = np.full((8, 56, 60), -100, dtype=np.int16)
    a[1:7, 16 : 36 + n, 18 : 38 + n] = 200
    return a


def write_nifti_study(path: Path, n: int) -> Path:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(block_array(n))
    image.SetSpacing((1.0, 1.0, 2.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def write_dicom_study(folder: Path, n: int, study_uid: str, description: str = "", slices: int = 8) -> Path:
    """A CT series of ``block_array(n)`` (its first ``slices`` slices) into ``folder``; several calls with one
    ``study_uid`` make a study folder of several series."""
    from MedSegReasoning.volume.core import Geometry
    from MedSegReasoning.volume.dicom_writer import SeriesDescriptors, write_dicom_series

    geometry = Geometry.from_arrays((0.0, 0.0, 0.0), (1.0, 1.0, 2.0), np.eye(3))
    descriptors = SeriesDescriptors(study_instance_uid=study_uid, series_description=description)
    folder = folder / description if description else folder
    write_dicom_series(block_array(n)[:slices], geometry, folder, descriptors=descriptors)
    return folder


class ThresholdSource:
    """Builds the tests' ``ThresholdSegmenter`` (any volume: the bright pixels in the box), in any process."""

    def __call__(self):
        from support.fakes import ThresholdSegmenter

        return ThresholdSegmenter()


class KillOnceSource:
    """A ``ThresholdSegmenter`` whose first prediction of the whole run kills its own process, as an OOM kill or a
    lost node would: ``marker`` (a file) records that it happened, so the retry of the study goes through."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __call__(self):
        from support.fakes import ThresholdSegmenter

        marker = self.marker

        class Killing(ThresholdSegmenter):
            def predict(self, prompt):
                if not os.path.exists(marker):
                    Path(marker).write_text(str(os.getpid()))
                    os._exit(1)
                return super().predict(prompt)

        return Killing()


class SlowSource:
    """A ``ThresholdSegmenter`` that takes ``seconds`` per prediction: a run long enough to be killed in the middle."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __call__(self):
        import time

        from support.fakes import ThresholdSegmenter

        seconds = self.seconds

        class Slow(ThresholdSegmenter):
            def predict(self, prompt):
                time.sleep(seconds)
                return super().predict(prompt)

        return Slow()


# ---------------------------------------------------------------------------------------------------------------
# A Ray cluster started on its own (``ray start --head``), as an operator starts one


def _skip_or_fail(message: str) -> None:
    import pytest

    if os.environ.get("MEDSEG_REQUIRE_TOOLS") == "1":
        pytest.fail(message)
    pytest.skip(message)


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free ports: the sockets stay bound until all are picked (a port released and picked again
    would be handed to two Ray components: "trying to use a port number ... used by other components")."""
    import socket
    from contextlib import ExitStack

    with ExitStack() as stack:
        ports = []
        for _ in range(n):
            s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            s.bind(("127.0.0.1", 0))
            ports.append(int(s.getsockname()[1]))
        return ports


class RayHead:
    """A one-node Ray cluster on loopback, started by the ``ray`` CLI in its own process group, with its own temp
    folder and free ports (other Rays on this machine are left alone).

    It runs ``ray start --head --block``: stopping it is a signal to that process group, whose Ray processes all
    belong to it. Not ``ray stop``, which stops every Ray of this user on the machine, other runs' included."""

    def __init__(self, root: Path, env: dict[str, str], num_cpus: int = 2) -> None:
        self.root = Path(root)
        self.env = env
        self.num_cpus = num_cpus
        self.port, *self._ports = _free_ports(8)
        self.process = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60.0) -> RayHead:
        import shutil
        import subprocess
        import sys
        import tempfile
        import time

        ray_cli = Path(sys.executable).with_name("ray")
        if not ray_cli.exists():
            found = shutil.which("ray")
            if found is None:
                _skip_or_fail("the ray CLI is not installed (pip install 'medseg-reasoning[batch]')")
            ray_cli = Path(str(found))
        # Ray's socket paths must stay short (a Unix socket path is at most 107 bytes): a short folder in /tmp
        self.temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
        flags = (
            "--ray-client-server-port",
            "--node-manager-port",
            "--object-manager-port",
            "--dashboard-agent-grpc-port",
            "--dashboard-agent-listen-port",
            "--metrics-export-port",
            "--runtime-env-agent-port",
        )
        ports = dict(zip(flags, self._ports, strict=True))
        argv = [
            str(ray_cli), "start", "--head", "--block", f"--port={self.port}", f"--num-cpus={self.num_cpus}",
            "--num-gpus=0", "--disable-usage-stats", "--include-dashboard=false", "--node-ip-address=127.0.0.1",
            f"--temp-dir={self.temp}", *(f"{flag}={port}" for flag, port in ports.items()),
        ]  # fmt: skip
        self.log = self.root / "ray-head.log"
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **self.env}, start_new_session=True
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            text = self.log.read_text(errors="replace")
            if "Ray runtime started" in text or "block forever" in text:
                return self
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        tail = self.log.read_text(errors="replace")[-1500:]
        self.stop()
        import pytest

        pytest.fail(f"ray start --head did not come up on {self.address}:\n{tail}")

    def stop(self) -> None:
        import shutil
        import signal
        import subprocess

        if self.process is None:
            return
        for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
        try:  # what the head's group may have left (its workers end with it); only this group, by its id
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process = None
        shutil.rmtree(self.temp, ignore_errors=True)
