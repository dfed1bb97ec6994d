"""GRPO with this project's rewards (TRL's ``GRPOTrainer``, LoRA through peft by default).

Each prompt is answered ``generations`` times by the model being trained; ``reward_funcs.RewardAssembly`` scores
every completion as the runtime would read it, and TRL moves the model towards the completions that beat their
group's mean, held near the base by a KL penalty of weight ``beta`` (logged as ``kl``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..reasoning.coords import Convention
from .config import TrainConfig
from .reward_funcs import MaskRewardFn, RewardAssembly
from .runner import lora_config, trainer_arguments
from .samples import TrainSample

log = logging.getLogger(__name__)


def build_mask_reward(
    config: TrainConfig, samples: Mapping[str, TrainSample], convention: Convention
) -> MaskRewardFn | None:
    """The mask-Dice reward (``training.mask_reward.MaskReward``; ``None`` when its weight is 0) over the samples
    that hold a volume and its reference mask, or name where to read them (``stream.reward_samples``: read when
    scored, a few at a time), with ``config.segmenter`` and the runtime's embedding store (a sample
    encoded in an earlier run, or by ``ask``, is read from disk). Each reads its answers with the sample's dialogue
    context, so an answer naming an earlier round's entity (``ref``) is read as ``ask`` reads it."""
    if config.rewards.mask <= 0:
        return None
    from ..segmentation.factory import create_segmenter, default_store_root
    from .mask_reward import MaskReward
    from .stream import reward_samples

    segmenter = create_segmenter(config.segmenter, embedding_store=default_store_root())
    return MaskReward(segmenter, reward_samples(samples, convention))


def vision_token_ids(model: Any) -> list[int]:
    """The image/video placeholder and vision start/end tokens: an answer never contains them, and one sampled
    would make the next forward pass look for an image that is not there (TRL suppresses the image token alone)."""
    config = getattr(model, "config", None)
    names = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
    return sorted({int(v) for v in (getattr(config, n, None) for n in names) if isinstance(v, int)})


def grpo_arguments(config: TrainConfig, model: Any) -> dict[str, Any]:
    """What ``GRPOConfig`` takes beyond ``runner.trainer_arguments`` and the reward weights: the group, sampling, KL
    weight and the generation backend.

    The vision tokens are kept out of the completions under each backend's name: transformers' ``suppress_tokens``,
    or, with vLLM (whose ``SamplingParams`` has no such field), a ``logit_bias`` of -100, the lowest vLLM allows.
    """
    banned = vision_token_ids(model)
    arguments: dict[str, Any] = dict(
        num_generations=config.generations,
        max_completion_length=config.max_completion_length,
        temperature=config.temperature,
        beta=config.beta,
    )
    if config.vllm is None:
        arguments["generation_kwargs"] = {"suppress_tokens": banned}
        return arguments
    arguments.update(
        use_vllm=True, vllm_mode=config.vllm, generation_kwargs={"logit_bias": dict.fromkeys(banned, -100.0)}
    )
    if config.vllm_server_url is not None:
        arguments["vllm_server_base_url"] = config.vllm_server_url
    if config.vllm_gpu_memory_utilization is not None:
        arguments["vllm_gpu_memory_utilization"] = config.vllm_gpu_memory_utilization
    return arguments


def build_grpo_trainer(
    model: Any,
    processor: Any,
    rows: Any,
    rewards: RewardAssembly,
    config: TrainConfig,
    out: Path,
    *,
    full: bool,
    bf16: bool,
    callbacks: list[Any],
) -> Any:
    """A ``GRPOTrainer`` over ``rows``, a ``datasets.Dataset`` of ``samples.sample_row`` without the answer
    (``stream.build_rows``)."""
    from trl import GRPOConfig, GRPOTrainer

    # TRL left-pads the prompts itself; the processor's own padding (its mm_token_type_ids) must agree, or with
    # prompts of different lengths in one batch the image positions are misread (TRL 1.16, Qwen2.5-VL).
    tokenizer = getattr(processor, "tokenizer", processor)
    tokenizer.padding_side = "left"
    funcs, weights = rewards.functions()
    args = GRPOConfig(
        **trainer_arguments(config, out, full=full, bf16=bf16), **grpo_arguments(config, model), reward_weights=weights
    )
    return GRPOTrainer(
        model=model,
        reward_funcs=funcs,
        args=args,
        train_dataset=rows,
        processing_class=processor,
        peft_config=lora_config(config, full),
        callbacks=callbacks,
    )
