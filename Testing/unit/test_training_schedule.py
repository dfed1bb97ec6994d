"""The learning-rate schedule (``warmup_steps``, ``lr_scheduler``, ``min_lr_ratio``) and GRPO's vLLM generation
(``vllm``, ``vllm_server_url``, ``vllm_gpu_memory_utilization``): the config's checks, what reaches TRL's configs,
and ``train`` refusing vLLM it cannot have before anything is written or loaded.

No model and no vLLM here: the plumbing is checked against TRL's own ``GRPOConfig``/``SFTConfig`` and transformers'
scheduler; that vLLM generates well is for a CUDA machine with vllm installed (docs/training.md, "On a GPU").
"""

from __future__ import annotations

import json
from dataclasses import fields
from types import SimpleNamespace

import pytest

from MedSegReasoning.training.config import LR_SCHEDULERS, TrainConfig, load_config
from MedSegReasoning.training.grpo import grpo_arguments
from MedSegReasoning.training.runner import schedule_arguments, trainer_arguments
from MedSegReasoning.wire.errors import InputError

trl = pytest.importorskip("trl", reason="the settings are checked against TRL's configs (the train extra)")

VISION_IDS = {"image_token_id": 151655, "video_token_id": 151656, "vision_start_token_id": 151652}
MODEL = SimpleNamespace(config=SimpleNamespace(**VISION_IDS, vision_end_token_id=151653))
"""What ``grpo_arguments`` reads of a model: its config's vision token ids (no weights needed)."""


def test_the_defaults_are_transformers_own_and_are_recorded():
    from transformers import TrainingArguments

    config = TrainConfig()
    assert (config.warmup_steps, config.lr_scheduler, config.min_lr_ratio, config.vllm) == (0, "linear", None, None)
    defaults = {f.name: f.default for f in fields(TrainingArguments)}
    assert schedule_arguments(config) == {
        "warmup_steps": defaults["warmup_steps"],
        "lr_scheduler_type": defaults["lr_scheduler_type"],
    }
    recorded = config.to_dict()
    for key in ("warmup_steps", "lr_scheduler", "min_lr_ratio", "vllm", "vllm_server_url"):
        assert key in recorded
    assert TrainConfig.from_mapping({}) == config  # a training.json written before these keys resumes the same way


def test_yaml_schedule_reaches_both_trainers_and_round_trips(tmp_path):
    path = tmp_path / "run.yaml"
    # PyYAML reads 1e-1 as text (YAML 1.1): it must still be a number
    path.write_text("steps: 100\nwarmup_steps: 10\nlr_scheduler: cosine_with_min_lr\nmin_lr_ratio: 1e-1\n", "utf-8")
    config = load_config(path)
    assert (config.warmup_steps, config.lr_scheduler, config.min_lr_ratio) == (10, "cosine_with_min_lr", 0.1)
    assert TrainConfig.from_mapping(json.loads(json.dumps(config.to_dict()))) == config  # training.json -> --resume

    arguments = trainer_arguments(config, tmp_path, full=False, bf16=False)
    assert arguments["warmup_steps"] == 10
    assert arguments["lr_scheduler_type"] == "cosine_with_min_lr"
    assert arguments["lr_scheduler_kwargs"] == {"min_lr_rate": 0.1}
    for trl_config in (trl.SFTConfig, trl.GRPOConfig):
        names = {f.name for f in fields(trl_config)}
        assert {"warmup_steps", "lr_scheduler_type", "lr_scheduler_kwargs"} <= names


def _learning_rates(config: TrainConfig, tmp_path, peak=1e-3) -> list[float]:
    """The learning rate of each step as the Trainer would schedule it: TRL's own SFTConfig from our arguments, then
    transformers' ``get_scheduler`` with what the Trainer passes it."""
    import torch
    from transformers import get_scheduler

    args = trl.SFTConfig(**{**trainer_arguments(config, tmp_path, full=False, bf16=False), "learning_rate": peak})
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.learning_rate)
    scheduler = get_scheduler(
        args.lr_scheduler_type,
        optimizer,
        num_warmup_steps=args.get_warmup_steps(config.steps),
        num_training_steps=config.steps,
        scheduler_specific_kwargs=args.lr_scheduler_kwargs,
    )
    rates = []
    for _ in range(config.steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates + [optimizer.param_groups[0]["lr"]]


def test_warm_up_then_cosine_to_the_floor(tmp_path):
    config = TrainConfig(steps=20, warmup_steps=5, lr_scheduler="cosine_with_min_lr", min_lr_ratio=0.1)
    rates = _learning_rates(config, tmp_path)
    assert rates[0] == 0.0 and rates[1] == pytest.approx(2e-4)  # linear warm-up from 0
    assert rates[5] == pytest.approx(1e-3)  # the peak after 5 steps
    assert rates[-1] == pytest.approx(1e-4)  # decays to min_lr_ratio x the peak, not to 0
    assert all(a >= b for a, b in zip(rates[5:], rates[6:], strict=False))


@pytest.mark.parametrize(
    ("scheduler", "warmup", "first", "last"),
    [
        ("linear", 0, 1e-3, 0.0),
        ("cosine", 4, 0.0, 0.0),
        ("constant", 0, 1e-3, 1e-3),
        ("constant_with_warmup", 4, 0.0, 1e-3),
    ],
)
def test_each_offered_schedule_runs_as_named(tmp_path, scheduler, warmup, first, last):
    rates = _learning_rates(TrainConfig(steps=12, warmup_steps=warmup, lr_scheduler=scheduler), tmp_path)
    assert rates[0] == pytest.approx(first) and rates[-1] == pytest.approx(last, abs=1e-12)
    assert max(rates) == pytest.approx(1e-3)


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"lr_scheduler": "cosine_annealing"}, "'lr_scheduler' must be one of " + ", ".join(LR_SCHEDULERS)),
        ({"lr_scheduler": "reduce_lr_on_plateau"}, "must be one of linear, cosine, cosine_with_min_lr"),
        ({"lr_scheduler": "cosine_with_min_lr"}, "cosine_with_min_lr needs min_lr_ratio"),
        ({"lr_scheduler": "cosine", "min_lr_ratio": 0.1}, "'min_lr_ratio' is the floor of lr_scheduler"),
        ({"min_lr_ratio": 0.1}, "not of linear"),
        ({"lr_scheduler": "cosine_with_min_lr", "min_lr_ratio": 1.5}, "'min_lr_ratio' must be a number"),
        ({"lr_scheduler": "cosine_with_min_lr", "min_lr_ratio": "a tenth"}, "'min_lr_ratio' must be a number"),
        ({"warmup_steps": -1}, "'warmup_steps' must be a whole number >= 0"),
        ({"warmup_steps": 0.1}, "'warmup_steps' must be a whole number >= 0"),
        ({"warmup_steps": 500}, "'warmup_steps' (500) must be fewer than 'steps' (500)"),
        ({"warmup_steps": 10, "lr_scheduler": "constant"}, "use constant_with_warmup"),
        ({"vllm": "fast"}, "'vllm' must be off (the default: generate with transformers), colocate or server"),
        ({"vllm": True}, "'vllm' must be off"),
        ({"vllm_server_url": "http://h:8000"}, "'vllm_server_url' is for vllm: server"),
        ({"vllm": "server", "vllm_server_url": "h:8000"}, "must be an http(s) URL"),
        ({"vllm": "server", "vllm_gpu_memory_utilization": 0.5}, "'vllm_gpu_memory_utilization' is for vllm: colocate"),
        (
            {"vllm": "colocate", "vllm_gpu_memory_utilization": 0},
            "'vllm_gpu_memory_utilization' must be a number above",
        ),
    ],
)
def test_a_wrong_setting_is_one_sentence_naming_it(tmp_path, settings, words):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(settings), encoding="utf-8")
    with pytest.raises(InputError) as caught:
        load_config(path)
    assert words in str(caught.value)
    assert str(caught.value).endswith(".") and "\n" not in str(caught.value)


@pytest.mark.parametrize("text", ["vllm: off", "vllm: 'off'", "vllm: null", ""])
def test_vllm_off_in_every_spelling_is_the_default(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")  # a bare off is false in YAML 1.1
    config = load_config(path)
    assert config.vllm is None and config == TrainConfig() and config.to_dict()["vllm"] is None


def test_vllm_is_for_grpo_only():
    config = TrainConfig(vllm="colocate")
    config.check_for("grpo")
    with pytest.raises(InputError, match="vllm: colocate is for train grpo"):
        config.check_for("sft")


def test_without_vllm_grpo_generates_with_transformers_and_suppresses_the_vision_tokens():
    arguments = grpo_arguments(TrainConfig(), MODEL)
    assert "use_vllm" not in arguments and "vllm_mode" not in arguments
    assert arguments["generation_kwargs"] == {"suppress_tokens": [151652, 151653, 151655, 151656]}


def test_colocate_turns_trl_vllm_on_with_its_memory_share_and_bans_the_vision_tokens(tmp_path):
    config = TrainConfig(vllm="colocate", vllm_gpu_memory_utilization=0.45)
    arguments = grpo_arguments(config, MODEL)
    assert (arguments["use_vllm"], arguments["vllm_mode"]) == (True, "colocate")
    assert arguments["vllm_gpu_memory_utilization"] == 0.45
    # vLLM's SamplingParams has no suppress_tokens: the same tokens through its logit_bias
    assert arguments["generation_kwargs"] == {
        "logit_bias": {151652: -100.0, 151653: -100.0, 151655: -100.0, 151656: -100.0}
    }
    assert "vllm_server_base_url" not in arguments
    args = trl.GRPOConfig(**trainer_arguments(config, tmp_path, full=False, bf16=False), **arguments)
    assert (args.use_vllm, args.vllm_mode, args.vllm_gpu_memory_utilization) == (True, "colocate", 0.45)


def test_server_mode_points_trl_at_the_server(tmp_path):
    config = TrainConfig(vllm="server", vllm_server_url="http://gpu-2:8000")
    arguments = grpo_arguments(config, MODEL)
    assert (arguments["use_vllm"], arguments["vllm_mode"]) == (True, "server")
    assert arguments["vllm_server_base_url"] == "http://gpu-2:8000"
    assert "vllm_gpu_memory_utilization" not in arguments
    args = trl.GRPOConfig(**trainer_arguments(config, tmp_path, full=False, bf16=False), **arguments)
    assert (args.use_vllm, args.vllm_mode, args.vllm_server_base_url) == (True, "server", "http://gpu-2:8000")


@pytest.fixture
def loads(monkeypatch) -> list[str]:
    """Records every step of ``train`` that reads the base or loads a model: a refusal must come before all of them."""
    from MedSegReasoning.training import runner

    calls: list[str] = []

    def recording(name):
        def step(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} ran before the vLLM check")

        return step

    for name in ("resolve_base", "load_processor", "load_model"):
        monkeypatch.setattr(runner, name, recording(name))
    return calls


def _train(method, tmp_path, **settings):
    from MedSegReasoning.cli import main

    config = tmp_path / "c.json"
    config.write_text(json.dumps(settings), encoding="utf-8")
    out = tmp_path / "out"
    # neither the dataset nor the base exists: the refusal must come first
    code = main(
        [
            "train",
            method,
            str(tmp_path / "no-data"),
            "--base",
            "hf:/no/base",
            "--out",
            str(out),
            "--config",
            str(config),
        ]
    )
    return code, out


@pytest.mark.parametrize(
    ("vllm_installed", "cuda", "missing"),
    [(False, False, "the vllm package and a CUDA GPU"), (False, True, "the vllm package"), (True, False, "a CUDA GPU")],
)
def test_train_refuses_vllm_it_cannot_have_before_anything_loads(
    tmp_path, capsys, monkeypatch, loads, vllm_installed, cuda, missing
):
    from MedSegReasoning.training import runner

    monkeypatch.setattr(runner, "_vllm_installed", lambda: vllm_installed)
    monkeypatch.setattr(runner, "_has_cuda", lambda: cuda)
    code, out = _train("grpo", tmp_path, vllm="colocate", batch=4)
    err = capsys.readouterr().err
    assert code == 3, err
    assert f"vllm: colocate needs {missing}, which this machine lacks" in err
    assert "pip install 'trl[vllm]'" in err and "set vllm: off" in err and "Traceback" not in err
    assert loads == [] and not out.exists()


def test_train_refuses_vllm_here_without_pretending(tmp_path, capsys, loads):
    """The real checks on this machine (no monkeypatch): no vllm or no CUDA GPU is refused with exit 3."""
    import importlib.util

    import torch

    if importlib.util.find_spec("vllm") is not None and torch.cuda.is_available():
        pytest.skip("this machine has vllm and a CUDA GPU: the refusal does not apply")
    code, out = _train("grpo", tmp_path, vllm="server")
    err = capsys.readouterr().err
    assert code == 3 and "vllm: server needs" in err and loads == [] and not out.exists()


def test_train_sft_with_vllm_is_a_config_error(tmp_path, capsys, loads):
    code, out = _train("sft", tmp_path, vllm="colocate")
    err = capsys.readouterr().err
    assert code == 2 and "vllm: colocate is for train grpo" in err and loads == [] and not out.exists()
