"""A torch device from a device name, checked against what this torch build sees.

Apart from ``_sam_core`` so that the torch-free ``_embedding`` can reach it (for ``cuda`` only, lazily) without
importing the module that imports ``_embedding``.
"""

from __future__ import annotations

import torch

from ..wire.errors import InputError


def resolve_device(device: str) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N``; CUDA only where torch sees a GPU (else an actionable InputError)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"Unknown device {device!r}: use 'cpu' or 'cuda' (or 'cuda:N').") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(
            f"Device {device!r} was requested but this torch build sees no CUDA GPU: use device 'cpu' "
            "(CLI: --device cpu) or install a CUDA build of torch."
        )
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"Device {device!r} is not supported: use 'cpu' or 'cuda'.")
    return dev
