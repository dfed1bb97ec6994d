"""Export torch modules to ONNX once, keep them in a cache folder, and open them in ONNX Runtime.

Why a cache: exporting the LiteMedSAM encoder takes several seconds, loading the exported file well under
one. A file is named by the weights' SHA-256 and a digest of everything that changes the exported graph, so
new weights or new export settings never reuse a stale file; it is written to a temp file in the same folder
and moved into place with ``os.replace``, so a crash or two processes exporting at once never leave a
half-written model behind.

Torch is imported only to export: opening and running a cached file needs ONNX Runtime (or OpenVINO) alone, which is
what keeps ``ask``'s start-up free of torch once the exports exist.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..wire.errors import InputError, ModelError
from ._embedding import cache_root

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def physical_cores() -> int:
    """Physical cores this process may use: hyper-thread siblings share one core's FMA units."""
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
    except ImportError:
        physical = _physical_cores_from_proc()
    return max(1, min(allowed, physical or allowed))


def _physical_cores_from_proc() -> int | None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    cores, physical_id = set(), None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "physical id":
            physical_id = value.strip()
        elif key.strip() == "core id":
            cores.add((physical_id, value.strip()))
    return len(cores) or None


def cached_model_path(name: str, weights_sha256: str, settings: dict, cache_dir: Path | None = None) -> Path:
    """``<cache>/onnx/<name>-<weights sha[:16]>-<settings digest>.onnx`` (cache: ``$MEDSEG_CACHE_DIR`` or ~/.cache)."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    folder = cache_dir if cache_dir is not None else cache_root() / "onnx"
    return folder / f"{name}-{weights_sha256[:16]}-{digest}.onnx"


def export_onnx(
    module: torch.nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    *,
    opset: int,
    input_names: list[str],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]] | None = None,
) -> None:
    """Export with the TorchScript-based exporter (no onnxscript needed), atomically into ``path``."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=path.stem + ".", suffix=".tmp")
    os.close(handle)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about Python ints in shape arithmetic
            torch.onnx.export(
                module,
                args,
                temp_name,
                dynamo=False,
                opset_version=opset,
                input_names=input_names,
                output_names=output_names,
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
            )
        os.chmod(temp_name, 0o644)  # mkstemp makes 0600; the cache is an ordinary file like any other
        os.replace(temp_name, path)
    except Exception as exc:
        Path(temp_name).unlink(missing_ok=True)
        raise ModelError(
            f"Exporting {path.name} to ONNX failed ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}): "
            "use backend 'torch', or set MEDSEG_CACHE_DIR to a writable folder."
        ) from exc


def quantize_int8(source: Path, path: Path) -> None:
    """Dynamic int8 quantization of ``source``'s MatMul weights (per output channel), atomically into ``path``.

    Why only MatMul, dynamically: on the real CT, int8 Conv (static, calibrated) moved the inferior vena cava's
    Dice from 0.886 to 0.48-0.58, and ONNX Runtime's static QDQ graphs ran slower than fp32 here; dynamic
    MatMul quantization (activations scaled per call, weights per output channel) kept every organ's Dice
    within 0.012 of fp32's and mean Dice over the organs' slices within 0.004 (benchmarks/segmenter.py;
    the figures in litemedsam's docstring). Deterministic: the
    same fp32 graph always gives the same file, derived locally from the real weights, never downloaded.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=path.stem + ".") as work:
        prepared, quantized = Path(work) / "prepared.onnx", Path(work) / "quantized.onnx"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # Shape inference + ONNX Runtime's basic fusions first, as the quantizer's documentation asks.
                quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
                quantize_dynamic(
                    str(prepared),
                    str(quantized),
                    op_types_to_quantize=["MatMul"],
                    per_channel=True,
                    weight_type=QuantType.QInt8,
                )
        except Exception as exc:
            raise ModelError(
                f"Quantizing {source.name} to int8 failed ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}): "
                "use backend 'onnx' (fp32)."
            ) from exc
        os.chmod(quantized, 0o644)
        os.replace(quantized, path)


def device_type(device: Any) -> str:
    """``"cpu"`` or ``"cuda"`` from a ``torch.device``, ``_embedding.CpuDevice`` or a plain string."""
    return str(getattr(device, "type", device)).split(":")[0]


def make_session(path: Path, device: Any):
    """An ONNX Runtime session: full graph optimisation, one intra-op thread per physical core."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = physical_cores()
    options.inter_op_num_threads = 1
    # Memory-pattern planning pre-allocates one block for all activations of a run: for LiteMedSAM's encoder
    # (67 MB tensors in its full-resolution first stage) it kept ~0.3 GB more resident for no measurable gain.
    options.enable_mem_pattern = False
    options.log_severity_level = 3
    providers = ["CPUExecutionProvider"]
    if device_type(device) == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise InputError(
                "The ONNX backend on CUDA needs onnxruntime-gpu, which is not installed: use backend 'torch' "
                "on cuda, or device 'cpu'."
            )
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(str(path), options, providers=providers)


def open_cached(
    path: Path, export: Callable[[Path], None], device: Any, opener: Callable[[Path], object] | None = None
):
    """Open ``path`` (in ONNX Runtime, or with ``opener``), exporting it first where absent, and again where damaged."""
    open_model = opener if opener is not None else (lambda p: make_session(p, device))
    if not path.is_file():
        log.info("exporting %s to ONNX (once; reused from %s afterwards)", path.name, path.parent)
        export(path)
        return open_model(path)
    try:
        return open_model(path)
    except (InputError, ModelError):
        raise
    except Exception:  # onnxruntime and openvino raise their own classes for a damaged file
        log.warning("cached ONNX model %s is unreadable; exporting it again", path)
        path.unlink(missing_ok=True)
        export(path)
        return open_model(path)
