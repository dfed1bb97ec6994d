"""Reasoner behind an OpenAI-compatible chat endpoint: vLLM, Ollama (``/v1``), llama.cpp server, or a GPU farm.

The wire format is the Chat Completions API: ``POST {base_url}/chat/completions`` with the images inline as
base64 PNG data URLs (``image_url`` parts before the text), greedy decoding (``temperature`` 0) unless asked
otherwise, and ``stream: true`` so the reasoning text arrives as Server-Sent Events (``data: {json}`` lines,
ended by ``data: [DONE]``). Servers that run a reasoning parser (vLLM ``--reasoning-parser``) send the thinking
in ``reasoning_content``; it is put back in ``<think>`` tags so the one parser sees the whole answer.

For our own prompt contract the request carries a JSON schema as ``response_format`` (vLLM, llama.cpp and
recent Ollama enforce it); a server that rejects the field (HTTP 400/422/500 naming it) is asked once more with
the older ``{"type": "json_object", "schema": ...}`` form when its refusal names that (llama-cpp-python's
server), else without a schema, and the adapter remembers. ``segzero``-style models keep their trained
``<think>/<answer>`` format, unconstrained.

Patient data: the request holds only the rendered pixels and the question text, never DICOM header fields. A
base URL that is not on this machine (loopback) is refused unless ``allow_remote`` is given, with a message that
says what would be sent where.

Images for absolute-pixel models (``qwen2.5-vl``) are resized here to ``smart_resize``'s output for
``SERVER_SAFE_RULE`` before sending, so whatever limits the server's processor has, it leaves them as they are
and the boxes come back in pixels we know.
"""

from __future__ import annotations

import base64
import io
import json
import os
import threading
import time
from typing import Any, Literal
from urllib.parse import urlsplit

import numpy as np

from ..wire.errors import InputError, ServiceError
from ..wire.network import is_loopback_host
from .answer import GenerationStats, ReasonerOutputError, ReasoningCancelled, quote
from .base import ReasonerIdentity, TextCallback
from .chat import ChatReasoner, ChatRequest
from .coords import SERVER_SAFE_RULE, get_convention, guess_convention, is_grey, resize_for_model
from .openai_wire import (
    error_reason,
    is_event_stream,
    lines_or_service_error,
    mentions_response_format,
    server_message,
    sse_data,
    usage_of,
    with_thinking,
)
from .prompts import prompt_set

API_KEY_ENV = "MEDSEG_REASONER_API_KEY"
# The total time one answer may take, retries and keep-alive comments included (``ask --reasoner-timeout``).
DEFAULT_TIMEOUT_S = 300.0
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
SchemaForm = Literal["json_schema", "json_object"]
_WIRE_EXPECTED = "an OpenAI chat completion: JSON with choices[0].message.content, or SSE lines 'data: {...}'"


def is_loopback_url(url: str) -> bool:
    """True when ``url``'s host is this machine (localhost, 127.0.0.0/8, ::1)."""
    host = (urlsplit(url).hostname or "").lower()
    return host.endswith(".localhost") or is_loopback_host(host)


def check_base_url(base_url: str, allow_remote: bool) -> str:
    """The normalised base URL, or an ``InputError`` for a malformed one or a remote one without permission."""
    url = base_url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(
            f"the reasoner URL '{base_url}' is not an http(s) URL: write it like http://127.0.0.1:8000/v1."
        )
    if not allow_remote and not is_loopback_url(url):
        raise InputError(
            f"the reasoner at {url} is not on this machine: every question would send rendered slices of the scan "
            f"(pixels only, no DICOM header) and the question text to {parts.hostname}. Pass --allow-remote "
            "to allow this."
        )
    return url


def answer_schema(task: str) -> dict[str, Any]:
    """The JSON schema of our answer contract for ``response_format`` (key-slice step: no coordinates): what it
    admits, the parser takes, as far as a schema can say it (coordinates in the image are checked after)."""
    point = {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}
    target: dict[str, Any] = {
        "type": "object",
        "properties": {
            "slice": {"type": "integer"},
            "label": {"type": "string"},
            "ref": {"type": ["string", "null"]},
        },
        "required": ["slice", "label", "ref"],
    }
    if task == "locate":
        target["properties"].update(
            bbox={"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4},
            # bounded as the prompt says (one to three): a looping model cannot run to the token limit in a list
            points={"type": "array", "items": point, "minItems": 1, "maxItems": 3},
            negative_points={"type": "array", "items": point, "maxItems": 3},
        )
        target["required"] = ["bbox", "points", "label", "ref"]
    # Targets or a clarification question, never both (the parser refuses both): two alternatives, as a grammar
    # can only enforce it that way (a 135M model under llama.cpp answered with both).
    answering = {"type": "array", "items": target, "minItems": 1}
    asking = {"type": "array", "items": target, "maxItems": 0}
    return {
        "anyOf": [
            {
                "type": "object",
                "properties": {"reasoning": {"type": "string"}, "targets": targets, "clarification": clarification},
                "required": ["reasoning", "targets", "clarification"],
            }
            for targets, clarification in ((answering, {"type": "null"}), (asking, {"type": "string"}))
        ]
    }


def png_data_url(image: np.ndarray, compress_level: int = 1) -> str:
    """A base64 PNG data URL; grey images go as one channel (a third of the bytes, same pixels).

    Level 1 is nearly as small as the default on CT slices (large uniform air) and much faster; level 0 (stored)
    is twice as fast again at three times the bytes, which only pays on loopback.
    """
    from PIL import Image

    pil = Image.fromarray(image[..., 0] if is_grey(image) else image)
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG", compress_level=compress_level)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class OpenAIReasoner(ChatReasoner):
    """A model served behind ``{base_url}/chat/completions``. Construct through ``create_reasoner("openai:...")``."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        allow_remote: bool = False,
        api_key: str | None = None,
        convention: str | None = None,
        prompt_style: str = "contract",
        max_tokens: int = 1024,
        temperature: float = 0.0,
        seed: int | None = 0,
        stream: bool = True,
        structured_output: bool = True,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        connect_timeout_s: float = 10.0,
        retries: int = 2,
        backoff_s: float = 1.0,
        text_only: bool = False,
        transport: Any = None,
    ) -> None:
        """``retries``: further attempts after a connection error or HTTP 429/5xx, waiting ``backoff_s`` doubling.

        ``timeout_s`` is the *total* deadline of one answer, from the request to the last token, retries included:
        a server that keeps the connection alive with SSE comments but never answers is cut off at it, as is a
        silent one (ServiceError, exit 4). It is kept per call, so threads may share one reasoner.

        ``text_only``: send the prompt alone, as a plain string, without the images: for a text-only model (a
        smoke test of a server, such as llama.cpp's with a small LLM). Such a model cannot see the scan, so its
        coordinates are guesses; the identity records it (``decoding.text_only``).
        """
        if not timeout_s > 0:
            raise InputError(f"the reasoner timeout must be a positive number of seconds, got {timeout_s}.")
        if not model.strip():
            raise InputError(
                "the reasoner spec needs a model name after '#', e.g. openai:http://127.0.0.1:8000/v1#qwen2.5vl:7b."
            )
        if max_tokens < 1:
            raise InputError(f"max_tokens must be at least 1, got {max_tokens}.")
        self.base_url = check_base_url(base_url, allow_remote)
        self.model = model.strip()
        self.api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        self.max_tokens = int(max_tokens)
        self.temperature = float(temperature)
        self.seed = seed
        self.stream = stream
        self.structured_output = structured_output and prompt_style == "contract"
        self.schema_form: SchemaForm = "json_schema"  # "json_object" once a server says it knows only that one
        self.retries = max(0, int(retries))
        self.backoff_s = float(backoff_s)
        self.timeout_s = float(timeout_s)
        self.text_only = bool(text_only)
        self.connect_timeout_s = float(connect_timeout_s)
        self._transport = transport
        self._png_level = 0 if is_loopback_url(self.base_url) else 1  # bytes are free on loopback, time is not
        name = convention or guess_convention(self.model)
        conv = get_convention(name, SERVER_SAFE_RULE if name == "qwen2.5-vl" else None)
        prompts = prompt_set(prompt_style)
        decoding: dict[str, Any] = {
            "strategy": "greedy" if self.temperature == 0 else "sample",
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "structured_output": self.structured_output,
        }
        if self.text_only:
            decoding["text_only"] = True
        identity = ReasonerIdentity(
            name=self.model,
            backend="openai",
            revision=f"served at {self.base_url}",
            convention=conv.name,
            prompt_version=prompts.identity,
            decoding=decoding,
        )
        super().__init__(identity, conv, prompts)

    @property
    def endpoint(self) -> str:
        return self.base_url + "/chat/completions"

    def prepare_image(self, image: np.ndarray) -> np.ndarray:
        if self.convention.kind == "resized":
            w, h = self.convention.frame(image.shape[1], image.shape[0])
            return resize_for_model(image, (int(w), int(h)))
        return super().prepare_image(image)

    def _client(self):
        import httpx

        timeout = httpx.Timeout(self.timeout_s, connect=self.connect_timeout_s)
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return httpx.Client(timeout=timeout, headers=headers, transport=self._transport)

    def _body(self, request: ChatRequest, image_urls: list[str], structured: SchemaForm | None) -> dict[str, Any]:
        # text only: a plain string, since a text model's chat template may not know content parts
        content: str | list[dict[str, Any]] = request.prompt
        if not self.text_only:
            content = [{"type": "image_url", "image_url": {"url": url}} for url in image_urls]
            content.append({"type": "text", "text": request.prompt})
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "stream": self.stream,
        }
        if self.seed is not None:
            body["seed"] = self.seed
        if structured == "json_object":  # the older form (llama-cpp-python's server): JSON mode with a schema
            body["response_format"] = {"type": "json_object", "schema": answer_schema(request.task)}
        elif structured:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "medseg_answer", "schema": answer_schema(request.task)},
            }
        return body

    def _next_schema_form(self, tried: SchemaForm, refusal: str) -> SchemaForm | None:
        """The ``response_format`` to ask with after a server refused the form ``tried`` (remembered): the
        ``json_object`` form when the refusal names it (llama-cpp-python's server refuses ``json_schema`` with HTTP
        500 and "Input should be 'text' or 'json_object'"), else none. Decided by the form this request tried, not
        by the shared state: concurrent first requests are all refused, and each must step down once."""
        if tried == "json_schema" and "json_object" in refusal:
            if self.schema_form != "json_object":
                self.schema_form = "json_object"
                self.with_decoding(response_format="json_object")
            return "json_object"
        if self.structured_output:
            self.structured_output = False
            self.with_decoding(structured_output=False)
        return None

    # -- the call -----------------------------------------------------------------------------------------------
    def complete(
        self, request: ChatRequest, on_text: TextCallback | None, cancel: threading.Event | None
    ) -> tuple[str, GenerationStats]:
        import httpx

        structured = self.schema_form if self.structured_output else None
        images = () if self.text_only else request.images
        image_urls = [png_data_url(image, self._png_level) for image in images]  # once, not per attempt
        attempt = 0
        deadline = time.monotonic() + self.timeout_s  # local: concurrent answers of one reasoner keep their own
        with self._client() as client:
            while True:
                if cancel is not None and cancel.is_set():
                    raise ReasoningCancelled("the question was cancelled before the reasoner finished.")
                self._check_deadline(deadline)
                start = time.perf_counter()
                try:
                    with client.stream(
                        "POST", self.endpoint, json=self._body(request, image_urls, structured)
                    ) as response:
                        if response.status_code in (400, 422, 500) and structured:
                            response.read()
                            if mentions_response_format(response.text):
                                structured = self._next_schema_form(structured, response.text)
                                continue
                        if response.status_code in RETRY_STATUSES and attempt < self.retries:
                            response.read()
                            attempt += 1
                            self._wait(attempt, cancel, deadline)
                            continue
                        if response.status_code >= 400:
                            response.read()
                            raise self._http_error(response)
                        if is_event_stream(response):
                            return self._read_stream(response, start, on_text, cancel, deadline)
                        response.read()
                        return self._read_json(response, start, on_text)
                except httpx.TimeoutException as exc:
                    kind = "connecting" if isinstance(exc, httpx.ConnectTimeout) else "waiting for the answer"
                    limit = self.connect_timeout_s if isinstance(exc, httpx.ConnectTimeout) else self.timeout_s
                    raise ServiceError(
                        f"the reasoner at {self.base_url} timed out after {limit:g} s {kind}: check that the server "
                        "is running and not overloaded, or raise the limit with --reasoner-timeout SECONDS."
                    ) from None
                except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError) as exc:
                    if attempt < self.retries:
                        attempt += 1
                        self._wait(attempt, cancel, deadline)
                        continue
                    raise ServiceError(
                        f"could not reach the reasoner at {self.base_url} ({error_reason(exc)}) after {attempt + 1} "
                        "attempts: start the server, or check the URL in --reasoner."
                    ) from None

    def _check_deadline(self, deadline: float) -> None:
        """``ServiceError`` once the answer's total deadline (``timeout_s`` after its request) has passed."""
        if time.monotonic() > deadline:
            raise ServiceError(
                f"the reasoner at {self.base_url} did not finish its answer within {self.timeout_s:g} s: check that "
                "the server is not overloaded, or raise the limit with --reasoner-timeout SECONDS."
            )

    def _wait(self, attempt: int, cancel: threading.Event | None, deadline: float) -> None:
        delay = min(self.backoff_s * 2 ** (attempt - 1), max(0.0, deadline - time.monotonic()))
        if cancel is not None:
            if cancel.wait(delay):
                raise ReasoningCancelled("the question was cancelled before the reasoner finished.")
        else:
            time.sleep(delay)

    def _http_error(self, response) -> ServiceError:
        detail = server_message(response.text)
        status = response.status_code
        if status in (401, 403):
            return ServiceError(
                f"the reasoner at {self.base_url} refused the request (HTTP {status}: {detail}): set the API key in "
                f"the environment variable {API_KEY_ENV}."
            )
        if status == 404:
            return ServiceError(
                f"the reasoner at {self.base_url} has no chat endpoint or no model '{self.model}' (HTTP 404: "
                f"{detail}): check the base URL (it usually ends in /v1) and the model name after '#'."
            )
        if status in RETRY_STATUSES:
            return ServiceError(
                f"the reasoner at {self.base_url} failed (HTTP {status}: {detail}) after {self.retries + 1} attempts: "
                "check the server's log."
            )
        return ServiceError(f"the reasoner at {self.base_url} rejected the request (HTTP {status}: {detail}).")

    def _read_json(self, response, start: float, on_text: TextCallback | None) -> tuple[str, GenerationStats]:
        try:
            data = json.loads(response.text)
            choice = data["choices"][0]
            message = choice["message"]
            content = message.get("content") or ""
            thinking = message.get("reasoning_content") or message.get("reasoning") or ""
        except (json.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
            raise ReasonerOutputError(
                "the server's reply is not a chat completion", response.text, _WIRE_EXPECTED
            ) from None
        if not isinstance(content, str):
            raise ReasonerOutputError("the server's message content is not text", response.text, _WIRE_EXPECTED)
        text = with_thinking(thinking, content)
        if on_text is not None and text:
            on_text(text)
        usage = usage_of(data)
        seconds = time.perf_counter() - start
        stats = GenerationStats(
            usage.get("prompt_tokens"), usage.get("completion_tokens"), seconds, seconds, choice.get("finish_reason")
        )
        return text, stats

    def _read_stream(
        self,
        response,
        start: float,
        on_text: TextCallback | None,
        cancel: threading.Event | None,
        deadline: float,
    ) -> tuple[str, GenerationStats]:
        content: list[str] = []
        thinking: list[str] = []
        first: float | None = None
        finish: str | None = None
        usage: dict[str, Any] = {}
        chunks = 0
        in_think = False
        done = False
        lines = lines_or_service_error(response, self.base_url, lambda: self._check_deadline(deadline))
        for payload in sse_data(lines):
            if cancel is not None and cancel.is_set():
                response.close()
                raise ReasoningCancelled("the question was cancelled while the reasoner was answering.")
            if payload == "[DONE]":
                done = True
                break
            try:
                event = json.loads(payload)
            except json.JSONDecodeError:
                raise ReasonerOutputError(
                    "the server sent a stream event that is not JSON", f"data: {payload}", _WIRE_EXPECTED
                ) from None
            if not isinstance(event, dict):
                raise ReasonerOutputError(
                    "the server sent a stream event that is not an object", payload, _WIRE_EXPECTED
                )
            if "error" in event:
                raise ServiceError(
                    f"the reasoner at {self.base_url} failed while answering: {server_message(payload)}."
                )
            usage = usage_of(event) or usage
            choices = event.get("choices") or []
            if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
                raise ReasonerOutputError("a stream event's choices are not a list of objects", payload, _WIRE_EXPECTED)
            for choice in choices:
                delta = choice.get("delta") or {}
                if not isinstance(delta, dict):
                    raise ReasonerOutputError("a stream event's delta is not an object", payload, _WIRE_EXPECTED)
                finish = choice.get("finish_reason") or finish
                think_piece = delta.get("reasoning_content") or delta.get("reasoning") or ""
                piece = delta.get("content") or ""
                if not isinstance(piece, str) or not isinstance(think_piece, str):
                    raise ReasonerOutputError("a stream event's delta content is not text", payload, _WIRE_EXPECTED)
                out = ""
                if think_piece:
                    out += ("" if in_think else "<think>") + think_piece
                    in_think = True
                    thinking.append(think_piece)
                if piece:
                    out += "</think>" if in_think else ""
                    in_think = False
                    content.append(piece)
                    out += piece
                if out:
                    chunks += 1
                    if first is None:
                        first = time.perf_counter() - start
                    if on_text is not None:
                        on_text(out)
        if finish is None:  # a whole answer ends with a finish_reason, [DONE] or not
            why = (
                "; llama-cpp-python's server ends a running answer this way when another request arrives: start "
                "it with --interrupt_requests False"
                if done
                else ""
            )
            raise ServiceError(
                f"the reasoner at {self.base_url} {'ended' if done else 'closed'} the stream before the answer was "
                f"complete (received {quote(''.join(content), 120)}{why}): try again."
            )
        seconds = time.perf_counter() - start
        text = with_thinking("".join(thinking), "".join(content))
        stats = GenerationStats(
            usage.get("prompt_tokens"), usage.get("completion_tokens") or chunks, seconds, first, finish
        )
        return text, stats
