"""Checks that need no model run before any model starts loading: a wrong option costs no 20-30 s model load.

The loader (``segmentation.factory._create``, which ``preload`` and ``create_segmenter`` both call) is replaced by
one that records the call: a refusal must come with the documented exit code and no call at all."""

from __future__ import annotations

import numpy as np
import pytest

from MedSegReasoning import cli
from MedSegReasoning.segmentation import factory
from MedSegReasoning.segmentation.factory import check_spec
from MedSegReasoning.volume import write_dicom_series
from MedSegReasoning.volume.core import Geometry
from MedSegReasoning.wire.errors import InputError, ModelError


@pytest.fixture
def loads(monkeypatch) -> list[str]:
    calls: list[str] = []

    def recording_loader(spec, **kwargs):
        calls.append(spec)
        raise ModelError("this test loads no model")

    monkeypatch.setattr(factory, "_create", recording_loader)
    monkeypatch.setattr(factory, "_preloads", {})
    return calls


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    array = np.full((4, 32, 32), -1000, dtype=np.int16)
    array[1:3, 8:24, 8:24] = 60
    folder = tmp_path_factory.mktemp("series") / "dicom"
    write_dicom_series(array, Geometry.from_arrays((0, 0, 0), (1.0, 1.0, 2.0), np.eye(3)), folder, modality="CT")
    return folder


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["--point", "10,10,1"], 2, "LiteMedSAM was trained with box prompts"),
        (["--box", "4,4,27,27,1", "--segmenter", "nonsense"], 2, "Unknown segmenter 'nonsense'"),
        (["--box", "4,4,27,27,1", "--segmenter", "sam"], 2, "needs a local checkpoint file"),
        (["--box", "4,4,27,27,1", "--segmenter", "medsam:/no/such/file.pth"], 3, "does not exist"),
        (["--box", "20,4,40,27,1"], 2, "lies outside the slice"),  # needs the volume, not the model
        (["--box", "0,0,5,5,1"], 2, "uniform region"),
        (["--box", "4,4,27,27,9"], 2, "slice K=9 does not exist"),
        (["Segment the block.", "--reasoner", "bogus:x"], 2, "unknown reasoner 'bogus:x'"),
        (["Segment the block.", "--reasoner", "replay:"], 2, "needs a file after the colon"),
    ],
)
def test_ask_refuses_before_any_model_loads(series, tmp_path, capsys, loads, extra, code, message):
    out = tmp_path / "out"
    assert cli.main(["ask", str(series), *extra, "--out", str(out)]) == code
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert loads == [], "the model started loading before a check that needs none"
    assert not out.exists() or not any(out.iterdir())  # nothing written


def test_refine_refuses_a_wrong_segmenter_before_reading_the_session(tmp_path, capsys, loads):
    args = ["ask", "x", "--session", str(tmp_path / "s"), "--refine", "E1", "--box", "1,1,5,5,0", "--segmenter", "x"]
    assert cli.main(args) == 2
    assert "Unknown segmenter 'x'" in capsys.readouterr().err and loads == []


def test_check_spec_agrees_with_the_loader():
    check_spec("litemedsam")
    with pytest.raises(InputError, match="box prompts"):
        check_spec("litemedsam", box=False)
    with pytest.raises(InputError, match="names no checkpoint"):
        check_spec("sam:")
    with pytest.raises(ModelError, match="does not exist"):
        check_spec("sam-vit_b:/no/such.pth", box=False)  # points alone are fine for SAM; the file is not
