"""What an ``eval`` run is asked to do (``EvalOptions``) and the models it loads on first use (``Models``)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..wire.errors import InputError
from .interactive import DEFAULT_CORRECTIONS

MODES = ("full", "oracle", "reasoner", "interactive")
REASONER_MODES = ("full", "reasoner")
"""The modes that ask a reasoner; ``oracle`` and ``interactive`` take their prompts from the truth."""
SAMPLES_FILE = "samples.jsonl"
RUN_FILE = "run.json"
DEFAULT_NSD_TOLERANCE_MM = 2.0


@dataclass(frozen=True)
class EvalOptions:
    """What ``eval`` does; ``reasoner`` is a ``reasoning.spec.ReasonerOptions`` (full and reasoner modes).

    ``corrections`` is the interactive mode's budget after the first box; ``propagation`` a
    ``propagation.PropagationConfig`` for the oracle and interactive modes (None: the defaults every front end uses;
    the benchmarks pass variants of it).
    """

    out: Path
    mode: str = "full"
    resume: bool = False
    limit: int | None = None
    segmenter: str = "litemedsam"
    reasoner: Any = None
    window: str | None = None
    propagate: bool = True
    nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM
    progress: bool = True
    title: str | None = None
    corrections: int = DEFAULT_CORRECTIONS
    propagation: Any = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"unknown mode '{self.mode}': use one of {', '.join(MODES)}.")
        if self.limit is not None and self.limit < 1:
            raise InputError(f"--limit must be at least 1, got {self.limit}.")
        if self.nsd_tolerance_mm < 0:
            raise InputError(f"the NSD tolerance must be >= 0 mm, got {self.nsd_tolerance_mm}.")
        if self.mode in REASONER_MODES and self.reasoner is None:
            raise InputError(f"mode '{self.mode}' needs a reasoner (--reasoner SPEC).")
        if self.corrections < 0:
            raise InputError(f"--corrections must be 0 or more, got {self.corrections}.")
        if self.mode == "interactive" and not self.propagate:
            raise InputError("--mode interactive scores 3D masks, each correction re-propagated: drop --no-propagate.")

    @property
    def propagation_config(self):
        """The ``PropagationConfig`` the oracle and interactive modes segment with."""
        from ..propagation import DEFAULT_PROPAGATION

        return DEFAULT_PROPAGATION if self.propagation is None else self.propagation


@dataclass
class Models:
    """Models created on first use: a run whose samples are all done loads nothing."""

    options: EvalOptions
    segmenter: Any = None
    reasoner: Any = None
    load_s: dict[str, float] = field(default_factory=dict)

    def get_segmenter(self):
        if self.segmenter is None:
            from ..segmentation.factory import create_segmenter

            t0 = time.perf_counter()
            self.segmenter = create_segmenter(self.options.segmenter)
            self.load_s["segmenter_s"] = time.perf_counter() - t0
        return self.segmenter

    def get_reasoner(self):
        if self.reasoner is None:
            t0 = time.perf_counter()
            self.reasoner = self.options.reasoner.create()
            self.load_s["reasoner_s"] = time.perf_counter() - t0
        return self.reasoner
