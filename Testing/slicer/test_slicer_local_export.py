"""DICOM-SEG and SR of a Slicer-made session, written on the Slicer machine (``slicer/local_export.py``).

Everything is real except the models: an oblique, flipped CT series written with pydicom, loaded by Slicer's own
reader (slicer-core's archetype storage node, given the position-sorted files as DICOMScalarVolumePlugin does,
with the ``DICOM.instanceUIDs`` attribute it sets), uploaded the way the module does (``BackendLink.set_volume``
with ``volume_geometry_lps`` and the series' UIDs), a round with the user's box on a real server on loopback
(oracle segmenter: the true kidney cut to the prompt), the segment edited in the MRML scene and not yet pushed,
then ``export_session_locally`` running this venv's ``medseg-reasoning export`` as a child process. The SEG is
read back with highdicom and checked voxel by voxel in physical space, both objects pass dciodvfy.

The one stand-in: ``DicomDatabase`` answers ``fileForInstance`` / ``instanceValue`` / ``filesForSeries`` from
the files themselves, where Slicer asks its ctkDICOMDatabase (which needs the Slicer application).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from support.dialogue import KIDNEY, abdomen_labels, abdomen_volume, prompt_on
from support.export import index_set, mask_points, oblique_abdomen_geometry, write_ct
from support.external_tools import dciodvfy_errors
from support.fakes import oracle
from support.server import live_server, offline_terminology, zip_bytes
from support.slicer import new_scene, paint_segment, require_slicer_core

from MedSegReasoning.slicer.local_export import (
    LocalExportFailed,
    export_session_locally,
    series_files,
    series_uids,
    unpack_session_archive,
)
from MedSegReasoning.volume import load_volume, write_dicom_series
from MedSegReasoning.wire.client import MedSegClient
from MedSegReasoning.wire.errors import InputError, ServiceError
from MedSegReasoning.wire.geometry import Geometry

require_slicer_core()

import slicer  # noqa: E402

from MedSegReasoning.slicer.backend_link import BackendLink  # noqa: E402
from MedSegReasoning.slicer.scene import SessionScene, volume_geometry_lps  # noqa: E402
from MedSegReasoning.slicer.scene_sync import SceneSync  # noqa: E402

pytestmark = pytest.mark.slow  # live servers, a private Orthanc, dciodvfy: out of the fast lane

PYTHON = Path(sys.executable)  # this venv's interpreter: the "backend venv" of these tests
VERIFIER = "Curie^Marie"


class DicomDatabase:
    """The three ctkDICOMDatabase calls ``local_export`` makes, answered from the files."""

    def __init__(self, *folders: Path) -> None:
        self.files: dict[str, str] = {}
        self.series: dict[str, list[str]] = {}
        for folder in folders:
            for path in sorted(folder.iterdir()):
                ds = pydicom.dcmread(path, stop_before_pixels=True)
                self.files[str(ds.SOPInstanceUID)] = str(path)
                self.series.setdefault(str(ds.SeriesInstanceUID), []).append(str(path))

    def fileForInstance(self, uid: str) -> str:
        return self.files.get(uid, "")

    def instanceValue(self, uid: str, tag: str) -> str:
        group, element = (int(x, 16) for x in tag.split(","))
        return str(pydicom.dcmread(self.files[uid], stop_before_pixels=True)[group, element].value)

    def filesForSeries(self, uid: str) -> list[str]:
        return self.series.get(uid, [])


def slicer_load(scene, folder: Path):
    """Slicer's DICOMScalarVolumePlugin, minus the database: the files sorted along the slice normal go to the
    archetype reader (vtkITK/GDCM), and the node gets one SOP Instance UID per slice in ``DICOM.instanceUIDs``."""
    files = [str(f) for f in load_volume(folder).source.dicom.files]  # position order, as the plugin sorts them
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", folder.name)
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(files[0])
    for f in files:
        storage.AddFileName(f)
    storage.SetSingleFile(0)
    assert storage.ReadData(node), f"Slicer could not read {folder}"
    uids = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    node.SetAttribute("DICOM.instanceUIDs", " ".join(uids))
    return node


def labels_on(geometry: Geometry, shape: tuple[int, int, int]) -> np.ndarray:
    """The synthetic abdomen's labels on another grid over the same voxels (the written grid, reordered)."""
    k, j, i = (a.ravel() for a in np.indices(shape))
    ijk = oblique_abdomen_geometry().physical_to_index(geometry.index_to_physical(np.stack([i, j, k], axis=1)))
    ijk = np.round(ijk).astype(int)
    return abdomen_labels()[ijk[:, 2], ijk[:, 1], ijk[:, 0]].reshape(shape)


@pytest.fixture(scope="module")
def ct(tmp_path_factory):
    """The oblique series, its Slicer node, its database and the kidney on the node's grid."""
    root = tmp_path_factory.mktemp("local-export")
    series = write_ct(root / "ct")
    scene = new_scene()
    node = slicer_load(scene, series)
    geometry = volume_geometry_lps(node)
    labels = labels_on(geometry, tuple(slicer.util.arrayFromVolume(node).shape))
    return {"root": root, "series": series, "scene": scene, "node": node, "db": DicomDatabase(series), "labels": labels}


@pytest.fixture(scope="module")
def client(ct):
    from MedSegReasoning.server.engine import Engine

    voxels = slicer.util.arrayFromVolume(ct["node"])  # what the Slicer side sends
    engine = Engine(segmenter=oracle(voxels, ct["labels"] == KIDNEY), terminology=offline_terminology())
    (ct["root"] / "server").mkdir()
    with live_server(ct["root"] / "server", engine) as (server, tokens):
        yield MedSegClient(server.url, tokens["alice"])


def module_session(client: MedSegClient, node, db, *, send_uids: bool = True, array=None) -> tuple[BackendLink, str]:
    """What the module does: the node's array and LPS geometry (and the series' UIDs) into the link, the session
    made on the first round, a round with the user's box on the kidney's largest slice. ``array``: other voxels
    than the node's (another reader's)."""
    link = BackendLink(client)
    g = volume_geometry_lps(node)
    uids = series_uids(node, db) if send_uids else None
    voxels = slicer.util.arrayFromVolume(node) if array is None else array
    link.set_volume(voxels, g.origin, g.spacing, g.direction, "CT", dicom=uids)
    sid = link.ensure_session()
    labels = labels_on(g, tuple(slicer.util.arrayFromVolume(node).shape))
    k = int(np.argmax((labels == KIDNEY).sum(axis=(1, 2))))
    p = prompt_on(labels, KIDNEY, k)
    prompt = {"slice": p.k, "box": list(p.box), "points": [list(p.points[0])], "point_labels": [1]}
    result = client.ask(sid, "Segment the left kidney.", prompts=[{**prompt, "label": "left kidney"}])
    assert [e.id for e in result.entities] == ["E1"]
    return link, sid


def paint(sync: SceneSync, dense: np.ndarray, segment_id: str) -> None:
    """What a Segment Editor stroke leaves behind: the segment's labelmap replaced on the volume's grid."""
    paint_segment(sync.scene.volume_node, sync.scene.segmentation_node, segment_id, dense)


def seg_points(path: Path) -> np.ndarray:
    """LPS centres of segment 1's voxels as highdicom reads the SEG (its own volume and affine)."""
    import highdicom as hd

    volume = hd.seg.segread(path).get_volume(segment_numbers=[1], combine_segments=False)
    index = np.stack(np.nonzero(np.asarray(volume.array)[..., 0] > 0), axis=1)
    return index @ volume.affine[:3, :3].T + volume.affine[:3, 3]


# ---------------------------------------------------------------------------------------------------------------


def test_slicer_session_exports_seg_and_sr_that_match_what_the_user_sees(ct, client, tmp_path):
    node, db = ct["node"], ct["db"]
    _, sid = module_session(client, node, db)
    shape = tuple(slicer.util.arrayFromVolume(node).shape)
    sync = SceneSync(SessionScene.create(ct["scene"], node, sid))
    assert sync.reconcile(client) == ["E1"]
    client.update_entity(sid, "E1", review="confirmed")
    # the user erases the kidney's top slice in Segment Editor and exports without any other step
    edited = sync.scene.current_mask("E1").to_dense(shape)
    edited[np.flatnonzero(edited.any(axis=(1, 2)))[-1]] = False
    paint(sync, edited, "E1")
    assert list(sync.pending_edits()) == ["E1"]

    files = series_files(node, db)
    assert sorted(files) == sorted(str(p) for p in ct["series"].iterdir())
    out = tmp_path / "export"
    done = export_session_locally(client, sid, files, PYTHON, out_dir=out, verifier=VERIFIER, scene_sync=sync)

    assert [f.name for f in done.files] == ["seg.dcm", "sr.dcm"] and all(f.is_file() for f in done.files)
    assert sync.pending_edits() == {}, "the edit was pushed before the export"
    np.testing.assert_array_equal(client.entity(sid, "E1", mask=True).mask.to_dense(shape), edited)
    assert any("same grid, same voxels" in line for line in done.notes), done.notes
    assert any("SR: verification VERIFIED" in line for line in done.notes), done.notes

    seg_path, sr_path = out / "seg.dcm", out / "sr.dcm"
    geometry = volume_geometry_lps(node)
    assert index_set(seg_points(seg_path), geometry) == index_set(mask_points(edited, geometry), geometry)
    seg = pydicom.dcmread(seg_path)
    source = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID and seg.PatientID == source.PatientID
    referenced = {item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced <= set(node.GetAttribute("DICOM.instanceUIDs").split())
    assert seg.SegmentSequence[0].SegmentLabel == "Left kidney"
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "SEMIAUTOMATIC", "the user's box and the user's edit"
    sr = pydicom.dcmread(sr_path)
    assert sr.VerificationFlag == "VERIFIED"
    assert str(sr.VerifyingObserverSequence[0].VerifyingObserverName) == VERIFIER
    for path in (seg_path, sr_path):
        assert dciodvfy_errors(path) == [], path.name

    # the session records the series' identity (sent with the volume) and no path
    unpack_session_archive(client.session_archive(sid), tmp_path / "copy")
    record = json.loads((tmp_path / "copy" / "session.json").read_text())["volume"]
    assert record["path"] == "" and record["dicom"]["series_instance_uid"] == source.SeriesInstanceUID

    # no verifier, or an entity back to proposed: the same export is UNVERIFIED
    again = export_session_locally(client, sid, files, PYTHON, out_dir=tmp_path / "unverified")
    assert pydicom.dcmread(again.files[1]).VerificationFlag == "UNVERIFIED"
    assert any("give --verifier" in line for line in again.notes)
    client.update_entity(sid, "E1", review="proposed")
    third = export_session_locally(client, sid, files, PYTHON, out_dir=tmp_path / "proposed", verifier=VERIFIER)
    assert pydicom.dcmread(third.files[1]).VerificationFlag == "UNVERIFIED"


def test_a_series_that_is_not_the_segmented_one_is_refused(ct, client, tmp_path):
    _, sid = module_session(client, ct["node"], ct["db"])
    # another grid: the same voxels on an axis-aligned grid
    other = write_ct(tmp_path / "axial", geometry=Geometry.from_arrays((0.0, 0.0, 0.0), (2.0, 2.0, 4.0), np.eye(3)))
    with pytest.raises(InputError, match=r"does not lie on the grid of the volume the session was segmented on"):
        export_session_locally(client, sid, sorted(other.iterdir()), PYTHON, out_dir=tmp_path / "a")
    # the same voxels and grid written again under new UIDs: another series, refused by the recorded UIDs
    copy = write_ct(tmp_path / "copy", seed=99)
    with pytest.raises(InputError, match=r"the loaded series is not the one the session was segmented on") as info:
        export_session_locally(client, sid, sorted(copy.iterdir()), PYTHON, out_dir=tmp_path / "b")
    assert "/tmp" not in str(info.value).split("segmented on")[0], "temporary paths are named for the user"
    # and nothing was written
    assert not any((tmp_path / name).exists() and any((tmp_path / name).iterdir()) for name in ("a", "b"))


def test_fractional_slope_series_read_as_float64_by_slicer(ct, client, tmp_path):
    """Slicer's reader turns a fractional rescale slope into float64, the engine's into float32: the export
    recomputes the float64 values from the files and finds the upload's hash. A reader that rounded otherwise is
    accepted on the Series Instance UID the module sent (fractional values only); without it, refused."""
    folder = tmp_path / "fractional"
    write_dicom_series(
        abdomen_volume().array.astype(np.float32) * 0.5 + 0.25, oblique_abdomen_geometry(), folder, modality="CT"
    )
    scene = new_scene()
    node = slicer_load(scene, folder)
    assert slicer.util.arrayFromVolume(node).dtype == np.float64
    assert load_volume(folder).array.dtype == np.float32
    db = DicomDatabase(folder)
    files = series_files(node, db)

    _, sid = module_session(client, node, db, send_uids=False)
    done = export_session_locally(client, sid, files, PYTHON, out_dir=tmp_path / "out")
    assert any("same grid, same voxels (uploaded as float64)" in line for line in done.notes), done.notes
    geometry = volume_geometry_lps(node)
    mask = client.entity(sid, "E1", mask=True).mask.to_dense(tuple(slicer.util.arrayFromVolume(node).shape))
    assert index_set(seg_points(done.files[0]), geometry) == index_set(mask_points(mask, geometry), geometry)

    rounded = np.nextafter(slicer.util.arrayFromVolume(node), np.inf)  # the last bit of every voxel differs
    _, with_uids = module_session(client, node, db, array=rounded)
    done = export_session_locally(client, with_uids, files, PYTHON, out_dir=tmp_path / "rounded")
    assert any("same grid, same Series Instance UID" in line for line in done.notes), done.notes
    _, bare = module_session(client, node, db, send_uids=False, array=rounded)  # an old client: voxels only
    with pytest.raises(InputError, match="records no Series Instance UID"):
        export_session_locally(client, bare, files, PYTHON, out_dir=tmp_path / "refused")


def test_bad_calls_fail_with_a_sentence(ct, client, tmp_path):
    files = series_files(ct["node"], ct["db"])
    with pytest.raises(InputError, match="only DICOM-SEG and SR"):
        export_session_locally(client, "x", files, PYTHON, out_dir=tmp_path, formats=["nifti"])
    with pytest.raises(LocalExportFailed, match="press Install"):
        export_session_locally(client, "x", files, tmp_path / "no-venv" / "bin" / "python", out_dir=tmp_path)
    with pytest.raises(InputError, match="names no DICOM files"):
        export_session_locally(client, "x", [], PYTHON, out_dir=tmp_path)
    with pytest.raises(InputError, match="are gone"):
        export_session_locally(client, "x", [str(tmp_path / "gone.dcm")], PYTHON, out_dir=tmp_path)


def test_series_files_fall_back_to_the_whole_series(ct):
    node, db = ct["node"], ct["db"]
    uids = node.GetAttribute("DICOM.instanceUIDs").split()
    partial = DicomDatabase(ct["series"])
    del partial.files[uids[3]]  # one instance no longer indexed: the series is taken by its UID
    assert sorted(series_files(node, partial)) == sorted(
        db.filesForSeries(series_uids(node, db)["series_instance_uid"])
    )
    assert series_files(None, db) == [] and series_uids(None, db) == {}
    assert series_files(node, None) == [] and series_uids(node, None) == {}, "no DICOM database (not from DICOM)"
    source = pydicom.dcmread(series_files(node, db)[0], stop_before_pixels=True)
    assert series_uids(node, db) == {
        "study_instance_uid": source.StudyInstanceUID,
        "series_instance_uid": source.SeriesInstanceUID,
        "frame_of_reference_uid": source.FrameOfReferenceUID,
    }


def test_session_archive_members_are_checked(tmp_path):
    good = zip_bytes({"session.json": b"{}", "masks/" + "a" * 32 + ".npz": b"x"})
    assert (unpack_session_archive(good, tmp_path / "ok") / "masks" / ("a" * 32 + ".npz")).read_bytes() == b"x"
    for bad in (
        zip_bytes({"session.json": b"{}", "../evil.py": b"x"}),
        zip_bytes({"masks/" + "a" * 32 + ".npz": b"x"}),
        b"not a zip",
    ):
        with pytest.raises(LocalExportFailed):
            unpack_session_archive(bad, tmp_path / "bad")
    assert not (tmp_path / "evil.py").exists()


def test_series_uids_travel_with_the_volume_and_old_servers_still_take_it(ct, client, monkeypatch):
    """The optional ``dicom`` object of X-MedSeg-Volume: recorded by the session; a malformed UID is refused with
    a sentence; a server that predates the field (it refuses unknown fields) gets the volume without it."""
    import MedSegReasoning.server.routes.sessions as app_module
    from MedSegReasoning.server.errors import bad_request
    from MedSegReasoning.wire.errors import RequestRejected

    node, db = ct["node"], ct["db"]
    g = volume_geometry_lps(node)
    array = slicer.util.arrayFromVolume(node)
    uids = series_uids(node, db)
    sid = client.create_session()
    with pytest.raises(RequestRejected, match="must be a DICOM UID"):
        client.upload_volume(
            sid, array, g.origin, g.spacing, g.direction, "CT", dicom={**uids, "study_instance_uid": "x"}
        )

    current = app_module.parse_volume_meta

    def old_server(header, limits):
        if "dicom" in json.loads(header):
            raise bad_request("volume_header_invalid", "the X-MedSeg-Volume header has unknown field(s) ['dicom'].")
        return current(header, limits)

    monkeypatch.setattr(app_module, "parse_volume_meta", old_server)
    client._hashes.clear()  # send the voxels, not the hash of an earlier upload
    answer = client.upload_volume(sid, array, g.origin, g.spacing, g.direction, "CT", dicom=uids)
    assert answer["content_sha256"] and client.session(sid)["volume"]


def test_seg_and_sr_go_to_a_pacs(ct, client, tmp_path, monkeypatch):
    """``dicomweb=``: the backend's STOW-RS (credentials from the environment) to a real Orthanc on loopback."""
    from support.export import running_orthanc

    from MedSegReasoning.export.pacs import find_instances

    node, db = ct["node"], ct["db"]
    _, sid = module_session(client, node, db)
    files = series_files(node, db)
    study = series_uids(node, db)["study_instance_uid"]
    with running_orthanc(tmp_path / "orthanc") as orthanc:
        for name, value in orthanc.env().items():
            monkeypatch.setenv(name, value)
        done = export_session_locally(client, sid, files, PYTHON, dicomweb=orthanc.dicomweb)
        assert done.stored and done.files == []
        assert any(line.startswith("stored SEG at") for line in done.notes), done.notes
        stored = {item["modality"] for item in find_instances(orthanc.dicomweb, study)}
        assert {"SEG", "SR"} <= stored
        monkeypatch.setenv("MEDSEG_DICOMWEB_PASSWORD", "wrong")
        with pytest.raises(ServiceError, match="MEDSEG_DICOMWEB"):
            export_session_locally(client, sid, files, PYTHON, dicomweb=orthanc.dicomweb)
