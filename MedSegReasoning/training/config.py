"""The training config file (``train --config FILE``, YAML or JSON): every setting has a default, and a wrong key or
value is one sentence that names it.

Why a file and not more options: a run is reproduced from its settings, so ``training.json`` in the output folder
records the whole ``TrainConfig`` and the same file trains the same way again.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..wire.errors import InputError
from .rewards import RewardWeights

DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
"""The attention projections of the language model (the vision tower's are called ``qkv``/``proj``: left frozen)."""

LR_SCHEDULERS = ("linear", "cosine", "cosine_with_min_lr", "constant", "constant_with_warmup")
"""The learning-rate schedules offered (transformers' ``SchedulerType`` names). Left out: those that need an
evaluation set (``reduce_lr_on_plateau``, ``greedy``) or settings of their own this config does not expose."""

VLLM_MODES = ("colocate", "server")
"""TRL's ``vllm_mode``s: vLLM inside the training process on its GPU, or a separate ``trl vllm-serve``."""


@dataclass(frozen=True)
class LoraSettings:
    """LoRA's rank, scale (``alpha``), dropout and the module names it adapts (peft's ``target_modules``)."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    targets: tuple[str, ...] = DEFAULT_LORA_TARGETS

    def __post_init__(self) -> None:
        _check_int("lora.r", self.r, 1)
        _check_int("lora.alpha", self.alpha, 1)
        _check_number("lora.dropout", self.dropout, 0.0, 1.0)
        if not self.targets or not all(isinstance(t, str) and t for t in self.targets):
            raise InputError("lora.targets must be a list of module names such as [q_proj, v_proj].")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run is made of besides the command line (docs/training.md, "The train command").

    ``learning_rate`` ``None``: 1e-4 with LoRA, 1e-5 with ``--full``. ``batch``: samples per step for SFT;
    completions per step for GRPO (a multiple of ``generations``, TRL's rule). ``merge``: a LoRA run saves the base
    with the adapter merged in (a plain checkpoint); ``false`` saves the adapter alone with a pointer to its base.
    ``prompt_style``/``convention`` ``None``: those of the base model, as ``ask`` would use it. ``prompt_version``
    ``None``: the current templates (``v1``); another shipped version (``brief-v1``: segzero's answer format with a
    few-line prompt, for small models and short runs) is recorded in ``medseg_reasoner.json`` and used at run time.
    ``gradient_checkpointing`` ``None``: TRL's default (on in TRL 1.16); ``bf16`` ``None``: on a CUDA GPU with bf16.
    ``lr_scheduler``/``warmup_steps``: transformers' defaults (``linear`` from the peak to 0, no warm-up), written
    out so that ``training.json`` says what ran; ``min_lr_ratio``: the floor of ``cosine_with_min_lr`` as a fraction
    of the peak. ``vllm`` ``None`` (``off``): GRPO generates with transformers; ``colocate``/``server``: with vLLM.
    """

    learning_rate: float | None = None
    steps: int = 500
    batch: int = 4
    gradient_accumulation: int = 1
    seed: int = 0
    save_steps: int = 50
    logging_steps: int = 1
    lora: LoraSettings = field(default_factory=LoraSettings)
    merge: bool = True
    rewards: RewardWeights = field(default_factory=RewardWeights)
    generations: int = 4
    max_completion_length: int = 256
    temperature: float = 1.0
    beta: float = 0.04
    prompt_style: str | None = None
    prompt_version: str | None = None
    convention: str | None = None
    segmenter: str = "litemedsam"
    gradient_checkpointing: bool | None = None
    bf16: bool | None = None
    warmup_steps: int = 0
    lr_scheduler: str = "linear"
    min_lr_ratio: float | None = None
    vllm: str | None = None
    vllm_server_url: str | None = None
    vllm_gpu_memory_utilization: float | None = None

    def __post_init__(self) -> None:
        if self.learning_rate is not None:
            _check_number("learning_rate", self.learning_rate, 0.0, 1.0, open_low=True)
        for name, low in (
            ("steps", 1),
            ("batch", 1),
            ("gradient_accumulation", 1),
            ("save_steps", 1),
            ("logging_steps", 1),
            ("generations", 2),
            ("max_completion_length", 1),
            ("seed", 0),
            ("warmup_steps", 0),
        ):
            _check_int(name, getattr(self, name), low)
        _check_number("temperature", self.temperature, 0.0, 10.0, open_low=True)
        _check_number("beta", self.beta, 0.0, 100.0)
        if not isinstance(self.merge, bool):
            raise InputError(f"'merge' must be true or false, got {self.merge!r}.")
        for name in ("gradient_checkpointing", "bf16"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), bool):
                raise InputError(f"'{name}' must be true, false or null (the default), got {getattr(self, name)!r}.")
        if self.prompt_style is not None:
            from ..reasoning.prompts import prompt_set

            prompt_set(self.prompt_style)
        if self.prompt_version is not None:
            if not isinstance(self.prompt_version, str) or not self.prompt_version.strip():
                raise InputError(
                    f"'prompt_version' must be a template version such as brief-v1, got {self.prompt_version!r}."
                )
        if self.convention is not None:
            from ..reasoning.coords import get_convention

            get_convention(self.convention)
        self._check_schedule()
        self._check_vllm()

    def _check_schedule(self) -> None:
        """The schedule's settings agree with each other: transformers would ignore or reject the rest mid-start."""
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise InputError(f"'lr_scheduler' must be one of {', '.join(LR_SCHEDULERS)}, got {self.lr_scheduler!r}.")
        if self.warmup_steps >= self.steps and self.warmup_steps > 0:
            raise InputError(
                f"'warmup_steps' ({self.warmup_steps}) must be fewer than 'steps' ({self.steps}): the learning rate "
                "would never reach its peak."
            )
        if self.lr_scheduler == "constant" and self.warmup_steps:
            raise InputError(
                "lr_scheduler: constant has no warm-up (transformers ignores warmup_steps with it): use "
                "constant_with_warmup, or leave warmup_steps out."
            )
        if self.lr_scheduler == "cosine_with_min_lr":
            if self.min_lr_ratio is None:
                raise InputError(
                    "lr_scheduler: cosine_with_min_lr needs min_lr_ratio, the floor as a fraction of the learning "
                    "rate (e.g. min_lr_ratio: 0.1), or use cosine (which decays to 0)."
                )
            _check_number("min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)
        elif self.min_lr_ratio is not None:
            raise InputError(
                f"'min_lr_ratio' is the floor of lr_scheduler: cosine_with_min_lr, not of {self.lr_scheduler}: set "
                "lr_scheduler: cosine_with_min_lr, or leave min_lr_ratio out."
            )

    def _check_vllm(self) -> None:
        """``vllm`` off (``null``, ``off``; YAML reads a bare ``off`` as false) or a mode, and its settings only with
        the mode that uses them."""
        if self.vllm is False or (isinstance(self.vllm, str) and self.vllm.strip().lower() == "off"):
            object.__setattr__(self, "vllm", None)  # one spelling for off, so that training.json records null
        if self.vllm is not None and self.vllm not in VLLM_MODES:
            raise InputError(
                f"'vllm' must be off (the default: generate with transformers), colocate or server, got {self.vllm!r}."
            )
        if self.vllm_server_url is not None:
            if self.vllm != "server":
                raise InputError("'vllm_server_url' is for vllm: server: set vllm: server, or leave it out.")
            url = self.vllm_server_url
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise InputError(f"'vllm_server_url' must be an http(s) URL such as http://host:8000, got {url!r}.")
        if self.vllm_gpu_memory_utilization is not None:
            if self.vllm != "colocate":
                raise InputError(
                    "'vllm_gpu_memory_utilization' is for vllm: colocate (a server sets its own with "
                    "--gpu_memory_utilization): set vllm: colocate, or leave it out."
                )
            _check_number("vllm_gpu_memory_utilization", self.vllm_gpu_memory_utilization, 0.0, 1.0, open_low=True)

    def learning_rate_for(self, full: bool) -> float:
        return self.learning_rate if self.learning_rate is not None else (1e-5 if full else 1e-4)

    def check_for(self, method: str) -> None:
        """What only GRPO needs: the completions of one step must fill whole groups of ``generations``; vLLM
        generates completions, which SFT has none of."""
        if method != "grpo" and self.vllm is not None:
            raise InputError(
                f"vllm: {self.vllm} is for train grpo (vLLM generates GRPO's completions; {method} generates none): "
                "leave vllm out of the config for this run."
            )
        if method == "grpo" and (self.batch * self.gradient_accumulation) % self.generations:
            raise InputError(
                f"batch x gradient_accumulation ({self.batch} x {self.gradient_accumulation}) must be a multiple of "
                f"generations ({self.generations}) for GRPO: each prompt's completions are compared as one group."
            )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["lora"]["targets"] = list(self.lora.targets)
        return data

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str = "the config") -> TrainConfig:
        if not isinstance(data, Mapping):
            raise InputError(f"{where} must be a mapping of settings (key: value), got {type(data).__name__}.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(map(str, data)) - known)
        if unknown:
            raise InputError(f"{where}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}.")
        values: dict[str, Any] = dict(data)
        if "lora" in values:
            values["lora"] = _lora(values["lora"], where)
        if "rewards" in values:
            if not isinstance(values["rewards"], Mapping):
                raise InputError(f"{where}: 'rewards' must map components to weights, e.g. {{format: 0.2, box: 0.8}}.")
            values["rewards"] = RewardWeights.from_mapping(values["rewards"])
        for name in ("learning_rate", "temperature", "beta", "min_lr_ratio", "vllm_gpu_memory_utilization"):
            values[name] = _as_float(values[name]) if name in values else None
            if values[name] is None:
                del values[name]
        return cls(**values)

    def with_overrides(self, **changes: Any) -> TrainConfig:
        return replace(self, **changes)


def _lora(value: Any, where: str) -> LoraSettings:
    if not isinstance(value, Mapping):
        raise InputError(f"{where}: 'lora' must be a mapping with r, alpha, dropout and targets.")
    known = {f.name for f in fields(LoraSettings)}
    unknown = sorted(set(map(str, value)) - known)
    if unknown:
        raise InputError(f"{where}: unknown lora setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}.")
    values = dict(value)
    if "targets" in values:
        targets = values["targets"]
        if isinstance(targets, str) or not isinstance(targets, list | tuple):
            raise InputError(f"{where}: lora.targets must be a list of module names such as [q_proj, v_proj].")
        values["targets"] = tuple(targets)
    if "dropout" in values:
        values["dropout"] = _as_float(values["dropout"])
    return LoraSettings(**values)


def _as_float(value: Any) -> Any:
    """Whole numbers and numeric text as floats: YAML 1.1 (PyYAML) reads ``3e-5`` as a string, not a number."""
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InputError(f"'{name}' must be a whole number >= {low}, got {value!r}.")


def _check_number(name: str, value: Any, low: float, high: float, open_low: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value > high or value < low or (open_low and value == low):
        bound = f"above {low}" if open_low else f"at least {low}"
        raise InputError(f"'{name}' must be a number {bound} and at most {high}, got {value!r}.")


def load_config(path: str | Path | None) -> TrainConfig:
    """The config in ``path`` (``.json``: JSON; anything else: YAML, of which JSON is a subset); ``None``: defaults."""
    if path is None:
        return TrainConfig()
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"the config file {path} does not exist: give a YAML or JSON file (docs/training.md).")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"the config file {path} cannot be read ({exc}).") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"the config file {path} is not valid JSON ({exc}).") from None
    else:
        import yaml  # type: ignore[import-untyped, unused-ignore]  # PyYAML ships no types; huggingface_hub needs it

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise InputError(f"the config file {path} is not valid YAML ({' '.join(str(exc).split())}).") from None
    if data is None:
        data = {}
    return TrainConfig.from_mapping(data, f"the config file {path}")
