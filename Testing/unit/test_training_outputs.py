"""The train command's output folder rules, its log records, and its memory and disk failures as one sentence."""

from __future__ import annotations

import errno
import json

import pytest

from MedSegReasoning.training.checkpoint import begin_output, last_checkpoint, prepare_output
from MedSegReasoning.training.logs import log_record, plot_curves, read_log, truncate_log
from MedSegReasoning.training.runner import run_trainer
from MedSegReasoning.wire.errors import InputError, ModelError


def _checkpoint(out, step, complete=True):
    folder = out / "checkpoints" / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    if complete:
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}), encoding="utf-8")
    return folder


def test_a_fresh_run_needs_an_empty_folder_or_force(tmp_path):
    out = tmp_path / "run"
    assert prepare_output(out, method="sft", force=False, resume=False) is None and not out.exists()
    begin_output(out, force=False)
    assert out.is_dir()
    (out / "logs.jsonl").write_text("{}\n", encoding="utf-8")
    (out / "model.safetensors").write_bytes(b"x")
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    _checkpoint(out, 2)
    with pytest.raises(InputError, match="is not empty: choose another --out, add --resume .* or --force"):
        prepare_output(out, method="sft", force=False, resume=False)
    assert prepare_output(out, method="sft", force=True, resume=False) is None
    assert len(list(out.iterdir())) == 4  # checked, nothing removed yet
    begin_output(out, force=True)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # the previous run's outputs only
    with pytest.raises(InputError, match="give one of them"):
        prepare_output(out, method="sft", force=True, resume=True)
    (tmp_path / "file").write_text("x", encoding="utf-8")
    with pytest.raises(InputError, match="is a file"):
        prepare_output(tmp_path / "file", method="sft", force=False, resume=False)


def test_resume_takes_the_last_complete_checkpoint_of_the_same_method(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with pytest.raises(InputError, match="holds no finished checkpoint"):
        prepare_output(out, method="sft", force=False, resume=True)
    _checkpoint(out, 2)
    _checkpoint(out, 4)
    _checkpoint(out, 6, complete=False)  # killed while saving: no trainer_state.json
    assert last_checkpoint(out).name == "checkpoint-4"
    assert prepare_output(out, method="sft", force=False, resume=True).name == "checkpoint-4"
    (out / "training.json").write_text(json.dumps({"method": "grpo"}), encoding="utf-8")
    with pytest.raises(InputError, match="is a 'grpo' run, not 'sft'"):
        prepare_output(out, method="sft", force=False, resume=True)


def test_log_records_have_fixed_names():
    grpo = {
        "loss": 0.1,
        "rewards/total/mean": 0.5,
        "rewards/format/mean": 1.0,
        "rewards/box/std": 0.2,
        "kl": 0.01,
        "completions/mean_length": 12.0,
        "step_time": 0.1,
        "reward": 0.5,
    }
    record = log_record(3, 0.5, grpo)
    assert {k: record[k] for k in ("step", "epoch", "loss", "reward", "reward/format", "kl", "completion_length")} == {
        "step": 3,
        "epoch": 0.5,
        "loss": 0.1,
        "reward": 0.5,
        "reward/format": 1.0,
        "kl": 0.01,
        "completion_length": 12.0,
    }
    assert "step_time" not in record and "reward/box" not in record
    assert log_record(3, 1.0, {"train_runtime": 1.0, "train_loss": 0.2}) is None  # the summary is not a step


def test_truncate_keeps_the_steps_of_the_checkpoint(tmp_path):
    path = tmp_path / "logs.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in (1, 2, 3)) + '{"step": 4', "utf-8")
    truncate_log(path, 2)
    assert [r["step"] for r in read_log(path)] == [1, 2]


def test_curves_are_drawn_from_the_log(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "logs.jsonl"
    path.write_text(
        "".join(
            json.dumps({"step": s, "loss": 1.0 / s, "reward": s / 4, "reward/box": s / 5, "kl": 0.0}) + "\n"
            for s in (1, 2, 3)
        ),
        "utf-8",
    )
    assert plot_curves(path, tmp_path / "curves.png", "test")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plot_curves(tmp_path / "none.jsonl", tmp_path / "no.png", "test")


class _Trainer:
    def __init__(self, error):
        self.error = error
        self.state = type("State", (), {"global_step": 7})()

    def train(self, resume_from_checkpoint=None):
        raise self.error


def test_out_of_memory_and_a_full_disk_are_one_sentence_with_exit_3():
    torch = pytest.importorskip("torch")
    with pytest.raises(ModelError) as caught:
        run_trainer(_Trainer(torch.OutOfMemoryError("CUDA out of memory")), None)
    message = str(caught.value)
    assert "ran out of GPU memory at step 7" in message and "lower batch" in message and "--resume" in message
    assert caught.value.exit_code == 3
    with pytest.raises(ModelError, match="ran out of main memory"):
        run_trainer(_Trainer(MemoryError()), None)
    with pytest.raises(ModelError, match="the disk is full"):
        run_trainer(_Trainer(OSError(errno.ENOSPC, "No space left on device")), None)
    with pytest.raises(PermissionError):  # any other OSError is the CLI's (exit 2, "check the path")
        run_trainer(_Trainer(PermissionError(errno.EACCES, "denied")), None)
