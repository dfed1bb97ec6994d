"""Model management: the known list, the local cache, pulls from a fake hub on loopback, and ``hf:<id>`` resolution."""

from __future__ import annotations

import pytest
from support.reasoning import FakeHub, blob_volume, force

from MedSegReasoning.reasoning import CONVENTION_NAMES, ReasoningStrategy, create_reasoner
from MedSegReasoning.reasoning import models as models_module
from MedSegReasoning.reasoning.models import (
    ALLOW_PATTERNS,
    find_known,
    known_models,
    list_models,
    pull_model,
    weights_revision,
)
from MedSegReasoning.reasoning.prompts import PROMPT_STYLES
from MedSegReasoning.reasoning.views import refine_views
from MedSegReasoning.volume.windowing import default_window
from MedSegReasoning.wire.errors import InputError, ModelError, ServiceError

REPO = "Qwen/Qwen2-VL-2B-Instruct"  # a known model, served by the fake hub from the tiny Qwen2-VL folder


@pytest.fixture(scope="module")
def hub(fake_hub, tiny_models):
    fake_hub.add_folder(REPO, tiny_models["qwen2_vl"], extra={"pytorch_model.bin": b"PICKLE", "README.md": b"# card"})
    fake_hub.repos["someone/bin-only"] = {"config.json": b'{"model_type": "qwen2_vl"}', "pytorch_model.bin": b"PICKLE"}
    return fake_hub


def test_known_models_are_consistent():
    models = known_models()
    names = [m.name for m in models]
    assert {"MedReasoner-7B", "Lingshu-7B", "Qwen2.5-VL-3B-Instruct", "Qwen2.5-VL-7B-Instruct"} <= set(names)
    assert any(m.family == "qwen3-vl" for m in models)
    assert len(set(names)) == len(names)
    for model in models:
        assert model.convention in CONVENTION_NAMES and model.prompt_style in PROMPT_STYLES
        assert "/" in model.hf_id and model.size_gb > 0 and model.licence
    assert find_known("lingshu-7b").hf_id == "lingshu-medical-mllm/Lingshu-7B"
    assert find_known("qwen/qwen2.5-vl-7b-instruct").name == "Qwen2.5-VL-7B-Instruct"
    assert find_known("MedReasoner-7B").convention == "fixed-840"
    assert find_known("nothing") is None


def test_list_on_an_empty_cache_shows_every_known_model_absent(tmp_path):
    rows = list_models(tmp_path / "no-cache-yet")
    assert [r.name for r in rows] == [m.name for m in known_models()]
    assert not any(r.present for r in rows)
    assert rows[0].to_dict()["licence"]


def test_pull_fetches_safetensors_and_processor_files_only_then_lists_them(hub, tmp_path):
    hub.log.clear()
    folder = pull_model("Qwen2-VL-2B-Instruct", tmp_path, progress=False, endpoint=hub.endpoint)
    names = sorted(p.name for p in folder.iterdir())
    assert "model.safetensors" in names and "config.json" in names and "chat_template.jinja" in names
    assert "pytorch_model.bin" not in names and "README.md" not in names
    assert folder.parent.name == "snapshots" and folder.name == FakeHub.COMMIT
    downloaded = {f for method, f in hub.log if method == "GET"}
    assert "pytorch_model.bin" not in downloaded
    row = next(r for r in list_models(tmp_path) if r.name == "Qwen2-VL-2B-Instruct")
    assert row.present and row.revision == FakeHub.COMMIT and row.size_bytes > 0
    assert row.path == folder


def test_interrupted_pull_keeps_finished_files_and_resumes(hub, tmp_path):
    hub.fail_files = {"model.safetensors"}
    try:
        with pytest.raises(ServiceError) as info:
            pull_model(REPO, tmp_path, progress=False, endpoint=hub.endpoint)
        assert "download resumes" in str(info.value) and info.value.exit_code == 4
    finally:
        hub.fail_files = set()
    hub.log.clear()
    pull_model(REPO, tmp_path, progress=False, endpoint=hub.endpoint)
    again = [f for method, f in hub.log if method == "GET"]
    assert again == ["model.safetensors"]  # config.json and the rest were kept from the first attempt


def test_pull_refusals(hub, tmp_path):
    with pytest.raises(InputError, match="unknown model 'not a name'"):
        pull_model("not a name", tmp_path, progress=False, endpoint=hub.endpoint)
    with pytest.raises(InputError, match="there is no model 'nobody/nothing'"):
        pull_model("nobody/nothing", tmp_path, progress=False, endpoint=hub.endpoint)
    with pytest.raises(ModelError, match="no .safetensors weights"):
        pull_model("someone/bin-only", tmp_path, progress=False, endpoint=hub.endpoint)


def test_hf_id_not_downloaded_names_the_pull_command(tmp_path):
    with pytest.raises(ModelError) as info:
        create_reasoner("hf:Qwen/Qwen2.5-VL-7B-Instruct", cache_dir=tmp_path)
    message = str(info.value)
    assert "medseg-reasoning models pull Qwen2.5-VL-7B-Instruct" in message and "--allow-download" in message
    assert str(tmp_path) in message and info.value.exit_code == 3
    with pytest.raises(ModelError, match="models pull someone/unknown-model"):
        create_reasoner("hf:someone/unknown-model", cache_dir=tmp_path)


def test_hf_id_downloads_only_with_allow_download_and_then_loads(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    with pytest.raises(ModelError):
        create_reasoner(f"hf:{REPO}", cache_dir=tmp_path)
    reasoner = create_reasoner(f"hf:{REPO}", cache_dir=tmp_path, allow_download=True, progress=False)
    identity = reasoner.identity
    assert (identity.name, identity.revision, identity.convention) == (
        "Qwen2-VL-2B-Instruct",
        FakeHub.COMMIT,
        "qwen2-vl",
    )
    # from now on the cache serves it, by id or by short name, with no hub involved
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    again = create_reasoner("hf:Qwen2-VL-2B-Instruct", cache_dir=tmp_path, max_new_tokens=300)
    volume = blob_volume()
    views = refine_views(volume, default_window(volume), ReasoningStrategy(pad_to_multiple=0), "axial", 7)
    force(again, '{"targets": [{"bbox": [250, 250, 500, 500], "label": "blob"}]}')
    assert again.reason(views, "where?").targets[0].box == (75, 54, 150, 108)


def test_a_path_that_is_not_an_id_is_a_missing_folder(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        create_reasoner(f"hf:{tmp_path}/models/a/b")
    with pytest.raises(InputError, match="needs a model folder"):
        create_reasoner("hf:")


def test_weights_revision_hashes_small_and_fingerprints_large(tiny_models, tmp_path, monkeypatch):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(tiny_models["qwen2_vl"], folder)
    full = weights_revision(folder)
    assert full.startswith("sha256:") and weights_revision(folder) == full
    monkeypatch.setattr(models_module, "_FULL_HASH_LIMIT", 0)
    fingerprint = weights_revision(folder)
    assert fingerprint.startswith("fingerprint:")
    with (folder / "model.safetensors").open("ab") as f:
        f.write(b"\0")  # a replaced file changes its size
    assert weights_revision(folder) != fingerprint


def test_allow_patterns_never_match_pickles():
    from fnmatch import fnmatch

    for name in ("pytorch_model.bin", "model.pt", "weights.pkl", "model.ckpt", "optimizer.pth"):
        assert not any(fnmatch(name, pattern) for pattern in ALLOW_PATTERNS)
    for name in ("model-00001-of-00004.safetensors", "model.safetensors.index.json", "tokenizer.json", "merges.txt"):
        assert any(fnmatch(name, pattern) for pattern in ALLOW_PATTERNS)
