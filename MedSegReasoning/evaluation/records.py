"""One sample's record: its id, the blank record, the mask scores, the documented failure record, and the meter of
its wall time and peak memory (docs/evaluation.md, "Records")."""

from __future__ import annotations

import time

import numpy as np

from ..wire.errors import InputError
from .layouts import Case, Turn, Unit
from .options import EvalOptions


def sample_id(unit: Unit, turn_round: int | None, feed: str | None) -> str:
    """A question keeps its dataset id; a dialogue round is ``<dialogue>/r<round>`` plus ``@<feed>`` in full mode."""
    if not unit.dialogue:
        return unit.id
    return f"{unit.id}/r{turn_round}" + (f"@{feed}" if feed else "")


def message_of(exc: Exception) -> str:
    """A user-facing error's own sentence; anything else with its type, so a bug is visible in the record."""
    from ..wire.errors import MedSegError

    return str(exc) if isinstance(exc, MedSegError) else f"{type(exc).__name__}: {exc}"


def base_record(unit: Unit, case: Case, turn: Turn, feed: str | None, options: EvalOptions) -> dict:
    tolerance = options.nsd_tolerance_mm if case.dimension == 3 and options.mode != "reasoner" else None
    return {
        "sample": sample_id(unit, turn.round, feed),
        "case": case.case,
        "category": case.category if case.category is None else str(case.category),
        "dialogue": unit.id if unit.dialogue else None,
        "round": turn.round,
        "feed": feed,
        "mode": options.mode,
        "dimension": case.dimension,
        "dice": None,
        "iou": None,
        "intersection": None,
        "union": None,
        "box_iou": None,
        "pdice": None,
        "nsd": None,
        "nsd_tolerance_mm": tolerance,
        "latency_s": None,
        "peak_rss_mb": None,
        "error": None,
        "question": turn.question,
    }


def failed_load(unit: Unit, feed: str | None, options: EvalOptions, message: str, measured) -> dict:
    """A unit that could not be read or run: one record (its truth may be unknown, so the union is left null)."""
    return {
        "sample": unit.id,
        "case": unit.case or unit.id,
        "category": unit.category,
        "dialogue": unit.id if unit.dialogue else None,
        "round": None,
        "feed": feed,
        "mode": options.mode,
        "dimension": None,
        "dice": 0.0 if options.mode != "reasoner" else None,
        "iou": 0.0 if options.mode != "reasoner" else None,
        "intersection": 0 if options.mode != "reasoner" else None,
        "union": None,
        "box_iou": None,
        "pdice": None,
        "nsd": None,
        "nsd_tolerance_mm": None,
        "latency_s": measured[0],
        "peak_rss_mb": measured[1],
        "error": f"the sample failed: {message}",
        "question": None,
    }


def score_mask(record: dict, pred: np.ndarray | None, truth: np.ndarray, volume, options: EvalOptions) -> None:
    from .metrics import dice, iou, normalized_surface_dice, overlap_counts

    pred = np.zeros_like(truth) if pred is None else pred
    inter, union = overlap_counts(pred, truth)
    record.update(intersection=int(inter), union=int(union), dice=float(dice(pred, truth)), iou=float(iou(pred, truth)))
    if record["dimension"] == 3:
        si, sj, sk = volume.geometry.spacing
        record["nsd"] = float(normalized_surface_dice(pred, truth, (sk, sj, si), options.nsd_tolerance_mm))


def fail_record(record: dict, truth: np.ndarray, message: str, options: EvalOptions) -> None:
    """The documented failure record: Dice = IoU = 0, nothing overlapping, union = the truth's size."""
    if options.mode != "reasoner":
        record.update(dice=0.0, iou=0.0, intersection=0, union=int(truth.sum()))
        if record["dimension"] == 3:
            record["nsd"] = 0.0
    else:
        record.update(box_iou=0.0)
    if options.mode == "interactive":  # a failed structure lowers the interactive means too
        record.update(dict.fromkeys(("key_slice_dice", "initial_dice", "final_dice", "dsc_auc", "nsd_auc"), 0.0))
    record["error"] = message


def require_truth(turn: Turn) -> None:
    if not turn.truth.any():
        raise InputError("the truth mask is empty: the label value is not in the label map, or the mask is blank.")


# --- measuring ---------------------------------------------------------------------------------------------------------


class Meter:
    """Wall time and peak resident memory of one question.

    On Linux the kernel's high-water mark (VmHWM) is reset at the start (``/proc/self/clear_refs``), so the peak is
    the question's own; elsewhere it is the process's peak so far (``metrics.peak_rss_mb``).
    """

    def __init__(self) -> None:
        self._reset = _reset_peak_rss()
        self.t0 = time.perf_counter()

    def stop(self) -> tuple[float, float | None]:
        elapsed = time.perf_counter() - self.t0
        peak = _read_vm_hwm_mb() if self._reset else None
        if peak is None:
            from .metrics import peak_rss_mb

            peak = peak_rss_mb()
        return round(elapsed, 4), (round(peak, 1) if peak is not None else None)


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _read_vm_hwm_mb() -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        return None
    return None
