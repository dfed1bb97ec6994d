"""The evaluation report: per-sample records in, a summary (JSON + Markdown tables + PNG plots) out.

The runner writes one record per question (``RECORD_FIELDS``) as a JSON line while it runs, so a crash
loses nothing; :func:`summarize` reduces any iterable of records to the numbers the field reports (mean
Dice, gIoU, cIoU, box IoU, pDice, NSD, latency, peak memory) overall, per category, per dialogue round
and per mode, and for ``--mode interactive`` the simulated user's (initial and final Dice, DSC_AUC, NSD_AUC, encoder
calls, wall time) per structure and as means; :func:`write_report` writes them next to the records. Formulas: docs/evaluation.md.

Dictionary keys that are numbers in the records (dialogue rounds) are strings in the summary, so the
returned dict and ``summary.json`` read back identically.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from MedSegReasoning.atomic import atomic_output, write_text_atomic
from MedSegReasoning.jsonlines import read_json_objects
from MedSegReasoning.wire.errors import InputError

__all__ = [
    "INTERACTIVE_FIELDS",
    "PLOT_FILES",
    "RECORD_FIELDS",
    "read_records",
    "render_markdown",
    "summarize",
    "write_report",
]

RECORD_FIELDS: dict[str, str] = {
    "sample": "str: the sample's id, unique within the run.",
    "case": "str: the image or volume the question is about (several samples can share a case).",
    "category": "str | None: the dataset's category for the target (organ, lesion type, ...), grouped in by_category.",
    "dialogue": "str | None: the dialogue id for multi-round datasets, None for single questions.",
    "round": "int | None: the 1-based round within the dialogue.",
    "feed": '"true" | "predicted" | None: for dialogue rounds, whether the masks fed to later rounds were the '
    "truth or the pipeline's own earlier answers.",
    "mode": '"full" | "oracle" | "reasoner": full pipeline, segmenter with prompts from the truth, or the '
    "reasoner's prompts only (no masks).",
    "dimension": "2 | 3: 2D slice or 3D volume scoring (dice is volumetric Dice for 3).",
    "dice": "float | None: Dice of the predicted and true mask (None when nothing was segmented).",
    "iou": "float | None: IoU of the predicted and true mask; gIoU is its mean.",
    "intersection": "int | None: |P ∩ T| in voxels; cIoU = Σ intersection / Σ union.",
    "union": "int | None: |P ∪ T| in voxels.",
    "box_iou": "float | None: IoU of the reasoner's box and the true box (continuous corners).",
    "pdice": "float | None: MedReasoner's point-pair Dice of the reasoner's two key points.",
    "nsd": "float | None: normalized surface Dice at nsd_tolerance_mm.",
    "nsd_tolerance_mm": "float | None: the NSD tolerance in mm.",
    "latency_s": "float: wall time for the question, seconds.",
    "peak_rss_mb": "float | None: the process's peak resident memory so far, MiB.",
    "error": "str | None: the failure message; a failed sample has dice = iou = 0, intersection = 0, "
    "union = the truth's size.",
}

INTERACTIVE_FIELDS: dict[str, str] = {
    "key_slice_dice": "float: 2D Dice on the first box's slice after the box (interactive mode only, like all below).",
    "initial_dice": "float: 3D Dice after the first box and its propagation.",
    "final_dice": "float: 3D Dice after the last correction (equals dice).",
    "initial_nsd": "float: NSD after the first box.",
    "final_nsd": "float: NSD after the last correction (equals nsd).",
    "dsc_auc": "float: area under Dice over interactions 0..corrections (trapezoids, unit steps); a user with "
    "nothing left to correct keeps the last value.",
    "nsd_auc": "float: the same for NSD.",
    "dice_curve": "list[float]: Dice after each interaction, padded with the last value to corrections + 1.",
    "nsd_curve": "list[float]: NSD after each interaction, padded the same way.",
    "encoder_calls": "int: image embeddings computed for this structure, all interactions together.",
    "corrections_made": "int: corrections the simulated user placed (fewer than the budget once the mask is right).",
    "key_slice": "int: the axial slice of the first box.",
    "interactions": "list[dict]: per interaction its kind (box, add, erase), slice, dice, nsd, encoder_calls, "
    "seconds and changed_slices.",
    "stop_reasons": "dict: why the first propagation stopped, per direction.",
}
"""Keys that records of ``--mode interactive`` carry besides ``RECORD_FIELDS``."""

_NUMBER_FIELDS = ("dice", "iou", "box_iou", "pdice", "nsd", "nsd_tolerance_mm", "latency_s", "peak_rss_mb")
_INTERACTIVE_NUMBERS = (
    "key_slice_dice",
    "initial_dice",
    "final_dice",
    "initial_nsd",
    "final_nsd",
    "dsc_auc",
    "nsd_auc",
)
_INTERACTIVE_COUNTS = ("encoder_calls", "corrections_made")
_COUNT_FIELDS = ("intersection", "union", "round", "dimension")
_TEXT_FIELDS = ("sample", "case", "category", "dialogue", "feed", "mode", "error")

PLOT_FILES = {
    "score_distribution": "plots/score_distribution.png",
    "dice_by_category": "plots/dice_by_category.png",
    "dice_by_round": "plots/dice_by_round.png",
}
"""Plot name -> path relative to the report folder. A plot with no data gets no file."""


# ---------------------------------------------------------------------------------------------- records
def _is_number(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _clean(record: object, index: int) -> dict[str, Any]:
    """The record with every known field present (missing -> None) and type-checked; raises on garbage."""
    if not isinstance(record, Mapping):
        raise InputError(f"Evaluation record {index + 1} must be a JSON object, got {type(record).__name__}.")
    name = record.get("sample", f"#{index + 1}")
    out = dict(record)
    for key in _NUMBER_FIELDS + _INTERACTIVE_NUMBERS:
        value = record.get(key)
        if value is not None and not (_is_number(value) and math.isfinite(float(value))):
            raise InputError(f"Evaluation record {name!r}: {key} must be a finite number or null, got {value!r}.")
        out[key] = None if value is None else float(value)
    for key in _COUNT_FIELDS + _INTERACTIVE_COUNTS:
        value = record.get(key)
        if value is not None and not (
            _is_number(value) and math.isfinite(float(value)) and float(value) == int(value) and value >= 0
        ):
            raise InputError(
                f"Evaluation record {name!r}: {key} must be a non-negative integer or null, got {value!r}."
            )
        out[key] = None if value is None else int(value)
    for key in _TEXT_FIELDS:
        value = record.get(key)
        out[key] = None if value is None else str(value)
    if out["round"] is not None and out["round"] < 1:
        raise InputError(f"Evaluation record {name!r}: round numbers start at 1, got {out['round']}.")
    if out["intersection"] is not None and out["union"] is not None and out["intersection"] > out["union"]:
        raise InputError(
            f"Evaluation record {name!r}: intersection {out['intersection']} exceeds union {out['union']}."
        )
    return out


def read_records(path: Path) -> list[dict[str, Any]]:
    """Records from a JSON-lines file (one object per line, blank lines skipped), for re-running the report."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"No evaluation records at {path}: give the results .jsonl file the runner wrote.")
    return [record for _, record in read_json_objects(path)]


# ---------------------------------------------------------------------------------------------- summary
def _mean(records: Sequence[dict], key: str) -> dict[str, Any]:
    values = [r[key] for r in records if r[key] is not None]
    return {"mean": float(np.mean(values)) if values else None, "n": len(values)}


def _ciou(records: Sequence[dict]) -> dict[str, Any]:
    scored = [r for r in records if r["intersection"] is not None and r["union"] is not None]
    inter = sum(r["intersection"] for r in scored)
    union = sum(r["union"] for r in scored)
    return {"value": inter / union if union else None, "intersection": inter, "union": union, "n": len(scored)}


def _block(records: Sequence[dict]) -> dict[str, Any]:
    """All summary metrics over one group of records."""
    latencies = [r["latency_s"] for r in records if r["latency_s"] is not None]
    rss = [r["peak_rss_mb"] for r in records if r["peak_rss_mb"] is not None]
    tolerances = sorted(
        {r["nsd_tolerance_mm"] for r in records if r["nsd"] is not None and r["nsd_tolerance_mm"] is not None}
    )
    nsd = _mean(records, "nsd")
    nsd["tolerance_mm"] = tolerances[0] if len(tolerances) == 1 else (tolerances or None)
    return {
        "n": len(records),
        "n_errors": sum(1 for r in records if r["error"] is not None),
        "dice": _mean(records, "dice"),
        "giou": _mean(records, "iou"),
        "ciou": _ciou(records),
        "box_iou": _mean(records, "box_iou"),
        "pdice": _mean(records, "pdice"),
        "nsd": nsd,
        "latency_s": {
            "median": float(np.median(latencies)) if latencies else None,
            "p90": float(np.percentile(latencies, 90)) if latencies else None,
            "n": len(latencies),
        },
        "peak_rss_mb": {"max": max(rss) if rss else None, "n": len(rss)},
    }


def _groups(records: Sequence[dict], key: str) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for r in records:
        if r[key] is not None:
            groups.setdefault(r[key], []).append(r)
    return dict(sorted(groups.items()))


def _feed_order(feed: str) -> tuple[int, str]:
    """Rounds fed the truth first (the upper bound), then the pipeline's own masks, then anything else."""
    return ({"true": 0, "predicted": 1}.get(feed, 2), feed)


def summarize(records: Iterable[dict]) -> dict[str, Any]:
    """Reduce per-sample records to the report's numbers.

    Returns ``counts`` (n, n_errors); ``overall``: dice / giou / box_iou / pdice / nsd as ``{"mean", "n"}``
    over the records where the value is not None (a failed sample counts with its 0), ciou as
    ``{"value", "intersection", "union", "n"}`` (value None when Σ union is 0), latency_s ``{"median", "p90"}``
    (numpy's linear interpolation), peak_rss_mb ``{"max"}``; ``by_category`` (same block per category, records
    without one left out); ``by_round``: ``{feed: {round: {"dice", "giou", "ciou", "n"}}}`` with string keys
    (feed "none" where a round has no feed); ``by_mode`` (same block per mode) only when several modes ran;
    ``interactive`` only when interactive records are present (``_interactive_summary``).
    """
    cleaned = [_clean(r, i) for i, r in enumerate(records)]
    overall = _block(cleaned)
    summary: dict[str, Any] = {
        "counts": {"n": overall["n"], "n_errors": overall["n_errors"]},
        "overall": overall,
        "by_category": {category: _block(group) for category, group in _groups(cleaned, "category").items()},
        "by_round": {},
    }
    in_rounds = [r for r in cleaned if r["round"] is not None]
    for feed in sorted({r["feed"] or "none" for r in in_rounds}, key=_feed_order):
        rounds: dict[int, list[dict]] = {}
        for r in in_rounds:
            if (r["feed"] or "none") == feed:
                rounds.setdefault(r["round"], []).append(r)
        summary["by_round"][feed] = {
            str(number): {
                "dice": _mean(group, "dice")["mean"],
                "giou": _mean(group, "iou")["mean"],
                "ciou": _ciou(group)["value"],
                "n": len(group),
            }
            for number, group in sorted(rounds.items())
        }
    modes = _groups(cleaned, "mode")
    if len(modes) > 1:
        summary["by_mode"] = {mode: _block(group) for mode, group in modes.items()}
    interactive = [r for r in cleaned if r["mode"] == "interactive"]
    if interactive:
        summary["interactive"] = _interactive_summary(interactive)
    return summary


_INTERACTIVE_MEANS = (
    "key_slice_dice",
    "initial_dice",
    "final_dice",
    "dsc_auc",
    "nsd_auc",
    "encoder_calls",
    "latency_s",
)


def _interactive_means(records: Sequence[dict]) -> dict[str, Any]:
    """Means of the interactive numbers over ``records`` (a failed structure counts with its zeros)."""
    out: dict[str, Any] = {key: _mean(records, key)["mean"] for key in _INTERACTIVE_MEANS}
    out["n"] = len(records)
    return out


def lowered_by_a_correction(record: Mapping[str, Any]) -> bool:
    """Whether any correction made the structure's Dice worse than the interaction before it: a correction the user
    placed where the error was largest should never cost Dice, so each one is a finding worth a look."""
    curve = record.get("dice_curve") or []
    return any(after < before - 1e-9 for before, after in zip(curve, curve[1:], strict=False))


def _interactive_summary(records: Sequence[dict]) -> dict[str, Any]:
    """The simulated user's numbers: means overall and per category, and one row per structure."""
    return {
        "overall": _interactive_means(records),
        "by_category": {name: _interactive_means(group) for name, group in _groups(records, "category").items()},
        "lowered_by_a_correction": [r["sample"] for r in records if lowered_by_a_correction(r)],
        "structures": [
            {key: r.get(key) for key in ("sample", "category", "corrections_made", *_INTERACTIVE_MEANS, "error")}
            for r in records
        ],
    }


# ---------------------------------------------------------------------------------------------- markdown
_FEED_NAMES = {"true": "true earlier masks fed", "predicted": "own earlier masks fed", "none": "feed not recorded"}


def _fmt(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _metric_row(name: str, block: Mapping[str, Any]) -> str:
    return (
        f"| {_cell(name)} | {block['n']} | {_fmt(block['dice']['mean'])} | {_fmt(block['giou']['mean'])} "
        f"| {_fmt(block['ciou']['value'])} | {_fmt(block['box_iou']['mean'])} | {_fmt(block['pdice']['mean'])} "
        f"| {_fmt(block['nsd']['mean'])} |"
    )


def _tolerance_text(tolerance: Any) -> str:
    if tolerance is None:
        return ""
    if isinstance(tolerance, list):
        return " @ " + ", ".join(f"{t:g}" for t in tolerance) + " mm (mixed)"
    return f" @ {tolerance:g} mm"


def render_markdown(summary: Mapping[str, Any], title: str) -> str:
    """The summary as Markdown: an overall table, a per-category table, a per-round table per feed, per mode."""
    o = summary["overall"]
    lines = [f"# {title}", "", f"{summary['counts']['n']} samples, {summary['counts']['n_errors']} failed.", ""]
    lines += ["## Overall", "", "| Metric | Value | n |", "|---|---|---|"]
    lines += [
        f"| Dice (mean per sample) | {_fmt(o['dice']['mean'])} | {o['dice']['n']} |",
        f"| gIoU (mean per-sample IoU) | {_fmt(o['giou']['mean'])} | {o['giou']['n']} |",
        f"| cIoU (Σ intersection / Σ union) | {_fmt(o['ciou']['value'])} | {o['ciou']['n']} |",
        f"| Box IoU (mean) | {_fmt(o['box_iou']['mean'])} | {o['box_iou']['n']} |",
        f"| pDice (mean) | {_fmt(o['pdice']['mean'])} | {o['pdice']['n']} |",
        f"| NSD{_tolerance_text(o['nsd']['tolerance_mm'])} (mean) | {_fmt(o['nsd']['mean'])} | {o['nsd']['n']} |",
        f"| Latency per question, median (s) | {_fmt(o['latency_s']['median'], 3)} | {o['latency_s']['n']} |",
        f"| Latency per question, p90 (s) | {_fmt(o['latency_s']['p90'], 3)} | {o['latency_s']['n']} |",
        f"| Peak resident memory (MiB) | {_fmt(o['peak_rss_mb']['max'], 1)} | {o['peak_rss_mb']['n']} |",
        "",
    ]
    header = ["| {0} | n | Dice | gIoU | cIoU | Box IoU | pDice | NSD |", "|---|---|---|---|---|---|---|---|"]
    if summary["by_category"]:
        lines += ["## By category", "", header[0].format("Category"), header[1]]
        lines += [_metric_row(name, block) for name, block in summary["by_category"].items()]
        lines.append("")
    for feed, rounds in summary["by_round"].items():
        lines += [
            f"## By round ({_FEED_NAMES.get(feed, feed)})",
            "",
            "| Round | n | Dice | gIoU | cIoU |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {number} | {row['n']} | {_fmt(row['dice'])} | {_fmt(row['giou'])} | {_fmt(row['ciou'])} |"
            for number, row in rounds.items()
        ]
        lines.append("")
    if "by_mode" in summary:
        lines += ["## By mode", "", header[0].format("Mode"), header[1]]
        lines += [_metric_row(name, block) for name, block in summary["by_mode"].items()]
        lines.append("")
    if "interactive" in summary:
        lines += _interactive_markdown(summary["interactive"])
    if summary.get("plots"):
        lines += ["## Plots", ""] + [f"![{name}]({path})" for name, path in summary["plots"].items()] + [""]
    elif summary.get("plots_skipped"):
        lines += ["## Plots", "", summary["plots_skipped"], ""]
    return "\n".join(lines)


_INTERACTIVE_HEADER = (
    "| {0} | n | key-slice Dice | initial Dice | final Dice | DSC_AUC | NSD_AUC | encoder calls | wall time (s) |",
    "|---|---|---|---|---|---|---|---|---|",
)


def _interactive_row(name: str, row: Mapping[str, Any], n: int | str) -> str:
    return (
        f"| {_cell(name)} | {n} | {_fmt(row['key_slice_dice'])} | {_fmt(row['initial_dice'])} "
        f"| {_fmt(row['final_dice'])} | {_fmt(row['dsc_auc'], 3)} | {_fmt(row['nsd_auc'], 3)} "
        f"| {_fmt(row['encoder_calls'], 1)} | {_fmt(row['latency_s'], 1)} |"
    )


def _interactive_markdown(block: Mapping[str, Any]) -> list[str]:
    """Means (overall, per category), then one row per structure; corrections that lowered Dice are named."""
    lines = ["## Interactive (simulated user: a box, then corrections)", ""]
    lines += [_INTERACTIVE_HEADER[0].format("Group"), _INTERACTIVE_HEADER[1]]
    lines.append(_interactive_row("all (mean)", block["overall"], block["overall"]["n"]))
    lines += [_interactive_row(name, row, row["n"]) for name, row in block["by_category"].items()]
    lines += ["", _INTERACTIVE_HEADER[0].format("Structure"), _INTERACTIVE_HEADER[1]]
    for row in block["structures"]:
        name = row["sample"] + (" (failed)" if row["error"] else "")
        lines.append(_interactive_row(name, row, 1))
    lowered = block["lowered_by_a_correction"]
    lines += ["", f"Lowered by a correction: {', '.join(lowered) if lowered else 'none'}.", ""]
    return lines


# ---------------------------------------------------------------------------------------------- plots
def _save(fig: Any, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def _plot_distribution(records: Sequence[dict], path: Path) -> bool:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    series = [
        (label, [r[key] for r in records if r[key] is not None]) for key, label in (("dice", "Dice"), ("iou", "IoU"))
    ]
    series = [(label, values) for label, values in series if values]
    if not series:
        return False
    fig = Figure(figsize=(4.5 * len(series), 3.5))
    for index, (label, values) in enumerate(series, start=1):
        ax = fig.add_subplot(1, len(series), index)
        ax.hist(values, bins=20, range=(0.0, 1.0), color="tab:blue", edgecolor="white")
        ax.set_xlabel(label)
        ax.set_ylabel("samples")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"{label} per sample (n={len(values)})")
    _save(fig, path)
    return True


def _plot_categories(summary: Mapping[str, Any], path: Path) -> bool:
    from matplotlib.figure import Figure

    bars = [(name, block["dice"]["mean"], block["dice"]["n"]) for name, block in summary["by_category"].items()]
    bars = [bar for bar in bars if bar[1] is not None]
    if not bars:
        return False
    fig = Figure(figsize=(max(4.0, 0.6 * len(bars) + 2.0), 4.0))
    ax = fig.add_subplot(1, 1, 1)
    container = ax.bar(range(len(bars)), [b[1] for b in bars], color="tab:green")
    ax.bar_label(container, fmt="%.2f", fontsize=8)
    ax.set_xticks(range(len(bars)), [f"{b[0]} (n={b[2]})" for b in bars], rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("mean Dice")
    ax.set_title("Mean Dice per category")
    _save(fig, path)
    return True


def _plot_rounds(summary: Mapping[str, Any], path: Path) -> bool:
    from matplotlib.figure import Figure

    lines = []
    for feed, rounds in summary["by_round"].items():
        points = [(int(number), row["dice"]) for number, row in rounds.items() if row["dice"] is not None]
        if points:
            lines.append((feed, points))
    if not lines:
        return False
    fig = Figure(figsize=(5.0, 3.5))
    ax = fig.add_subplot(1, 1, 1)
    for feed, points in lines:
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=_FEED_NAMES.get(feed, feed))
    ax.set_xticks(sorted({p[0] for _, points in lines for p in points}))
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("round")
    ax.set_ylabel("mean Dice")
    ax.set_title("Dice per dialogue round")
    ax.legend()
    _save(fig, path)
    return True


# ---------------------------------------------------------------------------------------------- files
def write_report(records: Sequence[dict], out_dir: Path, title: str = "MedSegReasoning evaluation") -> dict[str, Any]:
    """Write ``summary.json``, ``summary.md`` and ``plots/*.png`` into ``out_dir``; return the summary.

    Each file is written atomically. Plots with no data get no file (and a stale one from an earlier run in
    the same folder is removed); without matplotlib the tables are still written and the summary says why
    the plots are missing (``pip install 'medseg-reasoning[eval]'``).
    """
    records = list(records)
    out_dir = Path(out_dir)
    summary = summarize(records)
    summary["title"] = title
    cleaned = [_clean(r, i) for i, r in enumerate(records)]
    plots: dict[str, str] = {}
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        summary["plots_skipped"] = "Plots skipped: matplotlib is not installed (pip install 'medseg-reasoning[eval]')."
    else:
        drawers = {
            "score_distribution": lambda p: _plot_distribution(cleaned, p),
            "dice_by_category": lambda p: _plot_categories(summary, p),
            "dice_by_round": lambda p: _plot_rounds(summary, p),
        }
        for name, relative in PLOT_FILES.items():
            path = out_dir / relative
            if drawers[name](path):
                plots[name] = relative
            else:
                path.unlink(missing_ok=True)
    summary["plots"] = plots
    write_text_atomic(
        out_dir / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    )
    write_text_atomic(out_dir / "summary.md", render_markdown(summary, title))
    return summary
