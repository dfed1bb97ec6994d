"""Which device the backend's torch will use (CUDA with GPU names, Apple MPS, or CPU), asked of the backend's own
Python with a tiny script, so that Slicer's Python never imports torch."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..wire.childenv import child_environment
from .setup_status import SetupFailed

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
