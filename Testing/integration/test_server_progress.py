"""A round's ``progress`` events move ``fraction`` through propagation and name the slice (the server's side of the
progress a user sees; the bar itself: unit/test_progress.py)."""

from __future__ import annotations

from support.server import live_server, scripted_engine, small_volume

from MedSegReasoning.wire.client import MedSegClient


def test_server_progress_fraction_moves_through_propagation(tmp_path):
    """12 slices of 0.25 s each: the events during propagation must name the slice and raise the fraction."""
    volume = small_volume((12, 64, 64))
    engine = scripted_engine(None, shape=(12, 64, 64), delay_s=0.25)
    with live_server(tmp_path, engine) as (server, tokens):
        client = MedSegClient(server.url, tokens["alice"])
        sid = client.create_session()
        g = volume.geometry
        client.upload_volume(sid, volume.array, g.origin, g.spacing, g.direction, "CT")
        result = client.ask(sid, prompts=[{"slice": 6, "box": [12, 12, 32, 32], "label": "mass"}])
    progress = [data for name, data in result.events if name == "progress"]
    sliced = [d for d in progress if "propagating slice" in d["stage"]]
    assert len(sliced) >= 4, [d["stage"] for d in progress]
    fractions = [d["fraction"] for d in sliced]
    assert fractions == sorted(fractions) and fractions[0] < fractions[-1]
    assert 0.0 < fractions[0] and fractions[-1] <= 0.95
    assert sliced[-1]["stage"].endswith("slice 12 of 12")  # the last slice always goes out, so the bar ends full
