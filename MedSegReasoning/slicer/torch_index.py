"""Where torch comes from, for ``install.sh`` and the Slicer backend installer alike (one rule, tested once).

Why: on Linux, PyPI's torch is the CUDA build: with the NVIDIA libraries and triton it makes the environment about
9 GB, of which a machine without an NVIDIA GPU uses none. So on Linux without an NVIDIA GPU (no ``nvidia-smi`` and no
``/proc/driver/nvidia``) torch comes from PyTorch's CPU wheel index, when that index answers a short probe; where it
does not (a network that reaches PyPI only), PyPI's build is installed and the user is told why. Elsewhere (an
NVIDIA GPU, Windows, macOS) PyPI's torch is the right one. ``$MEDSEG_TORCH_INDEX`` names an index to use instead
(a mirror, or a CUDA variant's index); ``$MEDSEG_TORCH_INDEX=pypi`` forces PyPI.

Sizes, measured on Linux x86-64 with Python 3.11 and torch 2.14.1 (``du -sb`` of the environment): the environment
``install.sh`` makes (the engine with its test and sample extras) is 9.2 GB with PyPI's CUDA build, of which 4.9 GB
are the CUDA-only parts (``nvidia/``, ``triton/``, torch's CUDA libraries), so about 4.4 GB with the CPU build; the
Slicer backend (the engine alone, 2.1 GB less) about 7.2 GB and 2.3 GB.

Standard library only: ``install.sh`` runs this file with the system Python before any environment exists
(``python3 MedSegReasoning/slicer/torch_index.py [--engine-only]`` prints the index URL, empty for PyPI, then the
sentence to show), and Slicer's Python imports it.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
PROBE_TIMEOUT_S = 4.0
# GB on disk, measured (see the module docstring): (with the test extras, the engine alone)
SIZE_GB = {"cuda": (9.2, 7.2), "cpu": (4.4, 2.3)}


@dataclass(frozen=True)
class TorchSource:
    """Which index torch is installed from (None: PyPI), which build that gives, and the sentence for the user."""

    index_url: str | None
    build: str  # "cpu", "cuda" (Linux PyPI) or "default" (PyPI elsewhere, or an index the user named)
    reason: str
    engine_only: bool = field(default=False, compare=False)

    @property
    def pip_args(self) -> list[str]:
        """What goes before ``torch torchvision`` on pip's command line."""
        return ["--index-url", self.index_url] if self.index_url else []

    @property
    def size_note(self) -> str:
        """The disk the environment will take, said before the install starts."""
        sizes = SIZE_GB.get(self.build)
        if sizes is None:
            return "the environment takes several GB (torch's size depends on the build)"
        return f"the environment will take about {sizes[1 if self.engine_only else 0]:.1f} GB of disk"

    def message(self) -> str:
        return f"{self.reason}; {self.size_note}."


def has_nvidia_gpu(
    which: Callable[[str], str | None] = shutil.which, driver: Path = Path("/proc/driver/nvidia")
) -> bool:
    """An NVIDIA driver is installed: ``nvidia-smi`` on the PATH or the kernel driver's /proc entry."""
    return which("nvidia-smi") is not None or driver.exists()


def index_answers(url: str, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """The index's torch page answers within ``timeout_s`` (any network failure, proxy refusal or slowness: no)."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/torch/", timeout=timeout_s) as response:
            return 200 <= response.status < 300
    except Exception:
        return False


def choose_torch_source(
    *,
    system: str | None = None,
    nvidia: bool | None = None,
    probe: Callable[[str], bool] = index_answers,
    environ: dict[str, str] | None = None,
    engine_only: bool = False,
) -> TorchSource:
    """The rule of the module docstring; every input injectable, so each branch is tested without a network."""
    env = os.environ if environ is None else environ
    named = env.get("MEDSEG_TORCH_INDEX", "").strip()
    if named.lower() == "pypi":
        return TorchSource(None, "default", "torch from PyPI ($MEDSEG_TORCH_INDEX=pypi)", engine_only)
    if named:
        return TorchSource(named, "default", f"torch from {named} ($MEDSEG_TORCH_INDEX)", engine_only)
    system = system or platform.system()
    if system != "Linux":
        return TorchSource(None, "default", f"torch from PyPI (on {system} that build fits every machine)", engine_only)
    if nvidia if nvidia is not None else has_nvidia_gpu():
        return TorchSource(None, "cuda", "an NVIDIA GPU is present: torch's CUDA build from PyPI", engine_only)
    if probe(CPU_INDEX):
        return TorchSource(CPU_INDEX, "cpu", f"no NVIDIA GPU: torch's CPU build from {CPU_INDEX}", engine_only)
    return TorchSource(
        None,
        "cuda",
        f"no NVIDIA GPU, but {CPU_INDEX} did not answer within {PROBE_TIMEOUT_S:g} s: falling back to PyPI's torch, "
        "the CUDA build, which also runs on the CPU but is larger (set $MEDSEG_TORCH_INDEX to a reachable index "
        "or mirror of the CPU build to save the space)",
        engine_only,
    )


if __name__ == "__main__":  # install.sh: line 1 the index URL (empty: PyPI), line 2 the sentence
    source = choose_torch_source(engine_only="--engine-only" in sys.argv[1:])
    print(source.index_url or "")
    print(source.message())
