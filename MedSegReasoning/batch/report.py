"""The run's tables and report: ``results.csv`` always, ``results.parquet`` where pyarrow is installed, and
``report.html`` (a volume distribution per structure, drawn by matplotlib where it is installed, and the failures
with their reasons). All are rewritten from the studies' row files, atomically, so they never disagree with them.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import logging
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..atomic import atomic_output, write_text_atomic
from .store import COLUMNS

log = logging.getLogger(__name__)


def write_tables(out: Path, rows: Sequence[dict[str, Any]]) -> list[str]:
    """``results.csv`` (and ``results.parquet`` with pyarrow); the names written."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(COLUMNS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in COLUMNS})
    write_text_atomic(out / "results.csv", text.getvalue())
    written = ["results.csv"]
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return written
    table = pa.Table.from_pylist([{k: row.get(k) for k in COLUMNS} for row in rows], schema=_schema(pa))
    with atomic_output(out / "results.parquet") as tmp:
        pq.write_table(table, tmp)
    written.append("results.parquet")
    return written


def _schema(pa):
    types = {"volume_ml": pa.float64(), "score": pa.float64(), "seconds": pa.float64()}
    types |= {"key_slice": pa.int64(), "attempt": pa.int64()}
    return pa.schema([(k, types.get(k, pa.string())) for k in COLUMNS])


def write_report(out: Path, rows: Sequence[dict[str, Any]], *, elapsed_s: float) -> None:
    """``report.html``: counts, one volume distribution per structure (PNG, embedded), the failures."""
    studies: dict[str, str] = {}
    for row in rows:
        studies.setdefault(row["study"] or row["input"], row["status"])
    counts = {s: sum(1 for v in studies.values() if v == s) for s in ("ok", "failed", "skipped")}
    volumes: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        if row["status"] == "ok" and row.get("volume_ml") is not None:
            volumes[row["label"] or "(unlabelled)"].append(float(row["volume_ml"]))
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>medseg-reasoning batch</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}</style></head><body>",
        "<h1>Batch report</h1>",
        "<p>Research use only, not for diagnosis.</p>",
        f"<p>{len(studies)} studies: {counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} skipped; "
        f"{elapsed_s:.1f} s in this run. Every row: <a href='results.csv'>results.csv</a>.</p>",
        "<h2>Volumes per structure</h2>",
    ]
    if not volumes:
        parts.append("<p>No structure was segmented.</p>")
    for label, values in sorted(volumes.items()):
        parts.append(f"<h3>{html.escape(label)}</h3>")
        parts.append(
            f"<p>n = {len(values)}, median {_median(values):.1f} mL, range {min(values):.1f} to {max(values):.1f} mL</p>"
        )
        png = _histogram(label, values)
        if png is not None:
            encoded = base64.b64encode(png).decode("ascii")
            parts.append(
                f"<img alt='volume distribution of {html.escape(label)}' src='data:image/png;base64,{encoded}'>"
            )
    failures = [r for r in rows if r["status"] != "ok"]
    parts.append("<h2>Failed and skipped studies</h2>")
    if not failures:
        parts.append("<p>None.</p>")
    else:
        parts.append("<table><tr><th>study</th><th>input</th><th>status</th><th>reason</th></tr>")
        for r in failures:
            cells = (r["study"], r["input"], r["status"], r["error"])
            parts.append("<tr>" + "".join(f"<td>{html.escape(str(c or ''))}</td>" for c in cells) + "</tr>")
        parts.append("</table>")
    parts.append("</body></html>\n")
    write_text_atomic(out / "report.html", "\n".join(parts))


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _histogram(label: str, values: Sequence[float]) -> bytes | None:
    """A PNG histogram of ``values``; None without matplotlib (the numbers above it still say the spread)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
    try:
        ax.hist(values, bins=min(max(len(values), 1), 20), color="#4a7ab0")
        ax.set_xlabel("volume (mL)")
        ax.set_ylabel("studies")
        ax.set_title(label)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        return buffer.getvalue()
    finally:
        plt.close(fig)
