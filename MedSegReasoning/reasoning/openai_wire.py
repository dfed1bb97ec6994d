"""The Chat Completions wire as ``openai_compat`` reads it: Server-Sent Events lines, usage, error bodies.

Split from the adapter so each stays small; pure functions over text and an httpx response, no state.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

from ..wire.errors import ServiceError


def usage_of(data: dict) -> dict[str, Any]:
    """The reply's token counts; a ``usage`` that is not an object is ignored (the counts are informative only)."""
    usage = data.get("usage")
    return usage if isinstance(usage, dict) else {}


def lines_or_service_error(response, base_url: str, check_deadline: Callable[[], None]) -> Iterator[str]:
    """The stream's lines, the answer's deadline checked at each (keep-alive comments count: they are lines); a
    connection that breaks once text has been shown is not retried (it would repeat it)."""
    import httpx

    try:
        for line in response.iter_lines():
            check_deadline()
            yield line
    except (httpx.ReadError, httpx.RemoteProtocolError) as exc:
        raise ServiceError(
            f"the connection to the reasoner at {base_url} broke while it was answering ({error_reason(exc)}): ask again."
        ) from None


def sse_data(lines: Iterator[str]) -> Iterator[str]:
    """The payloads of ``data:`` lines (comments, ``event:`` and blank lines skipped; multi-line data joined)."""
    buffer: list[str] = []
    for line in lines:
        if line.startswith("data:"):
            buffer.append(line[5:].lstrip(" "))
        elif not line.strip() and buffer:
            yield "\n".join(buffer)
            buffer = []
    if buffer:  # the stream ended without the blank line that closes an event: keep it only if it is whole
        payload = "\n".join(buffer)
        if payload == "[DONE]" or is_complete_json(payload):
            yield payload


def is_complete_json(text: str) -> bool:
    """True for complete JSON: a line the server cut off in the middle is not (its stream then ends unfinished)."""
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


def is_event_stream(response) -> bool:
    return "text/event-stream" in response.headers.get("content-type", "")


def with_thinking(thinking: str, content: str) -> str:
    return f"<think>{thinking}</think>{content}" if thinking.strip() else content


def mentions_response_format(text: str) -> bool:
    lowered = text.lower()
    return any(key in lowered for key in ("response_format", "json_schema", "structured", "guided"))


def server_message(text: str) -> str:
    """The ``error.message`` of an OpenAI-style error body, else the body itself, shortened."""
    try:
        data = json.loads(text)
        message = data.get("error", data) if isinstance(data, dict) else data
        if isinstance(message, dict):
            message = message.get("message") or message.get("detail") or message
        text = str(message)
    except (json.JSONDecodeError, TypeError):
        pass
    text = " ".join(text.split())
    return text[:200] + ("..." if len(text) > 200 else "") if text else "no details"


def error_reason(exc: BaseException) -> str:
    text = str(exc).lower()
    if "refused" in text:
        return "connection refused"
    if "name or service" in text or "nodename" in text or "getaddrinfo" in text:
        return "unknown host"
    return " ".join(str(exc).split())[:120] or type(exc).__name__
