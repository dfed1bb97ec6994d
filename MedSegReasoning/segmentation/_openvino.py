"""Run an exported ONNX encoder with OpenVINO's CPU plugin, in exact fp32.

Why OpenVINO beside ONNX Runtime: on LiteMedSAM's encoder its CPU plugin fuses what ONNX Runtime runs as
separate passes over memory (GELU, bias and residual adds into the convolutions and GEMMs; each attention
window's matmuls, bias and softmax into one kernel): the same ONNX file ran in 0.80-0.92x ONNX Runtime's time
here, with embeddings within 3e-6 of it and identical masks (``benchmarks/segmenter.py``).

Why the settings below: ``INFERENCE_PRECISION_HINT`` is pinned to f32 because the plugin otherwise picks
bf16 on CPUs that have it (AMX, AVX512-BF16), which would change the masks; dynamic activation quantization
is switched off for the same reason. Compiled models are cached in ``<cache>/openvino`` (OpenVINO's own
``CACHE_DIR``): a later process loads the compiled blob (~0.2-0.4 s) instead of compiling again (~1.3 s).

Why an interrupt: encoding ahead (``encode_ahead``) runs this model in the background while a reasoner thinks; when
the round needs the segmenter, the running inference is cancelled (``InferRequest.cancel``: it stops within about
15 ms here) instead of making the round wait up to a whole encoder call. Torch-free: results are numpy arrays.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import numpy as np

from ..wire.errors import ModelError
from ._embedding import EncodeInterrupted, Interrupt
from ._onnx import physical_cores


def available() -> bool:
    """Whether the ``openvino`` package can be imported (checked without importing it)."""
    return importlib.util.find_spec("openvino") is not None


def version() -> str:
    import openvino

    return openvino.__version__.split("-")[0]


def exact_cpu_config() -> dict:
    """Compile settings: one thread per physical core, latency-first, fp32 arithmetic throughout."""
    return {
        "INFERENCE_NUM_THREADS": physical_cores(),
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "f32",
        "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0,
    }


class OpenVinoModel:
    """One compiled single-input, single-output model; calls are serialised (an infer request is not re-entrant)."""

    def __init__(self, path: Path, cache_dir: Path) -> None:
        try:
            import openvino as ov
        except ImportError as exc:
            raise ModelError(
                f"OpenVINO could not be imported ({exc}): install it with `pip install openvino`, "
                "or use LiteMedSAM backend 'onnx'."
            ) from exc
        cache_dir.mkdir(parents=True, exist_ok=True)
        core = ov.Core()
        core.set_property({"CACHE_DIR": str(cache_dir)})
        # Compiling from the path (not from a read model) lets OpenVINO key its blob cache on the file.
        self._compiled = core.compile_model(str(path), "CPU", exact_cpu_config())
        self._request = self._compiled.create_infer_request()
        self._lock = threading.Lock()

    def __call__(self, batch: np.ndarray, interrupt: Interrupt | None = None) -> np.ndarray:
        """The model's output for ``batch``; ``EncodeInterrupted`` where ``interrupt`` was set before it finished."""
        with self._lock:
            if interrupt is None:
                outputs = self._request.infer({0: batch})
            else:
                self._request.start_async({0: batch})
                try:
                    with interrupt.stops(self._request.cancel):
                        self._request.wait()
                except RuntimeError as exc:
                    if interrupt.is_set():
                        raise EncodeInterrupted("the encoder call gave way to a foreground call") from exc
                    raise
                outputs = [self._request.get_output_tensor(0).data]
            # The request reuses its output buffer on the next call: copy before releasing the lock.
            return np.array(outputs[0], copy=True)
