"""``medseg-reasoning train sft|grpo`` end to end on CPU: a tiny Qwen2.5-VL (random weights, built from a config) on
tiny synthetic datasets in the folder (3D) and U-MRG parquet (2D) layouts.

What is proved here is the command, not learning: the checkpoint it writes loads through ``create_reasoner`` and is
asked exactly as it was trained (same prompt text, same images, same coordinates), the logs hold every step with
the named fields, ``--resume`` continues a killed run without repeating a step, and bad input is one sentence with
its exit code.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from support.eval_data import write_folder, write_umrg
from support.reasoning import force, tiny_model_dir

from MedSegReasoning.cli import main

pytest.importorskip("trl", reason="train needs the train extra (trl, peft)")
pytest.importorskip("peft", reason="train needs the train extra (trl, peft)")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("torchvision", reason="the Qwen-VL processors need torchvision (their video processor)")
    return tiny_model_dir("qwen2_5_vl", tmp_path_factory.mktemp("tiny-qwen"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train-data")
    return {"3d": write_folder(root / "folder"), "2d": write_umrg(root / "umrg")}


def _config(path, **settings):
    path.write_text(json.dumps(settings), encoding="utf-8")
    return path


def train(method, dataset, base, out, *extra):
    return main(["train", method, str(dataset), "--base", f"hf:{base}", "--out", str(out), *map(str, extra)])


def _steps(out):
    return [json.loads(line)["step"] for line in (out / "logs.jsonl").read_text(encoding="utf-8").splitlines()]


def test_help_says_lora_by_default_full_and_the_extra(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["train", "--help"])
    assert caught.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for words in (
        "sft or grpo",
        "LoRA by default",
        "--full",
        "full fine-tuning",
        "pip install 'medseg-reasoning[train]'",
        "--resume",
        "logs.jsonl",
    ):
        assert words in text


def test_sft_checkpoint_is_asked_at_run_time_exactly_as_trained(tiny, data, tmp_path, capsys):
    from MedSegReasoning.evaluation.layouts import open_dataset
    from MedSegReasoning.reasoning import create_reasoner, run_reasoning
    from MedSegReasoning.training.samples import load_samples, model_images, prompt_text, target_text
    from MedSegReasoning.volume.windowing import default_window

    out = tmp_path / "sft"
    config = _config(tmp_path / "c.json", steps=3, batch=2, save_steps=2, prompt_style="segzero")
    assert train("sft", data["3d"], tiny, out, "--config", config) == 0
    summary = capsys.readouterr().out
    assert "trained sft for 3 steps on 6 samples (none skipped)" in summary  # round 2 of d1 refers to round 1

    records = [json.loads(line) for line in (out / "logs.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(isinstance(r["loss"], float) and r["learning_rate"] > 0 and "mean_token_accuracy" in r for r in records)
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "checkpoints" / "checkpoint-2" / "trainer_state.json").is_file()
    record = json.loads((out / "training.json").read_text(encoding="utf-8"))
    assert (record["method"], record["steps"], record["weights"]) == ("sft", 3, "merged")
    assert record["samples_by_task"] == {"pick_slice": 3, "locate": 3}  # each 3D question: montage, then key slice
    assert json.loads((out / "medseg_reasoner.json").read_text(encoding="utf-8"))["prompt_style"] == "segzero"
    for name in ("chat_template.jinja", "generation_config.json"):  # rendered and decoded as the base was
        assert (out / name).read_text(encoding="utf-8") == (tiny / name).read_text(encoding="utf-8")

    reasoner = create_reasoner(f"hf:{out}", max_new_tokens=800)
    # read from medseg_reasoner.json: a plain Qwen2.5-VL folder would be asked with the contract prompts
    assert (reasoner.identity.prompt_version, reasoner.identity.convention) == ("segzero-v1", "qwen2.5-vl")

    sample_set = load_samples(open_dataset(data["3d"]))
    pick, locate = (s for s in sample_set.samples if s.id.startswith("single-blob/0/"))
    sent = []
    complete = reasoner.complete

    def recording(request, on_text, cancel):
        sent.append(request)
        return complete(request, on_text, cancel)

    reasoner.complete = recording
    answers = [target_text(s, reasoner.prompts, reasoner.convention) for s in (pick, locate)]
    force(reasoner, *answers)
    case = open_dataset(data["3d"]).units[0].load()
    answer = run_reasoning(case.volume, reasoner, case.turns[0].question, window=default_window(case.volume))
    for request, sample in zip(sent, (pick, locate), strict=True):  # train what you run: the same text and pixels
        assert request.prompt == prompt_text(sample, reasoner.prompts, reasoner.convention)
        trained = model_images(sample.views, reasoner.convention)
        assert len(request.images) == len(trained)
        assert all(np.array_equal(a, b) for a, b in zip(request.images, trained, strict=True))
    (target,) = answer.targets
    assert (target.slice, target.box, target.points) == (locate.slice, locate.box, locate.points)


def test_an_unmerged_adapter_loads_with_its_base(tiny, data, tmp_path):
    from MedSegReasoning.evaluation.layouts import open_dataset
    from MedSegReasoning.reasoning import create_reasoner
    from MedSegReasoning.training.samples import load_samples, target_text

    out = tmp_path / "adapter"
    assert train("sft", data["2d"], tiny, out, "--config", _config(tmp_path / "c.json", steps=1, merge=False)) == 0
    assert (out / "adapter_config.json").is_file() and not (out / "model.safetensors").exists()
    assert json.loads((out / "medseg_reasoner.json").read_text(encoding="utf-8"))["base"] == str(tiny.resolve())
    reasoner = create_reasoner(f"hf:{out}", max_new_tokens=800)
    assert hasattr(reasoner.model, "peft_config")  # the adapter is on the base
    sample = load_samples(open_dataset(data["2d"])).samples[0]
    force(reasoner, target_text(sample, reasoner.prompts, reasoner.convention))
    (target,) = reasoner.reason(sample.views, sample.question).targets
    assert (target.box, target.points) == (sample.box, sample.points)


def test_full_fine_tuning_changes_every_trained_weight_and_saves_a_plain_checkpoint(tiny, data, tmp_path):
    from safetensors.numpy import load_file

    out = tmp_path / "full"
    config = _config(tmp_path / "c.json", steps=1, batch=1, learning_rate=0.01)
    assert train("sft", data["2d"], tiny, out, "--full", "--config", config) == 0
    record = json.loads((out / "training.json").read_text(encoding="utf-8"))
    assert (record["full"], record["weights"]) == (True, "full") and not (out / "adapter_config.json").exists()
    before, after = load_file(tiny / "model.safetensors"), load_file(out / "model.safetensors")
    assert before.keys() == after.keys()
    name = next(k for k in before if k.endswith("mlp.up_proj.weight") and "visual" not in k)
    assert not np.array_equal(before[name], after[name])  # LoRA never touches the MLP: --full trained it


def test_grpo_logs_each_reward_component_kl_and_lengths(tiny, data, tmp_path, monkeypatch):
    """GRPO with every reward, the mask reward the real one (``MaskReward`` on the real LiteMedSAM, the config's
    default segmenter): it is built over the dataset's samples and called once per step's batch of completions."""
    from MedSegReasoning.training.mask_reward import MaskReward

    made, calls = {}, []
    real_init, real_call = MaskReward.__init__, MaskReward.__call__

    def spy_init(self, segmenter, samples, **kwargs):
        made.update(segmenter=type(segmenter).__name__, samples=dict(samples))
        real_init(self, segmenter, samples, **kwargs)

    def spy_call(self, prompts, completions, **kwargs):
        scores = real_call(self, prompts, completions, **kwargs)
        calls.append(scores)
        return scores

    monkeypatch.setattr(MaskReward, "__init__", spy_init)
    monkeypatch.setattr(MaskReward, "__call__", spy_call)
    out = tmp_path / "grpo"
    config = _config(
        tmp_path / "g.json",
        steps=2,
        batch=4,
        generations=2,
        max_completion_length=12,
        rewards={"format": 0.4, "box": 0.2, "points": 0.2, "mask": 0.2},
    )
    assert train("grpo", data["2d"], tiny, out, "--config", config) == 0
    records = [json.loads(line) for line in (out / "logs.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    for r in records:
        for name in ("loss", "reward", "reward_std", "reward/format", "reward/box", "reward/points", "kl"):
            assert isinstance(r[name], float), name
        assert 0.0 <= r["reward/mask"] <= 1.0 and 1 <= r["completion_length"] <= 12
    assert [len(c) for c in calls] == [4, 4]  # once per step's batch of completions
    assert all(0.0 <= x <= 1.0 for c in calls for x in c)
    assert made["segmenter"] == "LiteMedSAMSegmenter" and sorted(made["samples"]) == [
        "u1/0/locate",
        "u2/0/locate",
        "u3/0/locate",
    ]
    assert (out / "curves.png").is_file() and (out / "model.safetensors").is_file()


def test_a_killed_run_resumes_without_repeating_a_step(tiny, data, tmp_path, monkeypatch, capsys):
    import MedSegReasoning.training.logs as logs

    real = logs.make_callback

    def killed_after_logging_step_3(path):
        callback = real(path)
        on_log = callback.on_log

        def on_log_then_kill(args, state, control, logs=None, **kwargs):
            on_log(args, state, control, logs=logs, **kwargs)
            if state.global_step == 3:
                raise KeyboardInterrupt

        callback.on_log = on_log_then_kill
        return callback

    out = tmp_path / "resume"
    config = _config(tmp_path / "c.json", steps=4, batch=1, save_steps=2)
    monkeypatch.setattr(logs, "make_callback", killed_after_logging_step_3)
    assert train("sft", data["2d"], tiny, out, "--config", config) == 130
    assert "run the same command with --resume to continue from checkpoint-2" in capsys.readouterr().err
    assert _steps(out) == [1, 2, 3] and not (out / "model.safetensors").exists()

    monkeypatch.setattr(logs, "make_callback", real)
    assert train("sft", data["2d"], tiny, out, "--resume") == 0  # the recorded config: 4 steps
    assert _steps(out) == [1, 2, 3, 4]  # step 3 was lost with the kill and done again, logged once
    assert json.loads((out / "training.json").read_text(encoding="utf-8"))["steps"] == 4
    assert (out / "model.safetensors").is_file()

    capsys.readouterr()
    assert train("sft", data["2d"], tiny, out, "--config", config) == 2
    assert "is not empty" in capsys.readouterr().err
    missing_base = main(["train", "sft", str(data["2d"]), "--base", "hf:/nonexistent", "--out", str(out), "--force"])
    assert missing_base == 3 and (out / "model.safetensors").is_file()  # a typo never costs the finished model
    assert train("sft", data["2d"], tiny, out, "--config", _config(tmp_path / "one.json", steps=1), "--force") == 0
    assert _steps(out) == [1] and not (out / "checkpoints" / "checkpoint-4").exists()
    assert not (out / "dataset-cache").exists()  # the rows' Arrow files go with the run that wrote them


def test_a_run_killed_with_sigkill_resumes_from_its_last_checkpoint(tiny, data, tmp_path):
    """A real kill -9 in the middle of a step: the incomplete step's log line goes, the checkpoint stays."""
    import os
    import signal
    import subprocess
    import time
    from pathlib import Path

    import MedSegReasoning
    from MedSegReasoning.training.logs import read_log

    out = tmp_path / "killed"
    config = _config(tmp_path / "c.json", steps=6, batch=1, save_steps=2)
    command = [sys.executable, "-m", "MedSegReasoning.cli", "train", "sft", str(data["2d"]), "--base", f"hf:{tiny}"]
    command += ["--out", str(out), "--config", str(config)]
    env = {**os.environ, "PYTHONPATH": str(Path(MedSegReasoning.__file__).parent.parent)}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while 3 not in [r["step"] for r in read_log(out / "logs.jsonl")]:  # step 2's checkpoint is written by then
            assert process.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL and not (out / "model.safetensors").exists()
    assert train("sft", data["2d"], tiny, out, "--resume") == 0
    assert _steps(out) == [1, 2, 3, 4, 5, 6]
    assert "checkpoint-" in json.loads((out / "training.json").read_text(encoding="utf-8"))["resumed_from"]


def _empty_mask_dataset(root):
    folder = write_folder(root, dialogue=False)
    line = json.loads((folder / "questions.jsonl").read_text(encoding="utf-8"))
    (folder / "questions.jsonl").write_text(json.dumps({**line, "label": 7}) + "\n", encoding="utf-8")
    return folder


def _not_qwen(root):
    root.mkdir()
    (root / "config.json").write_text(json.dumps({"model_type": "bert"}), encoding="utf-8")
    (root / "model.safetensors").write_bytes(b"\0" * 16)
    return root


@pytest.mark.parametrize(
    ("case", "code", "words"),
    [
        ("empty mask", 2, "has no usable training sample (skipped: 1 (empty mask))"),
        ("not qwen", 3, "holds a 'bert' model; train fine-tunes Qwen-VL family checkpoints"),
        ("openai base", 2, "must be hf:<model folder or Hugging Face id>"),
        ("no base folder", 3, "does not exist"),
        ("bad config", 2, "unknown setting(s) epochs"),
        ("resume nothing", 2, "holds no finished checkpoint"),
        ("grpo groups", 2, "must be a multiple of generations (4)"),
        ("prompt version", 2, "prompt_version 'brief-v1' is not shipped for the 'contract' prompt style"),
        ("no trl", 3, "pip install 'medseg-reasoning[train]'"),
    ],
)
def test_bad_input_is_one_sentence_and_its_exit_code(tiny, data, tmp_path, monkeypatch, capsys, case, code, words):
    dataset, base, out, extra = data["2d"], f"hf:{tiny}", tmp_path / "out", []
    if case == "empty mask":
        dataset = _empty_mask_dataset(tmp_path / "empty")
    elif case == "not qwen":
        base = f"hf:{_not_qwen(tmp_path / 'bert')}"
    elif case == "openai base":
        base = "openai:http://127.0.0.1:1/v1#qwen"
    elif case == "no base folder":
        base = f"hf:{tmp_path / 'nothing'}"
    elif case == "bad config":
        extra = ["--config", _config(tmp_path / "c.json", epochs=3)]
    elif case == "resume nothing":
        extra = ["--resume"]
    elif case == "prompt version":
        extra = ["--config", _config(tmp_path / "c.json", prompt_version="brief-v1")]
    elif case == "no trl":
        monkeypatch.setitem(sys.modules, "trl", None)  # import trl now fails, as without the extra
    method = "grpo" if case == "grpo groups" else "sft"
    if case == "grpo groups":
        extra = ["--config", _config(tmp_path / "g.json", batch=2)]
    assert main(["train", method, str(dataset), "--base", base, "--out", str(out), *map(str, extra)]) == code
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if "error:" in line]) == 1
    if case == "empty mask":  # refused after reading the whole dataset: no rows' cache, no folder left behind
        assert not out.exists()


def test_unusable_samples_are_skipped_and_counted(data, tmp_path):
    from support.eval_data import umrg_rows

    from MedSegReasoning.evaluation.layouts import open_dataset
    from MedSegReasoning.training.samples import load_samples

    rows = umrg_rows()
    truth = json.loads(rows[0]["reward_model"]["ground_truth"])
    rows[0]["reward_model"] = {"ground_truth": json.dumps({**truth, "bbox_2d": [10, 10, 90, 40]})}  # image is 64 wide
    found = load_samples(open_dataset(write_umrg(tmp_path / "u", rows)))
    assert [s.id for s in found.samples] == ["u2/0/locate", "u3/0/locate"]
    assert dict(found.skipped) == {"box outside the image": 1}


def test_dialogue_rounds_that_refer_to_earlier_ones_are_trained_with_the_earlier_truth(tmp_path):
    """Teacher forcing (Testing/unit/test_training_rounds.py compares the prompt with what the runtime sends)."""
    from support.eval_data import write_mrmedseg

    from MedSegReasoning.evaluation.layouts import open_dataset
    from MedSegReasoning.training.samples import load_samples

    found = load_samples(open_dataset(write_mrmedseg(tmp_path / "mr")))
    assert [s.id.rsplit("/", 2)[1:] for s in found.samples] == [["0", "locate"], ["1", "locate"]]
    assert [[e.id for e in s.context.entities] for s in found.samples] == [[], ["E1"]]
    assert not found.skipped
