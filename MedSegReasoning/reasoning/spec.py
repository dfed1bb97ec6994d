"""``--reasoner SPEC``: one string names the backend and the model.

- ``hf:<folder>`` or ``hf:<Hugging Face id or known name>``: in-process transformers. An id is looked up in the
  local hub cache only; it is downloaded only with ``allow_download``.
- ``openai:<base-url>#<model>``: an OpenAI-compatible server. Split at the FIRST ``#``, so model names with
  colons or further ``#`` (``qwen2.5vl:7b``) pass through whole. A non-loopback URL needs ``allow_remote``.
- ``replay:<file>``: recorded answers (JSON lines).

Adapters are imported only when chosen: ``openai:`` and ``replay:`` never import torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..wire.errors import InputError
from .base import Reasoner

SPEC_FORMS = (
    "hf:<model folder or Hugging Face id>",
    "openai:<base-url>#<model>",
    "replay:<answers.jsonl>",
)
DEFAULT_REASONER_SPEC = "hf:Qwen2.5-VL-7B-Instruct"

_HF_OPTIONS = {"do_sample", "temperature", "top_p", "seed", "generate_kwargs", "revision"}
_OPENAI_OPTIONS = {
    "api_key",
    "temperature",
    "seed",
    "stream",
    "structured_output",
    "text_only",
    "timeout_s",
    "connect_timeout_s",
    "retries",
    "backoff_s",
    "transport",
}


def create_reasoner(
    spec: str,
    *,
    allow_remote: bool = False,
    allow_download: bool = False,
    device: str | None = None,
    dtype: str = "auto",
    cache_dir: str | Path | None = None,
    convention: str | None = None,
    prompt_style: str | None = None,
    max_new_tokens: int | None = None,
    progress: bool | type = True,
    **options: Any,
) -> Reasoner:
    """The reasoner ``spec`` names (see the module docstring); ``InputError`` for an unknown form.

    ``convention`` and ``prompt_style`` override what the model's architecture or its entry in
    ``data/models.json`` implies. ``options`` are backend-specific (sampling, timeouts, retries).
    """
    check_spec_form(spec)
    scheme, _, rest = spec.strip().partition(":")
    scheme = scheme.lower()
    if scheme == "hf":
        return _hf(
            rest, allow_download, device, dtype, cache_dir, convention, prompt_style, max_new_tokens, progress, options
        )
    if scheme == "openai":
        return _openai(rest, allow_remote, convention, prompt_style, max_new_tokens, options)
    _reject_options(options, set(), "replay")
    from .replay import ReplayReasoner

    return ReplayReasoner(rest.strip(), convention=convention, prompt_style=prompt_style or "contract")


def check_spec_form(spec: str) -> None:
    """What ``create_reasoner`` refuses before loading anything (an unknown form, ``replay:`` without a file), for
    front ends to call before they start other models: a typo must not wait for, or behind, a model load."""
    scheme, sep, rest = spec.strip().partition(":")
    if not sep or scheme.lower() not in ("hf", "openai", "replay"):
        raise InputError(f"unknown reasoner '{spec}': use one of {', '.join(SPEC_FORMS)}.")
    if scheme.lower() == "replay" and not rest.strip():
        raise InputError("the reasoner spec 'replay:' needs a file after the colon, e.g. replay:answers.jsonl.")


def _hf(rest, allow_download, device, dtype, cache_dir, convention, prompt_style, max_new_tokens, progress, options):
    from .hf import DEFAULT_MAX_NEW_TOKENS, HFReasoner
    from .models import read_reasoner_record, resolve_hf_spec

    _reject_options(options, _HF_OPTIONS, "hf")
    folder, known = resolve_hf_spec(rest, cache_dir, allow_download, progress)
    trained = read_reasoner_record(folder)  # a model made by `train`: asked as it was trained
    return HFReasoner(
        folder,
        device=device,
        dtype=dtype,
        max_new_tokens=max_new_tokens or DEFAULT_MAX_NEW_TOKENS,
        convention=convention or trained.get("convention") or (known.convention if known else None),
        prompt_style=prompt_style or trained.get("prompt_style") or (known.prompt_style if known else "contract"),
        prompt_version=None if prompt_style else trained.get("prompt_version"),
        name=known.name if known else folder.name,
        pull_hint=known.name if known else "NAME",
        **options,
    )


def _openai(rest, allow_remote, convention, prompt_style, max_new_tokens, options):
    from .models import find_known
    from .openai_compat import OpenAIReasoner

    _reject_options(options, _OPENAI_OPTIONS, "openai")
    base_url, sep, model = rest.partition("#")
    if not sep or not base_url.strip() or not model.strip():
        raise InputError(
            f"the reasoner spec 'openai:{rest}' needs a base URL and a model name separated by '#', "
            "e.g. openai:http://127.0.0.1:11434/v1#qwen2.5vl:7b."
        )
    known = find_known(model)
    return OpenAIReasoner(
        base_url,
        model,
        allow_remote=allow_remote,
        convention=convention or (known.convention if known else None),
        prompt_style=prompt_style or (known.prompt_style if known else "contract"),
        max_tokens=max_new_tokens or 1024,
        **options,
    )


def _reject_options(options: dict[str, Any], allowed: set[str], backend: str) -> None:
    unknown = sorted(set(options) - allowed)
    if unknown:
        valid = ", ".join(sorted(allowed)) or "none"
        raise InputError(f"option(s) {', '.join(unknown)} do not apply to {backend}: reasoners (valid: {valid}).")


@dataclass(frozen=True)
class ReasonerOptions:
    """How ``--reasoner`` is created and asked, for every front end that creates one (``ask``, ``eval``)."""

    spec: str
    allow_remote: bool = False
    allow_download: bool = False
    device: str | None = None
    max_new_tokens: int | None = None
    stream: bool = True
    current_view: Any = None  # reasoning.views.CurrentView: what the user looks at (``--view``)
    timeout_s: float | None = None  # openai: the total deadline of one answer (``--reasoner-timeout``)

    def create(self) -> Reasoner:
        extra: dict[str, Any] = {}
        if self.timeout_s is not None:
            if not self.spec.strip().lower().startswith("openai:"):
                raise InputError(
                    "--reasoner-timeout applies to openai: reasoners (a server): leave it out for this one."
                )
            extra["timeout_s"] = self.timeout_s
        return create_reasoner(
            self.spec,
            allow_remote=self.allow_remote,
            allow_download=self.allow_download,
            device=self.device,
            max_new_tokens=self.max_new_tokens,
            **extra,
        )
