"""The protocol's types as the client receives them: entities, a round's events and its result, and the event stream.

A round streams Server-Sent Events (DESIGN.md, docs/wire-format.md): ``reasoning`` (text chunks), ``progress``
(stage, fraction), ``target`` (one per accepted entity), ``error``, ``done``; comments are heartbeats, sent every
10 s, so a stream silent for ``STREAM_IDLE_TIMEOUT_S`` means the server is gone. ``sse_events`` parses that stream
line by line from any object with ``readline()`` (an ``http.client.HTTPResponse``). Numpy only.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .errors import ServerGone
from .masks import CompactMask

STREAM_IDLE_TIMEOUT_S = 120.0  # the server sends a heartbeat every 10 s; this long without one means it is gone


@dataclass
class Entity:
    """An entity as the server sends it; ``mask`` is present when the request asked for it."""

    id: str
    label: str
    name: str
    color: tuple[int, int, int]
    findings: str
    review: str
    key_slice: int
    bbox: tuple[int, ...] | None
    voxels: int
    uncertain: bool
    data: dict[str, Any]
    mask: CompactMask | None = None

    @staticmethod
    def from_json(data: dict[str, Any]) -> Entity:
        mask = CompactMask.from_json(data["mask"]) if data.get("mask") is not None else None
        return Entity(
            id=data["id"],
            label=data["label"],
            name=data.get("name", data["label"]),
            color=tuple(data["color"]),
            findings=data.get("findings", ""),
            review=data.get("review", "proposed"),
            key_slice=int(data["key_slice"]),
            bbox=tuple(data["bbox"]) if data.get("bbox") else None,
            voxels=int(data.get("voxels", 0)),
            uncertain=bool(data.get("uncertain", False)),
            data=data,
            mask=mask,
        )


@dataclass
class RoundResult:
    """What a round produced: entities (with masks), the reasoning text, or a question back (clarification)."""

    round: int | None
    round_id: str
    status: str  # ok | clarification
    reasoning: str
    clarification: dict[str, Any] | None
    entities: list[Entity]
    targets: list[dict[str, Any]]
    timings: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    refine: dict[str, Any] | None = (
        None  # a refine's done.refine: entity_id, kind, orientation, slice, changed_slices, stopped
    )


@dataclass(frozen=True)
class RoundEvent:
    """One Server-Sent Event of a round."""

    name: str
    data: dict[str, Any]
    id: int | None = None


def sse_events(response: Any, url: str) -> Iterator[RoundEvent]:
    """Parse a ``text/event-stream`` body line by line (comments are heartbeats); ``url`` names the server in errors.

    Ends quietly when the connection is lost: the caller reports that no ``done`` came."""
    data_lines: list[str] = []
    name, event_id = "message", None
    while True:
        try:
            raw = response.readline()
        except TimeoutError:
            raise ServerGone(
                f"the server at {url} sent nothing for {STREAM_IDLE_TIMEOUT_S:.0f} s during the round: it is stuck or gone."
            ) from None
        except (OSError, http.client.HTTPException):
            return  # connection lost: the caller reports it (no "done" came)
        if not raw:
            return
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if data_lines:
                try:
                    data = json.loads("\n".join(data_lines))
                except ValueError:
                    data = {"text": "\n".join(data_lines)}
                yield RoundEvent(name, data, event_id)
            name, data_lines, event_id = "message", [], None
        elif line.startswith(":"):
            continue
        else:
            key, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if key == "event":
                name = value
            elif key == "data":
                data_lines.append(value)
            elif key == "id":
                event_id = int(value) if value.isdigit() else None
