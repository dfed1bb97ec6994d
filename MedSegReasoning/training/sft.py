"""Supervised fine-tuning on the answers ``targets`` writes (TRL's ``SFTTrainer``, LoRA through peft by default).

Each row is the prompt the runtime renders, the images it shows, and the target answer; the loss is on the answer
only (TRL's ``completion_only_loss`` for prompt-completion rows), so the model learns to answer, not to recite
prompts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import TrainConfig
from .runner import lora_config, trainer_arguments


def build_sft_trainer(
    model: Any,
    processor: Any,
    rows: Any,
    config: TrainConfig,
    out: Path,
    *,
    full: bool,
    bf16: bool,
    callbacks: list[Any],
) -> Any:
    """An ``SFTTrainer`` over ``rows``, a ``datasets.Dataset`` of ``samples.sample_row`` with the answer
    (``stream.build_rows``: Arrow files on disk, memory-mapped)."""
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        **trainer_arguments(config, out, full=full, bf16=bf16),
        max_length=None,  # truncating a vision row would cut image tokens; rows are as long as the runtime's calls
        completion_only_loss=True,
    )
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=rows,
        processing_class=processor,
        peft_config=lora_config(config, full),
        callbacks=callbacks,
    )
