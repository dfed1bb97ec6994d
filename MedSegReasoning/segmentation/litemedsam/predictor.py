"""``LiteMedSAMSegmenter``: preprocessing as the official inference script does it, prompts to tokens, and the
two-step ``set_image`` / ``predict`` API over whichever runtime the backend names.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ...wire.errors import InputError
from .. import _openvino
from .._embedding import (
    EmbeddingSegmenter,
    EncodedImage,
    Interrupt,
    logits_to_mask,
    resolve_device,
)
from ..base import POINTS_ONLY_MESSAGE, ModelIdentity, Prompt2D
from ..cache import DEFAULT_CACHE_BYTES, EmbeddingCache
from .checkpoint import INPUT_SIZE, PINNED_PACKAGE, default_weights_path, verify_weights
from .runtime import BACKENDS, CPU_ONLY_BACKENDS, OnnxRuntime, default_backend
from .transforms import preprocess

log = logging.getLogger(__name__)


# -- the segmenter ------------------------------------------------------------------------------------------
class LiteMedSAMSegmenter(EmbeddingSegmenter):
    """The embedded LiteMedSAM: TinyViT encoder (OpenVINO, ONNX Runtime or torch) + SAM prompt encoder and decoder.

    ``weights_path`` names another copy of the same released checkpoint (it must pass the same SHA-256 check);
    ``cache`` lets several segmenters share one embedding cache, else one of ``cache_bytes`` is made;
    ``onnx_cache_dir`` overrides where the exported encoder and decoder are kept; ``points_with_box`` passes points given
    together with a box on to the decoder (off by default: measured to lower Dice, see the module docstring);
    ``decoder_in_background`` defers opening the decoder (0.1-0.3 s, mostly holding the GIL) to a thread started by
    the first encoder call, which needs no GIL: ``factory.preload`` builds the segmenter while ``ask`` reads the
    volume (GIL-bound: pydicom, the JPEG 2000 codec), and the decoder must not compete with that; it is ready by the
    first ``predict``, which waits for it and raises a failure to open it.
    """

    def __init__(
        self,
        *,
        device: str = "cpu",
        backend: str | None = None,
        cache: EmbeddingCache | None = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        weights_path: str | Path | None = None,
        onnx_cache_dir: str | Path | None = None,
        points_with_box: bool = False,
        decoder_in_background: bool = False,
    ) -> None:
        dev = resolve_device(device)
        backend = backend or default_backend(dev)
        if backend not in BACKENDS:
            raise InputError(f"Unknown LiteMedSAM backend {backend!r}: use one of {', '.join(BACKENDS)}.")
        if backend in CPU_ONLY_BACKENDS and dev.type != "cpu":
            raise InputError(f"LiteMedSAM backend {backend!r} runs on the CPU only: use backend 'torch' on {dev.type}.")
        path = Path(weights_path).expanduser() if weights_path is not None else default_weights_path()
        sha256 = verify_weights(path)
        self._onnx: OnnxRuntime | None = None
        self._runtime: Any
        if backend in ("onnx", "onnx-int8", "openvino"):
            folder = Path(onnx_cache_dir).expanduser() if onnx_cache_dir is not None else None
            self._onnx = self._runtime = OnnxRuntime(
                path, sha256, dev, folder, encoder=backend, decoder_in_background=decoder_in_background
            )
            self.encoder: Callable[..., Any] = self._onnx.encode
        else:
            from .build import TorchRuntime

            self._runtime = TorchRuntime(path, dev)
            self.encoder = self._runtime.encoder
        self.backend = backend
        self.device = dev
        self.points_with_box = points_with_box
        identity = ModelIdentity(
            name="LiteMedSAM",
            weights=str(path),
            sha256=sha256,
            extra={
                "package": PINNED_PACKAGE,
                "backend": backend,
                "device": str(dev),
                "input_size": INPUT_SIZE,
                **({"openvino": _openvino.version()} if backend == "openvino" else {}),
            },
        )
        super().__init__(
            identity=identity,
            cache=cache if cache is not None else EmbeddingCache(cache_bytes),
            cache_namespace=("LiteMedSAM", sha256),
        )

    def _encode(self, image: np.ndarray, interrupt: Interrupt | None = None) -> EncodedImage:
        batch, frame = preprocess(image)
        return EncodedImage(embedding=self._runtime.encode(batch, interrupt), frame=frame)

    def _decode(
        self, encoded: EncodedImage, box: np.ndarray | None, points: np.ndarray | None, labels: np.ndarray | None
    ) -> tuple[np.ndarray, float]:
        low_res, iou = self._runtime.decode(encoded.embedding, box, points, labels)
        return logits_to_mask(low_res, encoded.frame), iou

    def _check_prompt(self, prompt: Prompt2D) -> Prompt2D:
        if prompt.box is None:
            raise InputError(POINTS_ONLY_MESSAGE)
        if prompt.points and not self.points_with_box:
            log.debug(
                "LiteMedSAM: %d point(s) given with a box are not passed on (box-trained model)", len(prompt.points)
            )
            return Prompt2D(box=prompt.box)
        return prompt
