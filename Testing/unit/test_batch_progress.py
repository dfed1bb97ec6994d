"""The batch's progress lines (stderr, not a terminal): done / total, failed, running and the rate per study."""

from __future__ import annotations

from types import SimpleNamespace

from MedSegReasoning.batch.progress import Progress


def test_each_line_counts_done_failed_and_running(capsys):
    progress = Progress(3, workers=2)
    for key, status in (("a", "ok"), ("b", "failed"), ("c", "ok")):
        progress.done(
            SimpleNamespace(key=key),
            SimpleNamespace(status=status, error="bad" if status == "failed" else "", seconds=0.1),
        )
    progress.close()
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("[1/3] a: ok") and "0 failed, 2 running" in lines[0]
    assert lines[1].startswith("[2/3] b: failed: bad") and "1 failed, 1 running" in lines[1]
    assert lines[2].startswith("[3/3] c: ok") and "1 failed, 0 running" in lines[2]
    assert all("studies/min" in line for line in lines)
