"""What SFT and GRPO share: the training packages, the base model, the trainer settings, and running a trainer with
its failures turned into one sentence and an exit code (``docs/training.md``, "The train command").
"""

from __future__ import annotations

import errno
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..wire.errors import InputError, ModelError
from .config import TrainConfig

TRAIN_EXTRA_HINT = "pip install 'medseg-reasoning[train]'"
VLLM_HINT = "pip install 'trl[vllm]': vLLM 0.22 to 0.31 for TRL 1.16"
LESS_MEMORY_HINT = (
    "lower batch (and raise gradient_accumulation to keep the effective batch), for GRPO lower generations and "
    "max_completion_length, keep LoRA (leave out --full), or set gradient_checkpointing: true in the config"
)


def require_training_packages() -> None:
    """TRL and peft are the ``train`` extra: without them, say which extra to install (exit 3)."""
    missing = []
    for name in ("trl", "peft"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ModelError(
            f"training needs {' and '.join(missing)}, which are not installed: {TRAIN_EXTRA_HINT} (or the 'all' extra)."
        )


def require_vllm(config: TrainConfig) -> None:
    """``vllm: colocate|server`` needs the vllm package and a CUDA GPU here (TRL's server mode too: the trainer
    sends the weights to the server over NCCL). Checked before anything loads: without them TRL would fail only after
    the model was loaded."""
    if config.vllm is None:
        return
    missing = [what for what, ok in (("the vllm package", _vllm_installed()), ("a CUDA GPU", _has_cuda())) if not ok]
    if missing:
        raise ModelError(
            f"vllm: {config.vllm} needs {' and '.join(missing)}, which this machine lacks: install vllm "
            f"({VLLM_HINT}) on a machine with a CUDA GPU, or set vllm: off in the config to generate with "
            "transformers."
        )


def _vllm_installed() -> bool:
    """Whether ``import vllm`` can find the package (importing it here would cost seconds; TRL imports it later)."""
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def _has_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def resolve_base(spec: str) -> tuple[Path, Any, str]:
    """``--base hf:<folder or id>`` -> (local folder, known-model entry or None, ``model_type``).

    The base must be a local Qwen-VL family checkpoint (downloaded with ``models pull``): the same check the
    runtime makes, worded for training.
    """
    from ..reasoning.models import MODEL_CLASSES, read_model_type, resolve_hf_spec

    scheme, sep, rest = spec.strip().partition(":")
    if not sep or scheme.lower() != "hf" or not rest.strip():
        raise InputError(
            f"--base '{spec}' must be hf:<model folder or Hugging Face id> (a local Qwen-VL checkpoint): training "
            "needs the weights, which openai: and replay: reasoners do not have."
        )
    folder, known = resolve_hf_spec(rest.strip())
    config_path = folder / "config.json"
    model_type = None
    if config_path.is_file():
        try:
            model_type = json.loads(config_path.read_text(encoding="utf-8")).get("model_type")
        except (OSError, ValueError, AttributeError):
            model_type = None
    if model_type is not None and model_type not in MODEL_CLASSES:
        raise ModelError(
            f"--base {folder} holds a '{model_type}' model; train fine-tunes Qwen-VL family checkpoints "
            f"({', '.join(MODEL_CLASSES)}): choose one of those."
        )
    return folder, known, read_model_type(folder)


def load_processor(folder: Path) -> Any:
    import transformers

    try:
        return transformers.AutoProcessor.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"the processor of {folder} could not be loaded ({exc}): download the model again.") from None


def use_bf16(config: TrainConfig) -> bool:
    """``bf16: null`` (auto): on a CUDA GPU that supports it; never on the CPU."""
    import torch

    if config.bf16 is not None:
        if config.bf16 and not (torch.cuda.is_available() and torch.cuda.is_bf16_supported()):
            raise InputError("bf16: true needs a CUDA GPU with bfloat16 support: set bf16: false (or leave it out).")
        return config.bf16
    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def load_model(folder: Path, model_type: str, bf16: bool) -> Any:
    """The base model, in bfloat16 when training in bf16 (float32 otherwise), safetensors only."""
    import torch
    import transformers

    from ..reasoning.models import MODEL_CLASSES

    model_class = getattr(transformers, MODEL_CLASSES[model_type])
    try:
        return model_class.from_pretrained(
            folder, dtype=torch.bfloat16 if bf16 else torch.float32, use_safetensors=True, local_files_only=True
        )
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelError(f"the base model in {folder} could not be loaded ({exc}): download it again.") from None


def lora_config(config: TrainConfig, full: bool) -> Any:
    """peft's ``LoraConfig`` from the config's ``lora`` section; ``None`` for ``--full``."""
    if full:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora.r,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        target_modules=list(config.lora.targets),
        task_type="CAUSAL_LM",
    )


def trainer_arguments(config: TrainConfig, out: Path, *, full: bool, bf16: bool) -> dict[str, Any]:
    """The settings SFTConfig and GRPOConfig share (TRL's ``TrainingArguments``)."""
    import torch

    from .checkpoint import CHECKPOINTS_DIR

    return dict(
        output_dir=str(out / CHECKPOINTS_DIR),
        max_steps=config.steps,
        per_device_train_batch_size=config.batch,
        gradient_accumulation_steps=config.gradient_accumulation,
        learning_rate=config.learning_rate_for(full),
        seed=config.seed,
        data_seed=config.seed,
        logging_steps=config.logging_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=2,
        report_to=[],
        bf16=bf16,
        **schedule_arguments(config),
        **_checkpointing(config.gradient_checkpointing),
        use_cpu=not (torch.cuda.is_available() or _has_mps()),
        dataloader_num_workers=0,
    )


def schedule_arguments(config: TrainConfig) -> dict[str, Any]:
    """The learning-rate schedule under transformers' names: ``warmup_steps`` (whole steps: the config allows no
    fraction, which transformers would read as a share of the run), ``lr_scheduler_type`` and, for
    ``cosine_with_min_lr``, the floor as ``lr_scheduler_kwargs={"min_lr_rate": ...}``."""
    arguments: dict[str, Any] = {"warmup_steps": config.warmup_steps, "lr_scheduler_type": config.lr_scheduler}
    if config.min_lr_ratio is not None:
        arguments["lr_scheduler_kwargs"] = {"min_lr_rate": config.min_lr_ratio}
    return arguments


def _checkpointing(on: bool | None) -> dict[str, bool]:
    """Gradient (activation) checkpointing under the name this transformers uses (``activation_checkpointing``
    from 5.x; ``gradient_checkpointing`` before); nothing for ``None`` (TRL's default)."""
    from dataclasses import fields

    from transformers import TrainingArguments

    if on is None:
        return {}
    names = {f.name for f in fields(TrainingArguments)}
    return {"activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing": on}


def _has_mps() -> bool:
    import torch

    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def run_trainer(trainer: Any, resume_from: Path | None) -> None:
    """``trainer.train()``, from ``resume_from`` when given; memory and disk failures become one sentence (exit 3)."""
    with resource_errors(lambda: trainer.state.global_step):
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from is not None else None)


@contextmanager
def resource_errors(step: Callable[[], int | None] = lambda: None) -> Iterator[None]:
    """Out of memory (GPU or main) and a full disk as ``ModelError`` (exit 3) with what to do; ``step`` says how far
    training got. Wraps loading the model onto the device, training and saving."""
    import torch

    try:
        yield
    except (torch.OutOfMemoryError, MemoryError) as exc:
        where = "GPU" if isinstance(exc, torch.OutOfMemoryError) else "main"
        at = step()
        when = f" at step {at}" if at is not None else ""
        raise ModelError(
            f"training ran out of {where} memory{when}: {LESS_MEMORY_HINT}; finished checkpoints are kept (add "
            "--resume to continue from the last one)."
        ) from None
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        raise ModelError(
            f"the disk is full ({exc.filename or 'while writing'}): free space (or raise save_steps) and run the same "
            "command with --resume to continue from the last complete checkpoint."
        ) from None
