"""Fixtures of the integration tests: tiny real Qwen-VL checkpoints, a fake OpenAI-compatible chat server and a fake
Hugging Face hub on loopback, built on ``support.reasoning``. Every test in this folder is marked ``slow``
(``Testing/conftest.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.reasoning import TINY_KINDS, FakeChatServer, FakeHub, tiny_model_dir


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Folders of the three tiny checkpoints: ``{"qwen2_vl": ..., "qwen2_5_vl": ..., "qwen3_vl": ...}``."""
    pytest.importorskip("torchvision", reason="the Qwen-VL processors need torchvision (their video processor)")
    root = tmp_path_factory.mktemp("tiny-qwen")
    return {kind: tiny_model_dir(kind, root) for kind in TINY_KINDS}


@pytest.fixture(scope="module")
def chat_server() -> Iterator[FakeChatServer]:
    """A scripted OpenAI-compatible chat server on loopback (``Behaviour`` says how it answers)."""
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    server = FakeChatServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def fake_hub() -> Iterator[FakeHub]:
    """A Hugging Face hub on loopback, for ``models pull`` without a network."""
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    hub = FakeHub().start()
    yield hub
    hub.stop()
