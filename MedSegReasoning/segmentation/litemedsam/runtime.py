"""The torch-free runtimes: the cached ONNX exports, run by ONNX Runtime (``onnx``, ``onnx-int8``) or OpenVINO
(``openvino``, encoder only), and the choice of default backend. Figures and reasons: the package docstring.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np

from .. import _onnx, _openvino
from .._embedding import (
    EncodeInterrupted,
    Interrupt,
)
from .checkpoint import ONNX_EXPORT_SETTINGS
from .transforms import prompt_tokens

log = logging.getLogger(__name__)
BACKENDS = ("torch", "onnx", "onnx-int8", "openvino")  # onnx-int8 and openvino: CPU only (see OnnxRuntime)
# Measured fastest on CPU with identical masks (benchmarks/segmenter.py); "onnx" where OpenVINO is not
# installed; torch is the default on CUDA.
DEFAULT_CPU_BACKEND = "openvino"
CPU_ONLY_BACKENDS = ("onnx-int8", "openvino")


# -- runtimes -----------------------------------------------------------------------------------------------
def onnx_model_paths(weights_sha256: str, cache_dir: Path | None = None) -> dict[str, Path]:
    """Where the exported encoder and decoder of these weights live (see ``_onnx.cached_model_path``)."""
    return {
        part: _onnx.cached_model_path(f"litemedsam-{part}", weights_sha256, ONNX_EXPORT_SETTINGS[part], cache_dir)
        for part in ("encoder", "decoder", "encoder-int8")
    }


class _Exports:
    """The one-time exports, building the torch model only when a file must actually be written."""

    def __init__(self, weights: Path, paths: dict[str, Path]) -> None:
        self.weights = weights
        self.paths = paths
        self._model = None

    def _built(self):
        if self._model is None:
            from .build import load_model

            self._model = load_model(self.weights)
        return self._model

    def encoder(self, path: Path) -> None:
        from .export import export_encoder

        export_encoder(self._built(), path)

    def int8_encoder(self, path: Path) -> None:
        if not self.paths["encoder"].is_file():
            self.encoder(self.paths["encoder"])
        _onnx.quantize_int8(self.paths["encoder"], path)

    def decoder(self, path: Path) -> None:
        from .export import export_decoder

        export_decoder(self._built(), path)


class OrtModel:
    """One ONNX Runtime graph with one input and one output, stoppable through an ``Interrupt``."""

    def __init__(self, session, input_name: str, output_name: str) -> None:
        self.session = session
        self.input_name, self.output_name = input_name, output_name

    def __call__(self, batch: np.ndarray, interrupt: Interrupt | None = None) -> np.ndarray:
        if interrupt is None:
            return self.session.run([self.output_name], {self.input_name: batch})[0]
        import onnxruntime as ort

        options = ort.RunOptions()

        def stop() -> None:
            options.terminate = True

        try:
            with interrupt.stops(stop):
                return self.session.run([self.output_name], {self.input_name: batch}, options)[0]
        except Exception as exc:  # ONNX Runtime raises its own Fail for a terminated run
            if interrupt.is_set():
                raise EncodeInterrupted("the encoder call gave way to a foreground call") from exc
            raise


class OnnxRuntime:
    """The exported encoder and prompt decoder, exported once per weights and settings (see ``_onnx``); torch-free.

    The decoder (prompt encoder + mask decoder) runs in ONNX Runtime; ``encoder`` picks the encoder's runtime:
    ``onnx`` (ONNX Runtime, fp32), ``openvino`` (the same fp32 file in OpenVINO, see ``_openvino``) or
    ``onnx-int8`` (ONNX Runtime with the MatMul weights quantized to int8 by ``_onnx.quantize_int8``, derived from
    the fp32 export at first use and cached beside it; opt-in, CPU only: its DynamicQuantizeMatMul kernels are CPU
    kernels). Accuracy and timings of each: the module docstring. Torch is imported only where a file is missing or
    damaged and must be exported.
    """

    def __init__(
        self,
        weights: Path,
        sha256: str,
        device: Any,
        cache_dir: Path | None,
        encoder: str = "onnx",
        decoder_in_background: bool = False,
    ) -> None:
        paths = onnx_model_paths(sha256, cache_dir)
        exports = _Exports(weights, paths)
        int8 = encoder == "onnx-int8"
        self._encode: Callable[..., np.ndarray]
        if encoder == "openvino":
            self._encode = _onnx.open_cached(
                paths["encoder"],
                exports.encoder,
                device,
                opener=lambda path: _openvino.OpenVinoModel(path, path.parent / "openvino"),
            )
        else:
            path, export = (
                (paths["encoder-int8"], exports.int8_encoder) if int8 else (paths["encoder"], exports.encoder)
            )
            self._encode = OrtModel(_onnx.open_cached(path, export, device), "image", "embedding")
        self._decoder: Future = Future()
        self._open_decoder = lambda: _onnx.open_cached(paths["decoder"], exports.decoder, device)
        self._decoder_lock = threading.Lock()
        self._decoder_started = False
        if not decoder_in_background:
            self._start_decoder(background=False)
            self._decoder.result()  # a decoder that cannot be opened fails the construction, as before
        self.device = device
        self.paths = {
            part: paths[part] for part in ("encoder", "decoder", "encoder-int8") if int8 or part != "encoder-int8"
        }

    def _start_decoder(self, background: bool) -> None:
        """Open the decoder once: here, or on a thread while the encoder runs (it is needed only after it)."""
        with self._decoder_lock:
            if self._decoder_started:
                return
            self._decoder_started = True
        if background:
            threading.Thread(
                target=_fulfil, args=(self._decoder, self._open_decoder), name="medseg-decoder-open", daemon=True
            ).start()
        else:
            _fulfil(self._decoder, self._open_decoder)

    @property
    def decoder(self):
        """The decoder's ONNX Runtime session (waits for it where it is still being opened in the background)."""
        self._start_decoder(background=False)
        return self._decoder.result()

    def encode(self, batch: np.ndarray, interrupt: Interrupt | None = None) -> np.ndarray:
        self._start_decoder(background=True)
        return self._encode(batch, interrupt)

    def decode(
        self, embedding: np.ndarray, box: np.ndarray | None, points: np.ndarray | None, labels: np.ndarray | None
    ) -> tuple[np.ndarray, float]:
        """Low-resolution logits (h, w) and predicted IoU for a prompt in the model's input pixels."""
        coords, values = prompt_tokens(box, points, labels)
        feed = {"embedding": np.asarray(embedding, dtype=np.float32), "coords": coords, "labels": values}
        low_res, iou = self.decoder.run(["low_res", "iou"], feed)
        return low_res[0, 0], float(iou[0, 0])


def _fulfil(future: Future, make: Callable[[], Any]) -> None:
    try:
        future.set_result(make())
    except BaseException as exc:  # raised where the result is used (the first prediction)
        future.set_exception(exc)


def default_backend(device: Any) -> str:
    """torch on CUDA; on the CPU OpenVINO where installed (fastest, same masks), else ONNX Runtime."""
    if device.type == "cuda":
        return "torch"
    if DEFAULT_CPU_BACKEND == "openvino" and not _openvino.available():
        log.info("OpenVINO is not installed: LiteMedSAM's encoder runs in ONNX Runtime (backend 'onnx')")
        return "onnx"
    return DEFAULT_CPU_BACKEND
