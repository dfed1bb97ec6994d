"""What segmentation costs, counted (never timed) on 8 whole slices of the real CT through the spleen with the real
LiteMedSAM: skip-and-interpolate against full propagation, and a second ``ask`` on the same series reading every
embedding from the disk store, with result.json's per-target counts."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from MedSegReasoning.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def slab(tmp_path_factory, shared_ct):
    """``volume_cases``' ``ct-spleen-slab``: 8 slices of 512 x 512 through the spleen, as a DICOM series and its truth."""
    from MedSegReasoning.evaluation.layouts import read_folder
    from MedSegReasoning.evaluation.volume_cases import SLAB_CASE_NAME, build_cases

    dataset = build_cases(tmp_path_factory.mktemp("slab"), shared_ct, (SLAB_CASE_NAME,))
    (unit,) = read_folder(dataset)
    case = unit.load()
    return dataset / SLAB_CASE_NAME / "volume", case.volume, case.turns[0].truth


@pytest.fixture
def fresh_memory(litemedsam, monkeypatch):
    """Give the session's LiteMedSAM an empty embedding cache, as a new process has (restored afterwards)."""
    from MedSegReasoning.segmentation.cache import EmbeddingCache

    def empty() -> None:
        monkeypatch.setattr(litemedsam, "cache", EmbeddingCache())

    return empty


def test_skip_and_interpolate_matches_full_propagation_with_fewer_encoder_calls(slab, litemedsam, fresh_memory):
    from MedSegReasoning.evaluation.metrics import dice
    from MedSegReasoning.evaluation.runner import truth_prompt
    from MedSegReasoning.pipeline import segment_target
    from MedSegReasoning.propagation import DEFAULT_PROPAGATION
    from MedSegReasoning.volume import default_window

    _, volume, truth = slab
    window, prompt = default_window(volume), truth_prompt(truth)
    results = {}
    for name, config in (("full", replace(DEFAULT_PROPAGATION, skip=1)), ("default", DEFAULT_PROPAGATION)):
        fresh_memory()
        results[name] = segment_target(volume, litemedsam, window, prompt, config=config)
    full, skip = results["full"], results["default"]
    assert DEFAULT_PROPAGATION.skip > 1, "skip-and-interpolate is on by default"
    assert skip.propagation.interpolated_slices, "the default interpolated no slice: nothing was skipped"
    assert not full.propagation.interpolated_slices and full.work.interpolated_slices == 0
    assert skip.work.interpolated_slices == len(skip.propagation.interpolated_slices)
    assert dice(skip.mask, full.mask) >= 0.99
    assert abs(dice(skip.mask, truth) - dice(full.mask, truth)) <= 0.01
    assert skip.work.encoder_calls < full.work.encoder_calls, (skip.work, full.work)
    for work in (full.work, skip.work):
        assert work.encoder_calls + work.embedding_cache_hits >= work.segmented_slices


def test_a_second_ask_reads_every_embedding_from_disk(slab, litemedsam, fresh_memory, tmp_path, monkeypatch):
    """Two ``ask`` runs as two processes would make them (an empty memory cache each, one disk store): the second
    encodes nothing, reads each embedding the first computed from disk, and gives the same mask."""
    import SimpleITK as sitk

    from MedSegReasoning.evaluation.runner import truth_prompt

    series, _, truth = slab
    monkeypatch.setattr("MedSegReasoning.segmentation.factory.create_segmenter", lambda spec, **kw: litemedsam)
    monkeypatch.setattr(litemedsam, "store", None)  # restored after the test: the session's model keeps no store
    litemedsam.use_store(tmp_path / "store", 2**30, "test")
    prompt = truth_prompt(truth)
    box = ",".join(map(str, (*prompt.box, prompt.k)))
    runs = []
    for n in (1, 2):
        fresh_memory()
        store_hits = litemedsam.stats.store_hits
        out = tmp_path / f"ask{n}"
        assert main(["ask", str(series), "--box", box, "--label", "spleen", "--out", str(out)]) == 0
        (target,) = json.loads((out / "result.json").read_text())["targets"]
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "mask.nii.gz")))
        runs.append((target, litemedsam.stats.store_hits - store_hits, mask))
    (first, first_store_hits, first_mask), (second, second_store_hits, second_mask) = runs
    for target in (first, second):
        assert target["segmented_slices"] >= len(target["propagation"]["visited_slices"]) > 1
        assert target["encoder_calls"] + target["embedding_cache_hits"] >= target["segmented_slices"]
        assert target["interpolated_slices"] > 0, "the default skips and interpolates"
    assert (second["segmented_slices"], second["interpolated_slices"]) == (
        first["segmented_slices"],
        first["interpolated_slices"],
    )
    assert first_store_hits == 0 and first["encoder_calls"] >= first["segmented_slices"]
    assert second["encoder_calls"] == 0, "every slice of the second ask came from the disk store"
    assert second_store_hits == first["encoder_calls"], "each embedding the first ask computed was read back once"
    assert second["embedding_cache_hits"] == first["encoder_calls"] + first["embedding_cache_hits"]
    np.testing.assert_array_equal(second_mask, first_mask)
