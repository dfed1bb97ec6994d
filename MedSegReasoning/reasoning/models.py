"""Reasoner weights on this machine: the known models (``data/models.json``), what is downloaded, and downloads.

Weights live in a Hugging Face hub cache (``huggingface_hub``'s own layout, so the same files serve
transformers, vLLM and this tool): ``$MEDSEG_MODELS_DIR`` if set, else the standard ``HF_HUB_CACHE``. Downloads go
through ``huggingface_hub.snapshot_download``, which resumes interrupted files and shows a progress bar, and
are restricted to safetensors weights plus the json/txt/tokenizer/template files a processor needs: pickled
``.bin`` weights are never fetched, so never loaded.

``hf:<id>`` reads the cache only; it downloads only when the caller passes ``allow_download`` (``--allow-download``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from dataclasses import dataclass
from functools import lru_cache, partial
from importlib import resources
from pathlib import Path
from typing import Any

from ..wire.errors import InputError, ModelError, ServiceError
from .replay import without_weights_hint

MODELS_DIR_ENV = "MEDSEG_MODELS_DIR"
ALLOW_PATTERNS: tuple[str, ...] = ("*.safetensors", "*.json", "*.txt", "*.jinja", "tokenizer*")
_HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_FULL_HASH_LIMIT = 256 * 1024 * 1024  # hash weight contents below this; fingerprint headers above
REASONER_RECORD = "medseg_reasoner.json"
"""Written by ``medseg-reasoning train`` into the checkpoint it makes: how the model was trained to be asked."""


@dataclass(frozen=True)
class KnownModel:
    """One entry of ``data/models.json``."""

    name: str
    hf_id: str
    family: str
    licence: str
    size_gb: float
    convention: str
    prompt_style: str
    verified: bool
    notes: str = ""


@dataclass(frozen=True)
class LocalModel:
    """A model as ``models list`` shows it: known or merely present in the cache, with its local state."""

    name: str
    hf_id: str
    present: bool
    path: Path | None
    size_bytes: int
    revision: str | None
    known: KnownModel | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "hf_id": self.hf_id,
            "present": self.present,
            "path": str(self.path) if self.path else None,
            "size_bytes": self.size_bytes,
            "revision": self.revision,
            "licence": self.known.licence if self.known else None,
            "convention": self.known.convention if self.known else None,
        }


@lru_cache(maxsize=1)
def known_models() -> tuple[KnownModel, ...]:
    text = (resources.files("MedSegReasoning") / "data" / "models.json").read_text(encoding="utf-8")
    return tuple(KnownModel(**entry) for entry in json.loads(text)["models"])


def find_known(name_or_id: str) -> KnownModel | None:
    """A known model by its short name or its Hugging Face id (case-insensitive)."""
    key = name_or_id.strip().lower()
    for model in known_models():
        if key in (model.name.lower(), model.hf_id.lower()):
            return model
    return None


def default_cache_dir() -> Path:
    env = os.environ.get(MODELS_DIR_ENV)
    if env:
        return Path(env).expanduser()
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _cache(cache_dir: str | Path | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def list_models(cache_dir: str | Path | None = None) -> list[LocalModel]:
    """Every known model (present or not), then any other model repository found in the cache."""
    cached = _scan_cache(_cache(cache_dir))
    rows = []
    for model in known_models():
        repo = cached.pop(model.hf_id.lower(), None)
        rows.append(_row(model.name, model.hf_id, repo, model))
    for repo in cached.values():
        rows.append(_row(repo["repo_id"], repo["repo_id"], repo, None))
    return rows


def _row(name: str, hf_id: str, repo: dict | None, known: KnownModel | None) -> LocalModel:
    if repo is None:
        return LocalModel(name, hf_id, False, None, 0, None, known)
    return LocalModel(name, hf_id, repo["complete"], repo["path"], repo["size"], repo["revision"], known)


def _scan_cache(cache_dir: Path) -> dict[str, dict]:
    """Model repositories of a hub cache: ``{lower-case id: {repo_id, path, size, revision, complete}}``."""
    if not cache_dir.is_dir():
        return {}
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir(cache_dir)
    except CacheNotFound:
        return {}
    found = {}
    for repo in info.repos:
        if repo.repo_type != "model" or not repo.revisions:
            continue
        revision = max(repo.revisions, key=lambda r: r.last_modified)
        complete = any(Path(f.file_path).suffix == ".safetensors" for f in revision.files) and any(
            f.file_name == "config.json" for f in revision.files
        )
        found[repo.repo_id.lower()] = {
            "repo_id": repo.repo_id,
            "path": Path(revision.snapshot_path),
            "size": int(repo.size_on_disk),
            "revision": revision.commit_hash,
            "complete": complete,
        }
    return found


def pull_model(
    name: str,
    cache_dir: str | Path | None = None,
    progress: bool | type = True,
    *,
    endpoint: str | None = None,
    revision: str | None = None,
) -> Path:
    """Download (or finish downloading) a model into the cache and return its snapshot folder.

    ``name`` is a known short name or any Hugging Face id. ``progress``: True for the default bar, False for
    none, or a ``tqdm`` class. ``endpoint`` is a hub mirror (``HF_ENDPOINT`` is honoured as well).
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo_id = _repo_id(name)
    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or None  # read now, not when huggingface_hub was imported
    kwargs: dict[str, Any] = {}
    if progress is False:
        kwargs["tqdm_class"] = _silent_tqdm()
    elif progress is not True:
        kwargs["tqdm_class"] = progress
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=_cache(cache_dir),
            allow_patterns=list(ALLOW_PATTERNS),
            endpoint=endpoint,
            **kwargs,
        )
    except GatedRepoError:
        raise ServiceError(
            f"{repo_id} is gated on Hugging Face: accept its licence on the model page and log in "
            "(`hf auth login`), then pull again."
        ) from None
    except RepositoryNotFoundError:
        raise InputError(
            f"there is no model '{repo_id}' on Hugging Face: check the name (see `models list`)."
        ) from None
    except RevisionNotFoundError:
        raise InputError(f"{repo_id} has no revision '{revision}'.") from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        raise ServiceError(
            f"could not download {repo_id} ({_short(exc)}): check the network connection and run the same "
            "command again; finished files are kept and the download resumes."
        ) from None
    path = Path(folder)
    read_safetensors_names(path, repo_id)
    return path


def _repo_id(name: str) -> str:
    known = find_known(name)
    if known is not None:
        return known.hf_id
    if _HF_ID.match(name.strip()):
        return name.strip()
    names = ", ".join(m.name for m in known_models())
    raise InputError(
        f"unknown model '{name}': use one of {names}, or a Hugging Face id such as Qwen/Qwen2.5-VL-7B-Instruct."
    )


def read_safetensors_names(folder: Path, what: str) -> list[Path]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelError(
            f"{what} has no .safetensors weights (pickled .bin weights are not downloaded or loaded): "
            "choose a model published in safetensors."
        )
    return files


def resolve_hf_spec(
    value: str,
    cache_dir: str | Path | None = None,
    allow_download: bool = False,
    progress: bool | type = True,
) -> tuple[Path, KnownModel | None]:
    """``hf:`` spec value -> local model folder (and the known-model entry, for its convention and prompts).

    An existing folder is used as it is. A known short name or ``owner/name`` id is looked up in the local hub
    cache; when absent it is downloaded only with ``allow_download``, else a ``ModelError`` names the command
    that fetches it. Anything else that looks like a path is a missing folder.
    """
    text = value.strip()
    if not text:
        raise InputError("the reasoner spec 'hf:' needs a model folder or Hugging Face id after the colon.")
    folder = Path(text).expanduser()
    if folder.is_dir():
        known = find_known(folder.name) or _known_from_snapshot(folder)
        return folder, known
    known = find_known(text)
    if known is None and not _HF_ID.match(text):
        read_model_type(folder)  # raises the missing-folder error
    repo_id = known.hf_id if known else text
    cached = _cached_snapshot(repo_id, cache_dir)
    if cached is not None:
        return cached, known
    if allow_download:
        return pull_model(repo_id, cache_dir, progress), known
    pull_name = known.name if known else repo_id
    size = f" ({known.size_gb:g} GB)" if known else ""
    raise ModelError(
        f"the reasoner model {repo_id} is not downloaded (looked in {_cache(cache_dir)}): fetch it{size} with "
        f"`medseg-reasoning models pull {pull_name}`, or pass --allow-download; {without_weights_hint()}."
    )


def _cached_snapshot(repo_id: str, cache_dir: str | Path | None) -> Path | None:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = Path(
            snapshot_download(
                repo_id, cache_dir=_cache(cache_dir), local_files_only=True, allow_patterns=list(ALLOW_PATTERNS)
            )
        )
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        return None
    return folder if (folder / "config.json").is_file() and any(folder.glob("*.safetensors")) else None


def _known_from_snapshot(folder: Path) -> KnownModel | None:
    """``.../models--Owner--Name/snapshots/<commit>`` -> the known model ``Owner/Name``."""
    parts = folder.resolve().parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        return find_known(parts[-3][len("models--") :].replace("--", "/"))
    return None


def weights_revision(folder: Path) -> str:
    """A digest naming the exact weights in ``folder`` when no hub commit does.

    Small checkpoints are hashed whole (``sha256:``). For gigabytes, hashing would cost as much as loading, so
    the ``fingerprint:`` covers each safetensors file's name, size and header (tensor names, shapes, dtypes and
    offsets); it changes whenever the file is replaced, though not for an in-place edit of tensor values.
    """
    files = sorted(folder.glob("*.safetensors"))
    total = sum(f.stat().st_size for f in files)
    digest = hashlib.sha256()
    if total <= _FULL_HASH_LIMIT:
        for f in files:
            digest.update(f.name.encode())
            with f.open("rb") as handle:
                for block in iter(partial(handle.read, 1 << 20), b""):
                    digest.update(block)
        return "sha256:" + digest.hexdigest()
    for f in files:
        digest.update(f.name.encode())
        digest.update(str(f.stat().st_size).encode())
        with f.open("rb") as handle:
            (header_len,) = struct.unpack("<Q", handle.read(8))
            digest.update(handle.read(min(header_len, 100 * 1024 * 1024)))
    return "fingerprint:" + digest.hexdigest()


def _silent_tqdm() -> type:
    from tqdm.auto import tqdm

    class SilentTqdm(tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return SilentTqdm


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 160 else text[:157] + "..."


# The in-process reasoner's model families: config.json's ``model_type`` -> the transformers class that loads it.
MODEL_CLASSES: dict[str, str] = {
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "qwen3_vl": "Qwen3VLForConditionalGeneration",
    "qwen3_vl_moe": "Qwen3VLMoeForConditionalGeneration",
}


def read_model_type(folder: Path, pull_hint: str = "NAME") -> str:
    """``config.json``'s ``model_type``, after checking the folder is a loadable safetensors checkpoint."""
    if not folder.is_dir():
        raise ModelError(
            f"the reasoner model folder {folder} does not exist: download the model with "
            f"`medseg-reasoning models pull {pull_hint}` (see `medseg-reasoning models list` for sizes), or pass "
            f"the folder that holds it; {without_weights_hint()}."
        )
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelError(
            f"{folder} is not a Hugging Face model folder (it has no config.json): pass the folder of a "
            "downloaded checkpoint."
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: JSON errors and text that is not UTF-8
        raise ModelError(f"{config_path} cannot be read ({exc}): download the model again.") from None
    if not isinstance(config, dict):
        raise ModelError(f"{config_path} is not a JSON object, as a model's config.json is: download the model again.")
    model_type = config.get("model_type", "")
    if model_type not in MODEL_CLASSES:
        raise ModelError(
            f"{folder} holds a '{model_type}' model; the in-process reasoner runs {', '.join(MODEL_CLASSES)} "
            "checkpoints: choose one of those, or serve this model behind an OpenAI-compatible server."
        )
    if not any(folder.glob("*.safetensors")):
        raise ModelError(
            f"{folder} has no .safetensors weights (pickled .bin weights are never loaded): download the "
            "safetensors version of the model."
        )
    return model_type


def read_reasoner_record(folder: Path) -> dict[str, Any]:
    """What ``train`` recorded in ``folder`` (``REASONER_RECORD``): ``convention``, ``prompt_style``,
    ``prompt_version`` and, for a LoRA adapter saved unmerged, its ``base`` folder; ``{}`` for any other checkpoint.

    The runtime uses these instead of the architecture's defaults, so a trained model is asked and read exactly as
    it was trained (docs/training.md, "The train command").
    """
    path = folder / REASONER_RECORD
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path} cannot be read ({exc}): train the model again or remove the file.") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path} is not a JSON object: train the model again or remove the file.")
    return {k: data[k] for k in ("convention", "prompt_style", "prompt_version", "base") if data.get(k)}


def adapter_base(folder: Path, record: dict[str, Any]) -> Path | None:
    """The base model folder of a LoRA adapter that ``train`` saved unmerged (``None`` for a whole checkpoint)."""
    if not (folder / "adapter_config.json").is_file():
        return None
    base = Path(str(record.get("base", ""))).expanduser()
    if not record.get("base") or not (base / "config.json").is_file():
        raise ModelError(
            f"{folder} holds a LoRA adapter whose base model {record.get('base') or '(not recorded)'} is not there: "
            "put the base back at that path, or train again with the adapter merged (the default)."
        )
    return base
