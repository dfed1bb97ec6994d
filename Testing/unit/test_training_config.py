"""The ``train --config`` file: defaults, YAML and JSON, and one sentence for each wrong key or value."""

from __future__ import annotations

import json

import pytest

from MedSegReasoning.training.config import DEFAULT_LORA_TARGETS, TrainConfig, load_config
from MedSegReasoning.training.rewards import RewardWeights
from MedSegReasoning.wire.errors import InputError


def test_no_file_gives_the_documented_defaults():
    config = load_config(None)
    assert config == TrainConfig()
    assert (config.steps, config.batch, config.generations, config.merge, config.beta) == (500, 4, 4, True, 0.04)
    assert config.lora.targets == DEFAULT_LORA_TARGETS
    assert config.rewards == RewardWeights()
    assert config.learning_rate_for(full=False) == 1e-4 and config.learning_rate_for(full=True) == 1e-5


def test_yaml_sets_nested_lora_and_reward_weights(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "steps: 20\nbatch: 2\nlearning_rate: 3e-5\nseed: 7\nprompt_style: segzero\nmerge: false\n"
        "lora: {r: 8, alpha: 16, targets: [q_proj, v_proj]}\n"
        "rewards: {format: 1, box: 1, points: 0, mask: 0, key_slice: 2}\n",
        encoding="utf-8",
    )
    config = load_config(path)
    assert (config.steps, config.batch, config.seed, config.prompt_style, config.merge) == (20, 2, 7, "segzero", False)
    assert config.learning_rate == pytest.approx(3e-5)
    assert (config.lora.r, config.lora.alpha, config.lora.targets) == (8, 16, ("q_proj", "v_proj"))
    assert config.rewards.total({"format": 1.0, "box": 0.5, "key_slice": 0.0}) == pytest.approx(1.5 / 4)


def test_json_reads_the_same_settings_and_round_trips(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(
        json.dumps({"steps": 3, "generations": 2, "rewards": {"format": 0.5, "box": 0.5}}), encoding="utf-8"
    )
    config = load_config(path)
    assert (config.steps, config.generations, config.rewards.format, config.rewards.mask) == (3, 2, 0.5, 0.5)
    assert TrainConfig.from_mapping(config.to_dict()) == config  # what training.json records reads back


def test_an_empty_file_is_the_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("", encoding="utf-8")
    assert load_config(path) == TrainConfig()


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("stepz: 3", "unknown setting(s) stepz"),
        ("steps: 0", "'steps' must be a whole number >= 1"),
        ("steps: 2.5", "'steps' must be a whole number"),
        ("learning_rate: -1", "'learning_rate' must be a number above 0"),
        ("merge: maybe", "'merge' must be true or false"),
        ("bf16: sometimes", "'bf16' must be true, false or null"),
        ("lora: {r: 0}", "'lora.r' must be a whole number >= 1"),
        ("lora: {rank: 4}", "unknown lora setting(s) rank"),
        ("lora: {targets: q_proj}", "lora.targets must be a list"),
        ("rewards: {dice: 1}", "unknown reward component(s) dice"),
        ("rewards: {format: -1}", "reward weight 'format' must be a finite number >= 0"),
        ("prompt_style: chatty", "unknown prompt style 'chatty'"),
        ("convention: inches", "unknown coordinate convention 'inches'"),
        ("generations: 1", "'generations' must be a whole number >= 2"),
        ("- steps", "must be a mapping of settings"),
        ("steps: [1", "is not valid YAML"),
    ],
)
def test_wrong_settings_are_one_sentence(tmp_path, text, words):
    path = tmp_path / "bad.yaml"
    path.write_text(text + "\n", encoding="utf-8")
    with pytest.raises(InputError) as caught:
        load_config(path)
    assert words in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_missing_or_broken_file_is_named(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.json"
    bad.write_text("{steps: 3}", encoding="utf-8")
    with pytest.raises(InputError, match="is not valid JSON"):
        load_config(bad)


def test_grpo_needs_whole_groups_of_generations():
    TrainConfig(batch=4, generations=2).check_for("grpo")
    TrainConfig(batch=3, generations=2).check_for("sft")  # SFT has no groups
    with pytest.raises(InputError, match=r"must be a multiple of generations \(4\)"):
        TrainConfig(batch=2, generations=4).check_for("grpo")
    TrainConfig(batch=2, gradient_accumulation=2, generations=4).check_for("grpo")
