"""Training logs: one JSON line per logged step in ``OUT/logs.jsonl``, and ``OUT/curves.png`` drawn from them.

The fields have fixed names whatever TRL version wrote them (docs/training.md lists them): ``step``, ``epoch``,
``loss``, ``learning_rate``, ``grad_norm``; for SFT ``mean_token_accuracy`` and ``num_tokens``; for GRPO ``reward``
(the weighted total), ``reward_std``, ``reward/<component>`` (format, box, points, mask, key_slice: the mean over the
step's completions of those it applies to), ``kl`` and the completion lengths. Each line is flushed as it is written,
so a killed run keeps its log; ``--resume`` first drops the lines past the checkpoint it continues from (those steps
are done again), so a step is never logged twice.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

_RENAMED = {
    "loss": "loss",
    "learning_rate": "learning_rate",
    "grad_norm": "grad_norm",
    "entropy": "entropy",
    "mean_token_accuracy": "mean_token_accuracy",
    "num_tokens": "num_tokens",
    "reward": "reward",
    "reward_std": "reward_std",
    "kl": "kl",
    "completions/mean_length": "completion_length",
    "completions/min_length": "completion_length_min",
    "completions/max_length": "completion_length_max",
    "completions/clipped_ratio": "completion_clipped_ratio",
}
CURVES = (
    ("loss", ("loss",)),
    ("reward", ("reward", "reward/*")),
    ("KL to the base", ("kl",)),
    ("completion length (tokens)", ("completion_length",)),
)


def log_record(step: int, epoch: float | None, logs: dict[str, Any]) -> dict[str, Any] | None:
    """TRL's log dict as our record; ``None`` for the end-of-training summary (it is not a step)."""
    if "train_runtime" in logs:
        return None
    record: dict[str, Any] = {"step": int(step), "epoch": epoch, "time": round(time.time(), 3)}
    for key, value in logs.items():
        name = _RENAMED.get(key)
        if name is None and key.startswith("rewards/") and key.endswith("/mean"):
            component = key[len("rewards/") : -len("/mean")]
            name = "reward" if component == "total" else f"reward/{component}"
        if name is not None and isinstance(value, int | float):
            record[name] = None if isinstance(value, float) and not math.isfinite(value) else float(value)
    return record


def truncate_log(path: Path, last_step: int) -> None:
    """Keep only the records up to ``last_step`` (the checkpoint a resumed run continues from)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by the kill
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= last_step:
            kept.append(line)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
    tmp.replace(path)


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def make_callback(path: Path):
    """A ``transformers.TrainerCallback`` appending each logged step to ``path``."""
    from transformers import TrainerCallback

    class JsonLinesLog(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            record = log_record(state.global_step, state.epoch, logs)
            if record is not None:
                with path.open("a", encoding="utf-8") as handle:
                    handle.write(json.dumps(record) + "\n")
                    handle.flush()

    return JsonLinesLog()


def plot_curves(log_path: Path, png_path: Path, title: str) -> bool:
    """Draw the logged curves (one panel each for loss, rewards, KL and completion length, where logged); False
    when matplotlib is missing or nothing was logged (the JSON lines are the record either way)."""
    records = read_log(log_path)
    if not records:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    panels = []
    for panel_title, patterns in CURVES:
        names = sorted({k for r in records for k in r if _matches(k, patterns)}, key=lambda k: (k != patterns[0], k))
        series = [(n, [(r["step"], r[n]) for r in records if r.get(n) is not None]) for n in names]
        series = [(n, pts) for n, pts in series if pts]
        if series:
            panels.append((panel_title, series))
    if not panels:
        return False
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2.6 * len(panels)), squeeze=False, sharex=True)
    for ax, (panel_title, series) in zip(axes[:, 0], panels, strict=True):
        for name, points in series:
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, marker="." if len(points) < 50 else None, label=name)
        ax.set_title(panel_title, fontsize=10)
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=8)
    axes[-1, 0].set_xlabel("step")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return True


def _matches(key: str, patterns: tuple[str, ...]) -> bool:
    return any(key == p or (p.endswith("*") and key.startswith(p[:-1])) for p in patterns)
