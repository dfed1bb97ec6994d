"""What the command line shows while it works: a status line before every stage that can take more than a second
(model load, volume read, reasoning), and one moving bar for propagation and for a dialogue round.

Why a module of its own: ``ask``, ``demo``, ``refine`` and the dialogue path (``conversation``) show the same
stages the same way, and the server and Slicer panel get the same stage names through ``progress`` events.
Everything goes to stderr, so stdout keeps only the results (and the reasoner's streamed text).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any


def status(text: str) -> None:
    """One line saying what starts now (``loading the segmenter (litemedsam)...``), at once, on stderr."""
    print(text, file=sys.stderr, flush=True)


class PropagationBar:
    """A tqdm bar on stderr fed by propagation's ``(done, total)`` callback.

    ``total`` is the slices the structure can still span (``propagation.propagate`` shrinks it when a direction
    stops), so the bar is set to each new total and ends full, never at "38/189"."""

    def __init__(self, enabled: bool = True, desc: str = "propagating") -> None:
        self.enabled = enabled
        self.desc = desc
        self.bar: Any = None

    def __enter__(self):
        return self.update if self.enabled else None

    def update(self, done: int, total: int) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(
                total=total, desc=self.desc, unit="slice", file=sys.stderr, leave=True
            )  # stays: it ends full
        if self.bar.total != total:
            self.bar.total = total
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __exit__(self, *exc: object) -> None:
        self.close()


class RoundProgress:
    """``run_round``'s ``(stage, fraction)`` callback for the terminal: a line per new stage ("[ 50%] target 2 of
    2: spleen"), and during a target's propagation a bar over its slices ("target 1 of 1: liver: propagating"),
    read from the stage text ``"...: propagating slice D of T"`` that ``dialogue.rounds`` sends per slice."""

    def __init__(self) -> None:
        self.head = ""
        self.bar = PropagationBar()

    def __call__(self, stage: str, fraction: float) -> None:
        head, done_total = split_slice_stage(stage)
        if done_total is not None:
            if head != self.bar.desc:
                self.bar.close()
                self.bar.desc = head
            self.bar.update(*done_total)
            return
        self.bar.close()
        if stage != "done" and stage != self.head:
            status(f"[{fraction:4.0%}] {stage}")
        self.head = stage


def split_slice_stage(stage: str) -> tuple[str, tuple[int, int] | None]:
    """``"target 1 of 1: liver: propagating slice 12 of 40"`` -> ``("target 1 of 1: liver: propagating", (12,
    40))``; a stage without a slice count comes back whole with None."""
    head, sep, tail = stage.rpartition(" slice ")
    if sep:
        done, of, total = tail.partition(" of ")
        if of and done.isdigit() and total.isdigit():
            return head, (int(done), int(total))
    return stage, None


def demo_next_steps(prog: str, dicom_dir: Path, out: Path, result: dict, box: str) -> str:
    """What the demo prints last: where to look at its result, and the next commands to try on the same series."""
    outputs = result["outputs"]
    look = [f"  {out / name}" for name in outputs.values() if name]
    return "\n".join(
        [
            "",
            "what to look at:",
            *look,
            "  open the series and mask.nii.gz (as a segmentation) in 3D Slicer or ITK-SNAP; seg.dcm opens in any "
            "DICOM-SEG viewer; result.json says why propagation stopped (docs/result-schema.md)",
            "what to try next (docs/walkthrough.md explains each step):",
            f"  {prog} ask {dicom_dir} --box {box} --no-propagate --out medseg-out/key-slice",
            f"  {prog} ask {dicom_dir} --box {box} --session medseg-session --out medseg-out/round1",
            f"  {prog} export medseg-session --format seg,sr,nifti --to medseg-out/export",
        ]
    )
