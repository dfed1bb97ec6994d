"""The module's self-test (Slicer's "Reload and Test", ``MedSegReasoningChatTest``), run inside Slicer on its own
sample data: scene writing always; a full round with the replay reasoner when the local backend can start (skipped,
with the reason, when it cannot). ``test`` is the ``ScriptedLoadableModuleTest`` (its asserts and ``delayDisplay``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any


def scene_writing_on_sample_data(test: Any) -> None:
    """The scene writer on MRHead: a segment written from a mask reads back as the same voxels, with no change
    detected."""
    import numpy as np
    import SampleData
    import slicer

    from ..wire.masks import CompactMask
    from .scene import SceneEntity, SessionScene

    test.delayDisplay("Loading MRHead")
    volume = SampleData.downloadSample("MRHead")
    session = SessionScene.create(slicer.mrmlScene, volume, "self-test")
    mask = np.zeros(slicer.util.arrayFromVolume(volume).shape, dtype=bool)
    mask[60:70, 100:140, 100:140] = True
    session.write_entity(SceneEntity("E1", "Brain", CompactMask.from_dense(mask), (220, 120, 60), 65, "test"))
    written = slicer.util.arrayFromSegmentBinaryLabelmap(session.segmentation_node, "E1", volume)
    test.assertTrue(np.array_equal(written.astype(bool), mask))
    test.assertEqual(session.changes(), [])
    test.delayDisplay("Scene writing test passed")


def round_with_replay_reasoner_on_sample_data(test: Any, venv: str) -> None:
    """A full round on MRHead through a local backend in ``venv`` that answers from a replay file: the scene gets
    the entity, the segment's volume equals the engine's, undo removes it. Skipped when no backend is installed or
    it does not start."""
    import json

    import SampleData
    import slicer

    from .backend_setup import BackendSetup, is_installed
    from .scene import SessionScene, volume_geometry_lps
    from .scene_sync import SceneSync

    if not is_installed(venv):
        test.delayDisplay(f"Skipped the round test: no backend installed in {venv} (press Install first).")
        test.skipTest(f"no backend installed in {venv}")
    volume = SampleData.downloadSample("MRHead")
    k = slicer.util.arrayFromVolume(volume).shape[0] // 2
    ni = slicer.util.arrayFromVolume(volume).shape[2]
    box = [ni // 2 - 30, ni // 2 - 30, ni // 2 + 30, ni // 2 + 30]
    answers = [
        {
            "round": 1,
            "step": "pick_slice",
            "raw": json.dumps({"reasoning": "mid", "targets": [{"slice": k, "label": "brain"}]}),
        },
        {
            "round": 1,
            "step": "locate",
            "raw": json.dumps(
                {"reasoning": "centre", "targets": [{"slice": k, "bbox": box, "points": [], "label": "brain"}]}
            ),
        },
    ]
    replay = os.path.join(tempfile.mkdtemp(prefix="medseg-selftest-"), "answers.jsonl")
    with open(replay, "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(a) + "\n" for a in answers))
    setup = BackendSetup(venv_dir=Path(venv), server_args=["--reasoner", f"replay:{replay}"])
    test.delayDisplay("Starting the local backend with the replay reasoner")
    try:
        client = setup.start()
    except Exception as exc:
        test.delayDisplay(f"Skipped the round test: the backend did not start ({exc}).")
        test.skipTest(f"the backend did not start: {exc}")
    try:
        g = volume_geometry_lps(volume)
        sid = client.create_session()
        client.upload_volume(sid, slicer.util.arrayFromVolume(volume), g.origin, g.spacing, g.direction, "MR")
        result = client.ask(sid, "Segment the brain.", propagate=False)
        test.assertEqual([e.id for e in result.entities], ["E1"])
        sync = SceneSync(SessionScene.create(slicer.mrmlScene, volume, sid))
        test.assertEqual(sync.reconcile(client), ["E1"])
        engine_ml = client.entity(sid, "E1").data["measurements"]["volume_ml"]
        test.assertAlmostEqual(sync.segment_volumes_ml()["E1"], engine_ml, places=6)
        test.assertEqual(sync.undo_round(client).removed, ["E1"])
        test.assertEqual(sync.scene.entity_ids(), [])
    finally:
        setup.server.stop()
    test.delayDisplay("Round test passed")
