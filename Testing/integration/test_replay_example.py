"""The shipped replay example (#16): the reasoner path can be tried on the demo series without a reasoner model,
and the "not downloaded" message says how (pull command with the size, ``--box``, the example's exact command)."""

from __future__ import annotations

import importlib.util
import json
import shlex

import numpy as np
import pytest

from MedSegReasoning import sample
from MedSegReasoning.cli import main
from MedSegReasoning.reasoning import create_reasoner
from MedSegReasoning.reasoning.replay import EXAMPLE_QUESTION, example_replay_path
from MedSegReasoning.volume import load_volume
from MedSegReasoning.wire.errors import ModelError


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    """A folder holding ``medseg-sample/`` as ``medseg-reasoning demo`` builds it (its default place)."""
    if importlib.util.find_spec("nilearn") is None:
        pytest.skip("nilearn (the sample's template) is not installed: pip install 'medseg-reasoning[sample]'")
    root = tmp_path_factory.mktemp("demo")
    sample.build_sample(root / "medseg-sample")
    return root


def _shipped_answers() -> list[dict]:
    lines = [json.loads(line) for line in example_replay_path().read_text(encoding="utf-8").splitlines()]
    return [json.loads(line["raw"]) for line in lines if "raw" in line]


def test_the_example_is_package_data_and_answers_with_the_demo_box(demo_dir):
    assert example_replay_path().is_file()
    assert example_replay_path().parent.parent.name == "data"  # pyproject ships data/**/* with the package
    box = sample.read_sample_description(demo_dir / "medseg-sample")["box"]
    pick, locate = _shipped_answers()
    assert pick["targets"][0]["slice"] == box["k"]
    target = locate["targets"][0]
    assert target["slice"] == box["k"] and target["bbox"] == [box["i0"], box["j0"], box["i1"], box["j1"]]
    assert create_reasoner("replay:" + str(example_replay_path())).identity.backend == "replay"


def test_the_missing_model_message_gives_size_box_and_the_example_command(tmp_path):
    with pytest.raises(ModelError) as info:
        create_reasoner("hf:MedReasoner-7B", cache_dir=tmp_path)
    message = str(info.value)
    assert "models pull MedReasoner-7B" in message and "16.6 GB" in message and "--box" in message
    assert info.value.exit_code == 3
    command = message.split("`medseg-reasoning ask ")[1].split("`")[0]
    assert "replay:" + str(example_replay_path()) in shlex.split(command)


def test_the_command_the_message_prints_runs_on_the_demo_series(demo_dir, tmp_path, monkeypatch, capsys):
    """Exactly the printed command (key slice only, to keep it short) segments the left caudate."""
    with pytest.raises(ModelError) as info:
        create_reasoner("hf:MedReasoner-7B", cache_dir=tmp_path)
    argv = shlex.split(str(info.value).split("`medseg-reasoning ")[-1].split("`")[0])
    assert argv[0] == "ask" and argv[2] == EXAMPLE_QUESTION
    monkeypatch.chdir(demo_dir)
    out = tmp_path / "out"
    assert main([*argv, "--no-propagate", "--out", str(out)]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "left caudate nucleus" in printed and "key slice 85" in printed
    volume = load_volume(demo_dir / "medseg-sample" / "dicom")
    from MedSegReasoning.volume.itk_io import read_itk_image

    mask = read_itk_image(out / "mask.nii.gz").array > 0
    assert mask.shape == volume.shape and set(np.nonzero(mask.any(axis=(1, 2)))[0]) == {85}
    _, gm, wm = sample._load_template()
    truth = sample.left_caudate(gm, wm)[85]
    dice = 2 * (mask[85] & truth).sum() / (mask[85].sum() + truth.sum())
    assert dice > 0.7, dice  # measured 0.87 for this box when the sample was designed
