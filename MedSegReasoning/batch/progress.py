"""Progress of a batch on stderr: a bar (done / failed / running and the rate) on a terminal, one line per
study otherwise (a log file or CI keeps every line)."""

from __future__ import annotations

import sys
import time
from typing import Any


class Progress:
    """Counts studies as they finish; ``note`` says what starts now. ``workers``: how many studies run at once (the
    Ray actors, 1 in-process); while studies remain, every worker has one, so ``running`` is the smaller of the two."""

    def __init__(self, total: int, *, already: int = 0, workers: int = 1) -> None:
        self.total = total
        self.workers = workers
        self.counts = {"ok": 0, "failed": 0, "skipped": 0}
        self.t0 = time.perf_counter()
        self.bar: Any = None
        if already:
            self.note(f"{already} studies done before: skipped")
        if sys.stderr.isatty() and total:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="study", file=sys.stderr, dynamic_ncols=True)

    def note(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def done(self, study, outcome) -> None:
        self.counts[outcome.status] = self.counts.get(outcome.status, 0) + 1
        finished = sum(self.counts.values())
        rate = finished / max(time.perf_counter() - self.t0, 1e-9) * 60
        running = max(min(self.workers, self.total - finished), 0)
        if self.bar is not None:
            self.bar.set_postfix(failed=self.counts["failed"], running=running, rate=f"{rate:.1f}/min", refresh=False)
            self.bar.update(1)
            if outcome.status == "failed":
                self.bar.write(f"{study.key}: failed: {outcome.error}", file=sys.stderr)
            return
        why = f": {outcome.error}" if outcome.error else ""
        print(
            f"[{finished}/{self.total}] {study.key}: {outcome.status}{why} ({outcome.seconds:.1f} s; "
            f"{self.counts['failed']} failed, {running} running, {rate:.1f} studies/min)",
            file=sys.stderr,
            flush=True,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
