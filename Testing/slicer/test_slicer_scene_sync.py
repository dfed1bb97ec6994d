"""Scene <-> backend sync: slicer-core's real MRML, a real server on loopback, real LiteMedSAM, an oblique volume.

The volume is written as an LPS NRRD by hand and loaded by Slicer's own reader; what is uploaded is what the module
uploads (the node's array and ``volume_geometry_lps``). The replayed reasoner boxes structure A (round 1) and B
(round 2); LiteMedSAM segments them. Every check compares the scene with the backend through the client.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support.server import live_server, offline_terminology, small_volume, truth_masks, write_replay
from support.slicer import (
    load_volume_node,
    new_scene,
    oblique_geometry,
    paint_segment,
    require_slicer_core,
    save_and_reload,
    write_nrrd_lps,
)

from MedSegReasoning.wire.client import MedSegClient
from MedSegReasoning.wire.errors import NotFound
from MedSegReasoning.wire.geometry import LPS_TO_RAS
from MedSegReasoning.wire.masks import CompactMask

require_slicer_core()

import slicer  # noqa: E402
import vtk  # noqa: E402
from vtk.util import numpy_support  # noqa: E402

from MedSegReasoning.slicer.scene import SessionScene, volume_geometry_lps  # noqa: E402
from MedSegReasoning.slicer.scene_sync import SceneSync, segment_volume_ml  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def backend(tmp_path_factory, litemedsam):
    from MedSegReasoning.reasoning.spec import create_reasoner
    from MedSegReasoning.server.engine import Engine

    tmp = tmp_path_factory.mktemp("sync-server")
    replay = write_replay(tmp / "answers.jsonl", rounds=3)
    engine = Engine(
        segmenter=litemedsam,
        reasoner_factory=lambda: create_reasoner(f"replay:{replay}"),
        terminology=offline_terminology(),
    )
    with live_server(tmp, engine) as (server, tokens):
        yield MedSegClient(server.url, tokens["alice"])


@pytest.fixture
def synced(tmp_path: Path, backend: MedSegClient):
    """A new backend session on the oblique volume as the module would make it, with an empty SceneSync."""
    geometry = oblique_geometry()
    volume = small_volume()
    scene = new_scene()
    node = load_volume_node(scene, write_nrrd_lps(tmp_path / "oblique.nrrd", volume.array, geometry))
    array = slicer.util.arrayFromVolume(node)
    lps = volume_geometry_lps(node)
    sid = backend.create_session()
    backend.upload_volume(sid, array, lps.origin, lps.spacing, lps.direction, "CT")
    sync = SceneSync(SessionScene.create(scene, node, sid))
    yield sync, backend, sid
    backend.delete_session(sid)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def _segment_ras(sync: SceneSync, segment_id: str) -> np.ndarray:
    """Where Slicer's own labelmap of the segment puts its voxels (its image-to-world matrix and extent)."""
    image = slicer.vtkOrientedImageData()
    assert sync.scene.segmentation_node.GetBinaryLabelmapRepresentation(segment_id, image)
    x0, x1, y0, y1, z0, z1 = image.GetExtent()
    values = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(z1 - z0 + 1, y1 - y0 + 1, -1)
    k, j, i = np.nonzero(values)
    m = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(m)
    a = np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
    ijk1 = np.stack([i + x0, j + y0, k + z0, np.ones_like(i)], axis=1).astype(float)
    return (ijk1 @ a.T)[:, :3]


def _sorted(points: np.ndarray) -> np.ndarray:
    return points[np.lexsort(np.round(points, 3).T[::-1])]


def _paint(sync: SceneSync, dense: np.ndarray, segment_id: str) -> None:
    """What a Segment Editor stroke leaves behind: the segment's labelmap replaced on the volume's grid."""
    paint_segment(sync.scene.volume_node, sync.scene.segmentation_node, segment_id, dense)


def test_entities_are_placed_on_the_oblique_volume_where_the_engine_segmented_them(synced) -> None:
    sync, client, sid = synced
    shape = small_volume().shape
    r1 = client.ask(sid, "Segment the bright mass.")
    r2 = client.ask(sid, "Now the cyst next to E1.")
    assert [e.id for e in r1.entities + r2.entities] == ["E1", "E2"]
    assert sync.reconcile(client) == ["E1", "E2"]
    assert sync.scene.entity_ids() == ["E1", "E2"]
    assert sync.reconcile(client) == []  # nothing changed: nothing rewritten

    truth_a, truth_b = truth_masks()
    geometry = volume_geometry_lps(sync.scene.volume_node)
    for entity, truth in ((r1.entities[0], truth_a), (r2.entities[0], truth_b)):
        backend_mask = entity.mask.to_dense(shape)
        assert _dice(backend_mask, truth) > 0.85, "LiteMedSAM found the structure"
        np.testing.assert_array_equal(sync.scene.current_mask(entity.id).to_dense(shape), backend_mask)
        # in physical space: Slicer's labelmap voxels are the engine's voxels through the engine's LPS geometry
        k, j, i = np.nonzero(backend_mask)
        engine_ras = geometry.index_to_physical(np.stack([i, j, k], axis=1)) @ LPS_TO_RAS.T
        np.testing.assert_allclose(_sorted(_segment_ras(sync, entity.id)), _sorted(engine_ras), atol=1e-4)
        segment = sync.scene.segmentation.GetSegment(entity.id)
        assert segment.GetName() == entity.name
        np.testing.assert_allclose(segment.GetColor(), np.asarray(entity.color) / 255.0, atol=1e-6)
        markup = sync.scene.markup_node(entity.id)
        assert markup.GetNthControlPointDescription(0) == entity.findings


def test_segment_statistics_volume_equals_the_engines_volume_ml(synced) -> None:
    sync, client, sid = synced
    client.ask(sid, "Segment the bright mass.")
    sync.reconcile(client)
    engine_ml = client.entity(sid, "E1").data["measurements"]["volume_ml"]
    volumes = sync.segment_volumes_ml()
    assert engine_ml > 0.1
    assert volumes["E1"] == pytest.approx(engine_ml, rel=1e-9)
    # independent count: voxels of the segment x voxel volume from the node's IJK-to-RAS determinant
    node = sync.scene.volume_node
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    det = abs(np.linalg.det(np.array([[m.GetElement(r, c) for c in range(3)] for r in range(3)])))
    assert volumes["E1"] == pytest.approx(sync.scene.current_mask("E1").voxel_count * det / 1000.0, rel=1e-9)


def test_an_edit_in_slicer_goes_back_as_the_entitys_mask(synced) -> None:
    sync, client, sid = synced
    shape = small_volume().shape
    client.ask(sid, "Segment the bright mass.")
    sync.reconcile(client)
    assert sync.pending_edits() == {}

    edited = sync.scene.current_mask("E1").to_dense(shape)
    edited[0, 5:9, 40:46] = True  # a paint stroke away from the structure
    edited[1][edited[1].nonzero()[0][0]] = False  # and an erased row
    _paint(sync, edited, "E1")
    pending = sync.pending_edits()
    assert list(pending) == ["E1"]
    np.testing.assert_array_equal(pending["E1"].to_dense(shape), edited)

    assert sync.push_edits(client, sid) == ["E1"]
    np.testing.assert_array_equal(client.entity_mask(sid, "E1").to_dense(shape), edited)
    after = client.entity(sid, "E1")
    assert after.data["edited"] is True and after.data["revision"] == 2
    assert sync.pending_edits() == {} and sync.push_edits(client, sid) == []
    # the engine's volume of the edited mask is what Segment Statistics now reports
    assert sync.segment_volumes_ml()["E1"] == pytest.approx(after.data["measurements"]["volume_ml"], rel=1e-9)


def test_review_rename_recolour_and_delete_both_ways(synced) -> None:
    sync, client, sid = synced
    client.ask(sid, "Segment the bright mass.")
    client.ask(sid, "Now the cyst next to E1.")
    sync.reconcile(client)
    display = sync.scene.segmentation_node.GetDisplayNode()

    sync.sync_review(client, sid, "E1", "confirmed")
    assert client.entity(sid, "E1").review == "confirmed" and sync.scene.review_of("E1") == "confirmed"
    sync.sync_review(client, sid, "E2", "rejected")
    assert client.entity(sid, "E2").review == "rejected" and not display.GetSegmentVisibility("E2")

    sync.recolor(client, sid, "E1", (12, 200, 34))
    assert client.entity(sid, "E1").color == (12, 200, 34)
    np.testing.assert_allclose(sync.scene.segmentation.GetSegment("E1").GetColor(), (12 / 255, 200 / 255, 34 / 255))

    sync.rename(client, sid, "E1", "upper mass")
    assert client.entity(sid, "E1").label == "upper mass"
    assert sync.scene.segmentation.GetSegment("E1").GetName() == client.entity(sid, "E1").name

    # the user renames and recolours in Slicer's Segmentations module: picked up and sent to the backend
    segment = sync.scene.segmentation.GetSegment("E2")
    segment.SetName("small cyst")
    segment.SetColor(0.0, 0.0, 1.0)
    assert sync.pull_user_changes(client, sid) == ["E2"]
    backend_e2 = client.entity(sid, "E2")
    assert backend_e2.label == "small cyst" and backend_e2.color == (0, 0, 255)
    assert sync.pull_user_changes(client, sid) == []

    sync.delete(client, sid, "E2")
    with pytest.raises(NotFound):
        client.entity(sid, "E2")
    assert sync.scene.entity_ids() == ["E1"] and sync.scene.markup_node("E2") is None


def test_undo_round_removes_the_rounds_segments_and_restores_the_rest(synced) -> None:
    sync, client, sid = synced
    shape = small_volume().shape
    client.ask(sid, "Segment the bright mass.")
    e1_before = sync.apply_entity(client, sid, "E1").mask
    client.ask(sid, "Now the cyst next to E1.")
    sync.reconcile(client)
    assert sync.scene.entity_ids() == ["E1", "E2"]

    outcome = sync.undo_round(client, sid)
    assert (outcome.round, outcome.removed) == (2, ["E2"])
    assert sync.scene.entity_ids() == ["E1"] == [e.id for e in client.entities(sid)]
    assert sync.scene.markup_node("E2") is None
    np.testing.assert_array_equal(sync.scene.current_mask("E1").to_dense(shape), e1_before.to_dense(shape))

    outcome = sync.undo_round(client, sid)
    assert outcome.removed == ["E1"] and sync.scene.entity_ids() == [] == client.entities(sid)


def test_a_segment_the_user_added_by_hand_is_left_alone(synced) -> None:
    sync, client, sid = synced
    client.ask(sid, "Segment the bright mass.")
    sync.reconcile(client)
    sync.scene.segmentation.AddEmptySegment("hand", "my own", (0.5, 0.5, 0.5))
    assert sync.reconcile(client) == [] and "hand" in sync.scene.entity_ids()
    assert sync.pending_edits() == {}
    assert segment_volume_ml(sync.scene.segmentation_node, "hand") == 0.0
    assert isinstance(sync.scene.current_mask("E1"), CompactMask)


def test_a_saved_and_reloaded_scene_picks_the_session_up_again(synced, tmp_path: Path) -> None:
    sync, client, sid = synced
    shape = small_volume().shape
    client.ask(sid, "Segment the bright mass.")
    sync.reconcile(client)
    sync.sync_review(client, sid, "E1", "confirmed")

    reloaded = save_and_reload(sync.scene.scene, tmp_path / "saved")
    assert SessionScene.session_ids(reloaded) == [sid]
    again = SceneSync(SessionScene.find(reloaded, sid))
    assert again.pending_edits() == {}  # the digests came back with the segments: nothing looks edited
    again.reconcile(client)
    assert again.scene.entity_ids() == ["E1"] and again.scene.review_of("E1") == "confirmed"
    np.testing.assert_array_equal(
        again.scene.current_mask("E1").to_dense(shape), client.entity_mask(sid, "E1").to_dense(shape)
    )
    assert again.pending_edits() == {} and again.pull_user_changes(client) == []
