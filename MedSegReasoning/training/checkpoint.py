"""The output folder of ``train``: TRL's checkpoints while it runs, the finished model, and the records.

``OUT/checkpoints/checkpoint-N`` are TRL's (model or adapter, optimizer, scheduler, RNG, ``trainer_state.json``);
``--resume`` continues from the last complete one. The finished model is written to a staging folder and moved into
``OUT`` file by file, so a run killed while saving never leaves a folder that loads half a model:

- merged (the default, and ``--full``): a plain checkpoint, the base's architecture with the trained weights;
- ``merge: false`` with LoRA: ``adapter_config.json`` + ``adapter_model.safetensors``, the base's ``config.json``
  and a pointer to the base in ``medseg_reasoner.json`` (``hf.HFReasoner`` loads the base, then the adapter).

Both hold the processor (its chat template included) and ``medseg_reasoner.json`` (``reasoning.models``
``REASONER_RECORD``): the prompt style and version and the coordinate convention the model was trained with, which
``create_reasoner("hf:OUT")`` reads so the runtime renders and parses exactly as in training.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from ..reasoning.models import REASONER_RECORD
from ..wire.errors import InputError

CHECKPOINTS_DIR = "checkpoints"
LOGS_FILE = "logs.jsonl"
CURVES_FILE = "curves.png"
TRAINING_FILE = "training.json"
_STAGING = ".medseg-final-model"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# what a finished run writes into OUT (besides checkpoints/): removed by --force before a new run
_MODEL_FILES = (
    "*.safetensors",
    "*.safetensors.index.json",
    "config.json",
    "generation_config.json",
    "adapter_config.json",
    "chat_template.*",
    "tokenizer*",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "special_tokens_map.json",
    "*processor_config.json",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
    REASONER_RECORD,
    LOGS_FILE,
    CURVES_FILE,
    TRAINING_FILE,
)


def last_checkpoint(out: Path) -> Path | None:
    """The newest complete TRL checkpoint in ``OUT/checkpoints`` (one cut short while saving has no
    ``trainer_state.json``, TRL's last file, and is passed over)."""
    folder = out / CHECKPOINTS_DIR
    if not folder.is_dir():
        return None
    found = []
    for path in folder.iterdir():
        match = _CHECKPOINT.match(path.name)
        if match and path.is_dir() and (path / "trainer_state.json").is_file():
            found.append((int(match.group(1)), path))
    return max(found)[1] if found else None


def checkpoint_step(checkpoint: Path) -> int:
    """The optimizer steps done at ``checkpoint`` (``trainer_state.json``'s ``global_step``)."""
    try:
        return int(json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))["global_step"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"the checkpoint {checkpoint} cannot be read ({exc}): drop --resume to start over.") from None


def prepare_output(out: Path, *, method: str, force: bool, resume: bool) -> Path | None:
    """Check ``--out`` for this run and return the checkpoint to resume from (``None``: a fresh start); nothing is
    changed on disk (``begin_output`` does that, once every other check has passed).

    A fresh run needs a missing or empty folder, or ``--force`` (which will remove the previous run's outputs, and
    only those). ``--resume`` needs a folder with a complete checkpoint of the same method.
    """
    if resume and force:
        raise InputError("--resume continues the run in --out and --force starts it over: give one of them.")
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file: give a folder.")
    if resume:
        checkpoint = last_checkpoint(out)
        if checkpoint is None:
            raise InputError(f"--resume: {out} holds no finished checkpoint to continue; drop --resume to start a run.")
        previous = read_training_record(out)
        if previous is not None and previous.get("method") not in (None, method):
            raise InputError(
                f"--resume: the run in {out} is a '{previous['method']}' run, not '{method}': resume it with the "
                "same method, or start a new one in another folder."
            )
        return checkpoint
    if out.is_dir() and any(out.iterdir()) and not force:
        raise InputError(
            f"the output folder {out} is not empty: choose another --out, add --resume to continue the run in "
            "it, or --force to start over (the previous run's model, checkpoints and logs are removed)."
        )
    return None


def begin_output(out: Path, *, force: bool) -> None:
    """Make ``out`` ready for a fresh run: with ``force``, remove the previous run's outputs first."""
    if force and out.is_dir():
        clear_previous_run(out)
    out.mkdir(parents=True, exist_ok=True)


def clear_previous_run(out: Path) -> None:
    """Remove what a ``train`` run writes into ``out`` (its model, checkpoints, logs); other files are left alone."""
    for name in (CHECKPOINTS_DIR, _STAGING):
        if (out / name).is_dir():
            shutil.rmtree(out / name)
    for pattern in _MODEL_FILES:
        for path in out.glob(pattern):
            if path.is_file() or path.is_symlink():
                path.unlink()


def read_training_record(out: Path) -> dict[str, Any] | None:
    path = out / TRAINING_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write through a temporary file and a rename: a reader sees the old record or the new one, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def save_model(trainer: Any, processor: Any, out: Path, *, merge: bool, record: dict[str, Any], base: Path) -> str:
    """Write the finished model into ``out`` (see the module docstring); returns ``"merged"``, ``"adapter"`` or
    ``"full"``."""
    model = trainer.model
    is_peft = hasattr(model, "peft_config")
    staging = out / _STAGING
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    if is_peft and not merge:
        kind = "adapter"
        model.save_pretrained(staging)
        shutil.copy2(base / "config.json", staging / "config.json")  # the architecture, for ``read_model_type``
        record = {**record, "base": str(base.resolve())}
    else:
        kind = "merged" if is_peft else "full"
        if is_peft:
            model = model.merge_and_unload()
        model.save_pretrained(staging, safe_serialization=True)
        if (base / "generation_config.json").is_file():  # TRL may align its eos with the tokenizer's: keep the base's
            shutil.copy2(base / "generation_config.json", staging / "generation_config.json")
    processor.save_pretrained(staging)
    write_json(staging / REASONER_RECORD, {**record, "weights": kind})
    for path in sorted(staging.iterdir()):
        target = out / path.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        path.replace(target)
    staging.rmdir()
    return kind
