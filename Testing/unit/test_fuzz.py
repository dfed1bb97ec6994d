"""Property-based fuzzing (hypothesis) of the decoders that take bytes or text from outside, bounded in time.

Each property says what every input must get: a value, or the module's documented error, never another exception.
``derandomize=True`` makes the examples the same on every run (CI is deterministic) and ``database=None`` keeps no
state between runs; the example counts keep the whole file to a few seconds. A failure that hypothesis finds is
fixed in the code and its input kept below as an ``@example``, so it is replayed on every run.
"""

from __future__ import annotations

import base64
import io
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from MedSegReasoning.reasoning.answer import ReasonerOutputError
from MedSegReasoning.reasoning.parser import parse_answer
from MedSegReasoning.wire.errors import InputError
from MedSegReasoning.wire.masks import CompactMask
from MedSegReasoning.wire.session_archive import ArchiveRefused, pack_session, unpack_session

FUZZ = settings(
    max_examples=60,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# --- the answer parser ----------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)
target_like = st.fixed_dictionaries(
    {},
    optional={
        "slice": json_values,
        "label": json_values,
        "bbox": st.lists(json_values, max_size=5) | json_values,
        "points": st.lists(st.lists(json_values, max_size=3), max_size=3) | json_values,
        "ref": json_values,
    },
)
answer_like = st.fixed_dictionaries(
    {},
    optional={
        "reasoning": json_values,
        "targets": st.lists(target_like, max_size=3) | json_values,
        "clarification": json_values,
    },
)


@FUZZ
@given(st.one_of(st.text(max_size=200), answer_like.map(json.dumps), st.lists(target_like, max_size=3).map(json.dumps)))
@example('{"targets": [{"slice": 1e400, "bbox": [0, 0, 1, 1], "label": "x"}]}')
@example('<think>a</think><answer>{"bbox": [1, 2, 3, 4], "label": "x"}</answer> trailing')
def test_the_answer_parser_gives_an_answer_or_its_own_error(text):
    try:
        parse_answer(text)
    except ReasonerOutputError:
        pass


# --- the compact-mask decoder ---------------------------------------------------------------------------------


@FUZZ
@given(
    st.one_of(
        json_values,
        st.fixed_dictionaries(
            {"box": st.none() | st.lists(st.integers(-3, 12), min_size=0, max_size=7) | json_values},
            optional={
                "bits": st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()) | json_values,
                "encoding": json_values,
                "voxels": json_values,
            },
        ),
    )
)
def test_the_mask_decoder_gives_a_fitting_mask_or_input_error(obj):
    shape = (4, 5, 6)
    try:
        mask = CompactMask.from_json(obj, shape)
    except InputError:
        return
    dense = mask.to_dense(shape)  # an accepted mask always fits the volume it was checked against
    assert dense.shape == shape and int(dense.sum()) == mask.voxel_count


@FUZZ
@given(st.integers(0, 2**32 - 1), st.floats(0.0, 1.0))
def test_a_mask_survives_the_wire(seed, density):
    dense = np.random.default_rng(seed).random((3, 4, 5)) < density
    again = CompactMask.from_json(json.loads(json.dumps(CompactMask.from_dense(dense).to_json())), dense.shape)
    assert np.array_equal(again.to_dense(dense.shape), dense)


# --- the session-archive decoder ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> bytes:
    folder = tmp_path_factory.mktemp("session")
    (folder / "masks").mkdir()
    (folder / "session.json").write_text(json.dumps({"format": "medseg-reasoning/session", "entities": []}))
    buffer = io.BytesIO()
    np.savez_compressed(buffer, box=np.asarray([0, 0, 0, 1, 1, 1]), bits=np.asarray([255], np.uint8))
    (folder / "masks" / ("0" * 32 + ".npz")).write_bytes(buffer.getvalue())
    return pack_session(folder)


def _crc_broken(archive: bytes) -> bytes:
    """The archive with one byte of session.json's compressed data changed: the member's CRC no longer holds."""
    data = bytearray(archive)
    start = 30 + len("session.json") + 2
    data[start] ^= 0x01
    return bytes(data)


@FUZZ
@given(data=st.data())
def test_the_archive_decoder_unpacks_or_refuses(archive, tmp_path_factory, data):
    kind = data.draw(st.sampled_from(["bytes", "flip", "cut"]))
    if kind == "bytes":
        body = data.draw(st.binary(max_size=300))
    elif kind == "flip":
        position = data.draw(st.integers(0, len(archive) - 1))
        body = (
            archive[:position] + bytes([archive[position] ^ data.draw(st.integers(1, 255))]) + archive[position + 1 :]
        )
    else:
        body = archive[: data.draw(st.integers(0, len(archive)))]
    _unpack_or_refuse(body, tmp_path_factory.mktemp("unpack"))


def test_a_member_whose_crc_fails_is_refused(archive, tmp_path):
    """The seed hypothesis found: zipfile's 'Bad CRC-32' escaped as BadZipFile (the server's 500)."""
    with pytest.raises(ArchiveRefused):
        unpack_session(_crc_broken(archive), tmp_path / "s", 10**6)


def _unpack_or_refuse(body: bytes, folder: Path) -> None:
    target = folder / "s"
    try:
        unpack_session(body, target, 10**6)
    except ArchiveRefused:
        return
    written = sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file())
    assert all(n == "session.json" or n.startswith("masks/") for n in written), written
    assert not [p for p in folder.iterdir() if p.name != "s"], "nothing is written outside the session folder"


# --- the readers' geometry checks -----------------------------------------------------------------------------

ds_text = st.one_of(
    st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=0, max_size=7).map(
        lambda xs: "\\".join(f"{x:.6g}" for x in xs)
    ),
    st.text(st.characters(codec="ascii", exclude_characters="\x00"), max_size=20),
)


@FUZZ
@given(ipp=ds_text, iop=ds_text, spacing=ds_text, slope=ds_text)
@example(ipp="0\\0\\0", iop="0\\0\\0\\0\\0\\0", spacing="1\\1", slope="1")
@example(ipp="0\\abc\\1", iop="1\\0\\0\\0\\1\\0", spacing="0\\0", slope="nan")
def test_the_dicom_header_check_accepts_a_grid_or_says_why(ipp, iop, spacing, slope):
    from pydicom.datadict import tag_for_keyword
    from pydicom.dataelem import RawDataElement
    from pydicom.dataset import Dataset

    from MedSegReasoning.volume.dicom.geometry import _series_geometry, check_header_values
    from MedSegReasoning.volume.dicom.header import _Header

    ds = Dataset()
    ds.Rows, ds.Columns = 4, 5
    for keyword, text in (
        ("ImagePositionPatient", ipp),
        ("ImageOrientationPatient", iop),
        ("PixelSpacing", spacing),
        ("RescaleSlope", slope),
    ):
        value = text.encode("ascii")
        value += b" " * (len(value) % 2)
        tag = tag_for_keyword(keyword)
        ds[tag] = RawDataElement(tag, "DS", len(value), value, 0, False, True)
    header = _Header(path=Path("fuzz.dcm"), ds=ds)
    try:
        check_header_values(header)
    except InputError as exc:
        assert "fuzz.dcm" in str(exc)
        return
    if header.has_plane_geometry:  # what passed makes a usable grid
        g = _series_geometry([header])
        assert np.isfinite(g.affine).all() and min(g.spacing) > 0
        assert abs(np.linalg.det(g.direction_matrix)) > 0.9


def _nifti_with(tmp_path: Path, edits: list[tuple[int, bytes]]) -> Path:
    import SimpleITK as sitk

    plain = tmp_path / "plain.nii"
    if not plain.exists():
        sitk.WriteImage(sitk.GetImageFromArray(np.arange(120, dtype=np.int16).reshape(4, 5, 6)), str(plain))
    data = bytearray(plain.read_bytes())
    for offset, value in edits:
        data[offset : offset + len(value)] = value
    path = tmp_path / "fuzzed.nii"
    path.write_bytes(bytes(data))
    return path


floats32 = st.floats(width=32, allow_nan=True, allow_infinity=True)
nifti_edits = st.lists(
    st.one_of(
        st.tuples(st.just(76), st.lists(floats32, min_size=4, max_size=4).map(lambda v: struct.pack("<4f", *v))),
        st.tuples(st.just(252), st.sampled_from([0, 1, 2, 3]).map(lambda c: struct.pack("<hh", c, c))),
        st.tuples(st.just(256), st.lists(floats32, min_size=6, max_size=6).map(lambda v: struct.pack("<6f", *v))),
        st.tuples(st.just(280), st.lists(floats32, min_size=12, max_size=12).map(lambda v: struct.pack("<12f", *v))),
    ),
    max_size=3,
)


@settings(FUZZ, max_examples=25)
@given(edits=nifti_edits)
@example(edits=[(252, struct.pack("<hh", 1, 1)), (280, struct.pack("<4f", float("nan"), 0, 0, 0))])
def test_the_nifti_reader_gives_a_usable_grid_or_input_error(tmp_path_factory, edits):
    from MedSegReasoning.volume import load_volume

    path = _nifti_with(tmp_path_factory.mktemp("nifti"), edits)
    try:
        volume = load_volume(path)
    except InputError:
        return
    g = volume.geometry
    assert np.isfinite(g.affine).all() and min(g.spacing) > 0 and abs(np.linalg.det(g.direction_matrix)) > 1e-6
