"""Builders for the reasoner tests and benchmark: tiny Qwen-VL checkpoints, forced answers, a fake chat server.

Plain builders, imported as ``support.reasoning``; the fixtures on top of them (``tiny_models``, ``chat_server``,
``fake_hub``) are in ``Testing/integration/conftest.py``.

No vision-language weights can be downloaded here, so each Qwen-VL generation is built from a small config with
random weights (DESIGN.md section 4 lists the traps), saved with ``save_pretrained`` and loaded back through the
real path (``create_reasoner("hf:<folder>")``). Random weights emit garbage; ``ForcedAnswers`` constrains
``generate`` to given answer strings with ``prefix_allowed_tokens_fn``, so processor -> model -> generate ->
parse -> coordinates runs for real and deterministically.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from MedSegReasoning.volume.core import Geometry, Volume

try:  # module level: FastAPI resolves the handler's annotations in this module's globals
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
except ImportError:  # the chat_server fixture skips
    FastAPI = None  # type: ignore[assignment, misc]

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TINY_KINDS = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
_HIDDEN, _HEADS = 32, 2


def byte_level_tokenizer():
    """A Qwen2 tokenizer with the 256 byte symbols and Qwen's special tokens, no merges: one token per byte."""
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {symbol: n for n, symbol in enumerate(bytes_to_unicode().values())}
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[])
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS[1:])})
    return tokenizer


def prompt_tokenizer(texts: list[str], vocab_size: int = 700):
    """A Qwen2 tokenizer whose merges are learned from ``texts`` (Hugging Face's ``train_new_from_iterator`` on the
    byte-level tokenizer: same pre-tokenizer, special tokens and chat markers), so the product's prompt words are one
    or two tokens each, as in a real Qwen vocabulary, while digits stay one token each (Qwen's pre-tokenizer splits
    them). A 112x112 ``brief-v1`` sample is then ~100 prompt and ~70 answer tokens instead of ~480 and ~180 bytes:
    the training tests' steps cost what a real model's would in tokens."""
    tokenizer = byte_level_tokenizer().train_new_from_iterator(texts, vocab_size=vocab_size)
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS[1:])})
    return tokenizer


def _mrope_section(head_dim: int) -> list[int]:
    """Must sum to head_dim / 2 (the default assumes head_dim 128)."""
    half = head_dim // 2
    return [half - 2 * (half // 4), half // 4, half // 4]


def build_tiny_qwen(kind: str, folder: Path) -> Path:
    """Save a ~70k-parameter ``kind`` checkpoint (model, processor, tokenizer, chat template) into ``folder``."""
    import torch
    import transformers as tf

    tokenizer = byte_level_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    head_dim = _HIDDEN // _HEADS
    rope: dict[str, Any] = {"rope_type": "default", "mrope_section": _mrope_section(head_dim), "rope_theta": 10000.0}
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=_HIDDEN,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=_HEADS,
        num_key_value_heads=1,
        max_position_embeddings=32768,
        rope_parameters=rope,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    top = dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    if kind == "qwen2_vl":
        vision = dict(depth=1, embed_dim=16, hidden_size=_HIDDEN, num_heads=2, mlp_ratio=2, patch_size=14)
        config = tf.Qwen2VLConfig(text_config=text, vision_config=vision, **top)
        model_class, processor_class, video_class = (
            tf.Qwen2VLForConditionalGeneration,
            tf.Qwen2VLProcessor,
            tf.Qwen2VLVideoProcessor,
        )
        patch, size = 14, {"shortest_edge": 56 * 56, "longest_edge": 12_845_056}
    elif kind == "qwen2_5_vl":
        vision = dict(
            depth=1,
            hidden_size=16,
            intermediate_size=32,
            num_heads=2,
            out_hidden_size=_HIDDEN,  # must equal the text hidden size
            patch_size=14,
            window_size=112,  # >= 28
            fullatt_block_indexes=[0],
        )
        config = tf.Qwen2_5_VLConfig(text_config=text, vision_config=vision, **top)
        model_class, processor_class, video_class = (
            tf.Qwen2_5_VLForConditionalGeneration,
            tf.Qwen2_5_VLProcessor,
            tf.Qwen2VLVideoProcessor,
        )
        patch, size = 14, {"shortest_edge": 56 * 56, "longest_edge": 12_845_056}
    elif kind == "qwen3_vl":
        text = {**text, "head_dim": head_dim, "rope_parameters": {**rope, "mrope_interleaved": True}}
        vision = dict(
            depth=1,
            hidden_size=16,
            intermediate_size=32,
            num_heads=2,
            out_hidden_size=_HIDDEN,
            patch_size=16,
            num_position_embeddings=64,
            deepstack_visual_indexes=[0],
        )
        config = tf.Qwen3VLConfig(text_config=text, vision_config=vision, **top)
        from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

        model_class, processor_class, video_class = (
            tf.Qwen3VLForConditionalGeneration,
            tf.Qwen3VLProcessor,
            Qwen3VLVideoProcessor,
        )
        patch, size = 16, {"shortest_edge": 65_536, "longest_edge": 16_777_216}  # Qwen3-VL's released limits
    else:
        raise ValueError(f"unknown tiny model kind {kind}")
    torch.manual_seed(0)
    model = model_class(config).eval()
    image_processor = tf.Qwen2VLImageProcessor(patch_size=patch, merge_size=2, size=size)
    processor = processor_class(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_class(patch_size=patch, merge_size=2),
        chat_template=CHAT_TEMPLATE,
    )
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


_BUILT: dict[str, Path] = {}
_BUILD_LOCK = threading.Lock()


def tiny_model_dir(kind: str, root: Path) -> Path:
    """The tiny ``kind`` checkpoint, built once per process (test modules import fixtures separately)."""
    with _BUILD_LOCK:
        if kind not in _BUILT:
            _BUILT[kind] = build_tiny_qwen(kind, root / kind)
        return _BUILT[kind]


class ForcedAnswers:
    """``prefix_allowed_tokens_fn`` that makes each ``generate`` call emit the next of ``answers`` exactly.

    A call starts when the sequence ends with the chat template's assistant header; from there the n-th new
    token may only be the n-th byte of the answer, then ``<|im_end|>``.
    """

    def __init__(self, tokenizer, answers: list[str]) -> None:
        self.tokenizer = tokenizer
        self.queue = deque(answers)
        self.header = tokenizer.encode("<|im_start|>assistant\n", add_special_tokens=False)
        self.end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.tokens: list[int] = []
        self.start = 0
        self.calls = 0

    def __call__(self, batch_id: int, input_ids) -> list[int]:
        ids = input_ids.tolist()
        if ids[-len(self.header) :] == self.header and len(ids) != self.start:
            if not self.queue:
                raise AssertionError("generate was called more often than answers were given")
            self.tokens = self.tokenizer.encode(self.queue.popleft(), add_special_tokens=False)
            self.start = len(ids)
            self.calls += 1
        step = len(ids) - self.start
        return [self.tokens[step]] if step < len(self.tokens) else [self.end]


def force(reasoner, *answers: str) -> ForcedAnswers:
    """Constrain an ``HFReasoner``'s next generations to ``answers`` (in order)."""
    forced = ForcedAnswers(reasoner.processor.tokenizer, list(answers))
    reasoner.generate_kwargs["prefix_allowed_tokens_fn"] = forced
    return forced


# ---------------------------------------------------------------------------------------------------------------
# Volumes


def blob_volume(shape_kji: tuple[int, int, int] = (12, 217, 300), modality: str = "CT") -> Volume:
    """A CT-like volume (air -1000 HU, body 40 HU) with a bright ellipsoid (200 HU) around slice 7.

    The default in-plane size 300x217 is the odd size DESIGN.md uses for Qwen2.5-VL (seen as 308x224).
    """
    nk, nj, ni = shape_kji
    k, j, i = np.ogrid[:nk, :nj, :ni]
    array = np.full(shape_kji, -1000, dtype=np.int16)
    body = ((i - ni / 2) / (ni * 0.45)) ** 2 + ((j - nj / 2) / (nj * 0.45)) ** 2 <= 1
    array[:, body[0]] = 40
    blob = ((i - ni * 0.38) / (ni * 0.12)) ** 2 + ((j - nj * 0.37) / (nj * 0.12)) ** 2 + ((k - 7) / 3.0) ** 2 <= 1
    array[blob] = 200
    geometry = Geometry.from_arrays((0.0, 0.0, 0.0), (0.8, 0.8, 2.5), np.eye(3))
    return Volume(array=array, geometry=geometry, modality=modality)


# ---------------------------------------------------------------------------------------------------------------
# A real OpenAI-compatible server on loopback


@dataclass
class Behaviour:
    """What the fake server does for one request (queued; the last one repeats)."""

    kind: str  # "json", "stream", "status", "raw", "sleep", "stream-raw"
    content: str = ""
    status: int = 200
    chunks: list[str] = field(default_factory=list)
    delay_s: float = 0.0
    reasoning: str = ""


class FakeChatServer:
    """A FastAPI app speaking the Chat Completions wire format, run by uvicorn in a thread on a free port."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.behaviours: deque[Behaviour] = deque()
        self.port = 0
        self._server = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def queue(self, *behaviours: Behaviour) -> None:
        self.requests.clear()
        self.headers.clear()
        self.behaviours = deque(behaviours)

    def _next(self) -> Behaviour:
        if len(self.behaviours) > 1:
            return self.behaviours.popleft()
        return self.behaviours[0] if self.behaviours else Behaviour("json", "{}")

    def app(self):
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            body = await request.json()
            self.requests.append(body)
            self.headers.append(dict(request.headers))
            b = self._next()
            if b.delay_s:
                await asyncio.sleep(b.delay_s)
            if b.kind == "status":
                return JSONResponse({"error": {"message": b.content, "type": "server_error"}}, status_code=b.status)
            if b.kind == "raw":
                return PlainTextResponse(b.content, status_code=b.status, media_type="application/json")
            if b.kind == "json":
                message: dict[str, Any] = {"role": "assistant", "content": b.content}
                if b.reasoning:
                    message["reasoning_content"] = b.reasoning
                return JSONResponse(_completion(body, message))
            if b.kind == "stream-raw":
                return StreamingResponse(iter(b.chunks), media_type="text/event-stream")
            return StreamingResponse(_sse(body, b), media_type="text/event-stream")

        return app

    def start(self) -> FakeChatServer:
        import uvicorn

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app(), log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the fake chat server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)


def _completion(body: dict[str, Any], message: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", ""),
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
    }


def _sse(body: dict[str, Any], b: Behaviour) -> Iterator[str]:
    base = {"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 0, "model": body.get("model", "")}
    first = {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
    yield f"data: {json.dumps(first)}\n\n"
    if b.reasoning:
        event = {**base, "choices": [{"index": 0, "delta": {"reasoning_content": b.reasoning}, "finish_reason": None}]}
        yield f"data: {json.dumps(event)}\n\n"
    for chunk in b.chunks:
        event = {**base, "choices": [{"index": 0, "delta": {"content": chunk}, "finish_reason": None}]}
        yield f"data: {json.dumps(event)}\n\n"
    last = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    yield f"data: {json.dumps(last)}\n\n"
    yield "data: [DONE]\n\n"


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


# ---------------------------------------------------------------------------------------------------------------
# A fake Hugging Face hub on loopback (for `models pull` without network)


class FakeHub:
    """The four hub routes ``snapshot_download`` uses, serving in-memory repositories; every request is logged.

    ``fail_files`` makes downloads of those file names answer HTTP 500 (an interrupted pull).
    """

    COMMIT = "0123456789abcdef0123456789abcdef01234567"

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, bytes]] = {}
        self.log: list[tuple[str, str]] = []
        self.fail_files: set[str] = set()
        self.port = 0
        self._server = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add_folder(self, repo_id: str, folder: Path, extra: dict[str, bytes] | None = None) -> None:
        files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
        self.repos[repo_id] = {**files, **(extra or {})}

    def app(self):
        import hashlib

        from fastapi.responses import Response

        app = FastAPI()

        def missing() -> JSONResponse:
            return JSONResponse(
                {"error": "Repository not found"}, status_code=404, headers={"X-Error-Code": "RepoNotFound"}
            )

        @app.get("/api/models/{owner}/{name}/revision/{revision}")
        async def info(owner: str, name: str, revision: str):
            self.log.append(("info", f"{owner}/{name}"))
            files = self.repos.get(f"{owner}/{name}")
            if files is None:
                return missing()
            return {"id": f"{owner}/{name}", "sha": self.COMMIT, "siblings": [{"rfilename": f} for f in files]}

        @app.get("/api/models/{owner}/{name}/tree/{revision}")
        async def tree(owner: str, name: str, revision: str):
            files = self.repos.get(f"{owner}/{name}")
            if files is None:
                return missing()
            return [
                {"type": "file", "path": f, "size": len(d), "oid": hashlib.sha1(d).hexdigest()}
                for f, d in files.items()
            ]

        @app.api_route("/{owner}/{name}/resolve/{revision}/{filename}", methods=["GET", "HEAD"])
        async def resolve(owner: str, name: str, revision: str, filename: str, request: Request):
            self.log.append((request.method, filename))
            data = self.repos.get(f"{owner}/{name}", {}).get(filename)
            if data is None:
                return missing()
            if request.method == "GET" and filename in self.fail_files:
                return Response(status_code=500, content=b"disk on fire")
            headers = {
                "X-Repo-Commit": self.COMMIT,
                "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                "Content-Length": str(len(data)),
            }
            if request.method == "HEAD":
                return Response(status_code=200, headers=headers)
            return Response(content=data, headers=headers, media_type="application/octet-stream")

        return app

    def start(self) -> FakeHub:
        import uvicorn

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._server = uvicorn.Server(uvicorn.Config(self.app(), log_level="warning", lifespan="off"))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the fake hub did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
