"""Builders for the export and PACS tests: a small oblique CT series, a session made on it by the scripted
dialogue, a real Orthanc on loopback, and a DICOMweb server that refuses.

Plain builders, imported as ``support.export``. The benchmark imports the
Orthanc runner too.
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import json
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from MedSegReasoning.volume import load_volume, write_dicom_series
from MedSegReasoning.volume.core import Geometry
from support.dialogue import KIDNEY, SPACING, WINDOW, abdomen_labels, abdomen_volume, script
from support.fakes import label_oracle
from support.volume import oblique_flipped_geometry

DUODENUM = 3


# ---------------------------------------------------------------------------------------------------------------
# The command, as the CLI will call it


def export_parser() -> argparse.ArgumentParser:
    """A parser with only the ``export`` subcommand (cli.py hooks the same function into the real one)."""
    from MedSegReasoning.export.command import add_export_parser

    parser = argparse.ArgumentParser(prog="medseg-reasoning")
    add_export_parser(parser.add_subparsers(dest="command"))
    return parser


def export(*argv: object) -> int:
    """``medseg-reasoning export ARGV...``; errors propagate as ``MedSegError`` (the CLI turns them into exits)."""
    from MedSegReasoning.export.command import run_export

    return run_export(export_parser().parse_args(["export", *map(str, argv)]))


# ---------------------------------------------------------------------------------------------------------------
# A CT series and a session on it


def oblique_abdomen_geometry() -> Geometry:
    """The tests' oblique, flipped direction (rotated about two axes, i and k reversed) with the synthetic
    abdomen's own spacing, so organs measure what judgment expects of them."""
    g = oblique_flipped_geometry()
    return Geometry.from_arrays(g.origin, SPACING, g.direction_matrix)


def write_ct(folder: Path, geometry: Geometry | None = None, seed: int = 11, **descriptors) -> Path:
    """The synthetic abdomen (24 x 80 x 80, kidney, lesion, duodenum, vein) as a CT series on an oblique,
    flipped grid with shuffled file names. The same ``seed`` gives the same UIDs; another seed gives the same
    voxels under new UIDs (a "changed" source)."""
    from MedSegReasoning.volume.dicom_writer import SeriesDescriptors

    write_dicom_series(
        abdomen_volume().array,
        geometry or oblique_abdomen_geometry(),
        folder,
        modality="CT",
        descriptors=SeriesDescriptors(
            patient_name=descriptors.get("patient_name", "Doe^John"),
            patient_id=descriptors.get("patient_id", "PID-4711"),
            study_description="Abdomen CT for export tests",
            series_description="synthetic abdomen",
        ),
        shuffle_names=True,
        rng=np.random.default_rng(seed),
    )
    return folder


def run_session(session_dir: Path, series: str | Path, volume=None):
    """The three-round scripted dialogue (lesion; kidney containing it + vein; redo of the kidney) on ``series``,
    then the user's edits: E2's mask repainted to include the lesion (so E1 and E2 overlap) without its last
    slice, E1 confirmed, E3 rejected. Returns (session, volume, labels)."""
    from MedSegReasoning.dialogue import Session, run_round

    volume = volume if volume is not None else load_volume(series)
    labels = abdomen_labels()
    segmenter = label_oracle(volume.array, labels, leaks_into={KIDNEY: {DUODENUM}}, window=WINDOW)
    session = Session.for_volume(volume, path=series, folder=session_dir)
    for question, plan in script(labels):
        run_round(session, volume, segmenter, WINDOW, question, plan)
    edited = session.dense_mask("E2") | session.dense_mask("E1")
    edited[np.flatnonzero(edited.any(axis=(1, 2)))[-1]] = False
    session.replace_mask("E2", edited)
    session.set_review("E1", "confirmed")
    session.set_review("E3", "rejected")
    return session, volume, labels


def folder_digest(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes: a session must look exactly the same after an export."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def index_set(points: np.ndarray, geometry: Geometry) -> set[tuple[int, int, int]]:
    """LPS points -> the (i, j, k) voxels of ``geometry`` they are centres of (they must be, within 1e-3)."""
    ijk = geometry.physical_to_index(points)
    assert np.allclose(ijk, np.round(ijk), atol=1e-3), "read-back voxels are not on the source grid"
    return {tuple(int(v) for v in row) for row in np.round(ijk).astype(int)}


def mask_points(mask: np.ndarray, geometry: Geometry) -> np.ndarray:
    k, j, i = np.nonzero(mask)
    return geometry.index_to_physical(np.stack([i, j, k], axis=1))


# ---------------------------------------------------------------------------------------------------------------
# Orthanc on loopback

_LOOPBACK_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
/* Orthanc 1.10 has no bind-address option: make its listening sockets bind to loopback only. */
int bind(int fd, const struct sockaddr *addr, socklen_t len) {
    static int (*real_bind)(int, const struct sockaddr *, socklen_t);
    if (!real_bind) real_bind = (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "bind");
    if (addr && addr->sa_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
        struct sockaddr_in a;
        memcpy(&a, addr, sizeof a);
        if (a.sin_addr.s_addr == htonl(INADDR_ANY)) {
            a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            return real_bind(fd, (const struct sockaddr *)&a, sizeof a);
        }
    }
    if (addr && addr->sa_family == AF_INET6 && len >= sizeof(struct sockaddr_in6)) {
        struct sockaddr_in6 a;
        memcpy(&a, addr, sizeof a);
        if (IN6_IS_ADDR_UNSPECIFIED(&a.sin6_addr)) {
            a.sin6_addr = in6addr_loopback;
            return real_bind(fd, (const struct sockaddr *)&a, sizeof a);
        }
    }
    return real_bind(fd, addr, len);
}
"""
_PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc", "/usr/local/share/orthanc/plugins")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _skip_or_fail(message: str) -> None:
    if os.environ.get("MEDSEG_REQUIRE_TOOLS") == "1":
        pytest.fail(message)
    pytest.skip(message)


class Orthanc:
    """A private Orthanc with the DICOMweb plugin: loopback only, its own config and storage, authentication on
    (a random password per run), DICOM (DIMSE) server off, remote access off. ``start`` waits until it answers."""

    USER = "medseg"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.port = free_port()
        self.password = secrets.token_urlsafe(12)
        self.process: subprocess.Popen | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.base}/dicom-web"

    def env(self) -> dict[str, str]:
        """The environment variables the project reads its DICOMweb credentials from."""
        return {"MEDSEG_DICOMWEB_USER": self.USER, "MEDSEG_DICOMWEB_PASSWORD": self.password}

    def start(self, timeout_s: float = 30.0) -> Orthanc:
        self.root.mkdir(parents=True, exist_ok=True)
        binary, plugin, shim = self._requirements()
        storage = self.root / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        config = self.root / "orthanc.json"
        config.write_text(json.dumps(self._config(storage, plugin), indent=1))
        env = {**os.environ, "LD_PRELOAD": str(shim)}
        log = open(self.root / "orthanc.out", "wb")
        self.process = subprocess.Popen(
            [binary, f"--logdir={self.root}", str(config)], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.root
        )
        self._wait_ready(timeout_s)
        return self

    def _requirements(self) -> tuple[str, str, Path]:
        binary = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None)
        if binary is None:
            _skip_or_fail("Orthanc is not installed (Debian packages orthanc, orthanc-dicomweb)")
        plugin = next(
            (
                str(Path(d) / "libOrthancDicomWeb.so")
                for d in _PLUGIN_DIRS
                if (Path(d) / "libOrthancDicomWeb.so").exists()
            ),
            None,
        )
        if plugin is None:
            _skip_or_fail("the Orthanc DICOMweb plugin is not installed (Debian package orthanc-dicomweb)")
        compiler = shutil.which("cc") or shutil.which("gcc")
        if compiler is None:
            _skip_or_fail("a C compiler is needed to keep Orthanc on loopback (it has no bind-address option)")
        shim = self.root / "libloopback.so"
        source = self.root / "loopback.c"
        source.write_text(_LOOPBACK_SHIM)
        done = subprocess.run(
            [compiler, "-shared", "-fPIC", "-O2", "-o", str(shim), str(source), "-ldl"], capture_output=True, text=True
        )
        if done.returncode != 0:
            _skip_or_fail(f"could not build the loopback shim for Orthanc: {done.stderr.strip()[:200]}")
        return str(binary), plugin, shim

    def _config(self, storage: Path, plugin: str) -> dict:
        return {
            "Name": "MedSegReasoningTest",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpPort": self.port,
            "DicomServerEnabled": False,
            "DicomPort": free_port(),  # not opened (server disabled); a free loopback port all the same
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {self.USER: self.password},
            "Plugins": [plugin],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False, "Host": "127.0.0.1", "Ssl": False},
            "HttpThreadsCount": 8,
            "ConcurrentJobs": 1,
            "SaveJobs": False,
            "StorageCompression": False,
            "UnknownSopClassAccepted": True,
            "HttpDescribeErrors": True,
        }

    def _wait_ready(self, timeout_s: float) -> None:
        import requests

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                break
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.base}/system", auth=(self.USER, self.password), timeout=1).ok:
                    return
            time.sleep(0.1)
        log = (self.root / "orthanc.out").read_text(errors="replace")[-800:]
        self.stop()
        pytest.fail(f"Orthanc did not start on port {self.port}:\n{log}")

    def listening_addresses(self) -> set[str]:
        """Local addresses of sockets listening on this Orthanc's port (from /proc/net/tcp and tcp6)."""
        found = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with contextlib.suppress(OSError), open(table) as fh:
                for line in fh.readlines()[1:]:
                    local, state = line.split()[1], line.split()[3]
                    address, port = local.rsplit(":", 1)
                    if state == "0A" and int(port, 16) == self.port:  # 0A = LISTEN
                        found.add(_address(address))
        return found

    def instance_count(self) -> int:
        import requests

        return len(requests.get(f"{self.base}/instances", auth=(self.USER, self.password), timeout=10).json())

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        self.process = None


def _address(hex_address: str) -> str:
    if len(hex_address) == 8:
        return socket.inet_ntop(socket.AF_INET, bytes.fromhex(hex_address)[::-1])
    raw = bytes.fromhex(hex_address)
    return socket.inet_ntop(socket.AF_INET6, b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4)))


@contextlib.contextmanager
def running_orthanc(root: Path) -> Iterator[Orthanc]:
    server = Orthanc(root).start()
    try:
        yield server
    finally:
        server.stop()


def push_series(orthanc: Orthanc, folder: Path) -> None:
    """STOW-RS every file of ``folder`` to ``orthanc`` (the "push a CT series" step), with the project's client."""
    import pydicom

    from MedSegReasoning.volume.dicomweb import connect

    client = connect(orthanc.dicomweb, headers=_basic(orthanc))
    datasets = [pydicom.dcmread(p) for p in sorted(folder.iterdir())]
    for start in range(0, len(datasets), 50):
        client.store_instances(datasets[start : start + 50])


def _basic(orthanc: Orthanc) -> dict[str, str]:
    from MedSegReasoning.volume.dicomweb import headers_from_env

    return headers_from_env(orthanc.env())


# ---------------------------------------------------------------------------------------------------------------
# A DICOMweb server that refuses


class RefusingDicomweb:
    """Answers every request with ``status`` and ``body``, like a PACS that rejects, fails, or stores nothing."""

    def __init__(self, status: int, body: str = "storage refused by policy", content_type: str = "text/plain") -> None:
        self.status = status
        self.body = body.encode()
        self.content_type = content_type
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        handler = self._handler()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/dicom-web"

    def _handler(self):
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                elif self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    _drain_chunked(self.rfile)
                outer.requests.append((self.command, self.path, dict(self.headers)))
                self.send_response(outer.status)
                self.send_header("Content-Type", outer.content_type)
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            do_GET = do_POST = _answer

            def log_message(self, *args) -> None:  # quiet
                pass

        return Handler

    def __enter__(self) -> RefusingDicomweb:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def _drain_chunked(stream) -> None:
    while True:
        size = int(stream.readline().strip() or b"0", 16)
        if size == 0:
            stream.readline()
            return
        stream.read(size + 2)
