"""The request and response bodies of the API (pydantic), and the OpenAPI fragments the routes share.

They also document the API: the generated OpenAPI (``GET /openapi.json``) takes its schemas from these classes, so
their names, fields and descriptions are part of the published API.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from ..dialogue.entity import ReviewState
from ..wire.geometry import Orientation

API = "/v1"  # the prefix of every route


class ErrorDetail(BaseModel):
    status: int
    code: str = Field(description="Stable machine-readable reason, e.g. session_not_found, body_too_large.")
    message: str = Field(description="One sentence for the user: what was wrong and what to do.")


class ErrorOut(BaseModel):
    error: ErrorDetail


class PromptIn(BaseModel):
    """A user's own prompt (clicks/box in Slicer), in voxel indices of the volume: i column, j row, k slice."""

    model_config = ConfigDict(extra="forbid")
    orientation: Orientation = Field(
        "axial", description="the plane the prompt lies on: axial (fixed k), coronal (fixed j), sagittal (fixed i)"
    )
    slice: int = Field(ge=0, description="the plane's index along its normal: k axial, j coronal, i sagittal")
    box: Annotated[list[int], Field(min_length=4, max_length=4)] | None = Field(
        None,
        description="[u0, v0, u1, v1], inclusive corners in the plane's axes: (i, j) axial, (i, k) coronal, (j, k) sagittal",
    )
    points: list[Annotated[list[int], Field(min_length=2, max_length=2)]] = Field(
        default_factory=list, description="[[u, v], ...] in the plane's axes, as the box"
    )
    point_labels: list[int] | None = Field(None, description="1 foreground, 0 background; default all 1")
    label: str | None = Field(None, max_length=200, description="name of the structure")
    ref: str | None = Field(None, max_length=200, description="an entity id or phrase this target relates to")


class ViewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    orientation: Orientation
    slice: int = Field(ge=0)


class RoundIn(BaseModel):
    """A question, and optionally the user's own prompts (then the reasoner is not asked)."""

    model_config = ConfigDict(extra="forbid")
    question: str = ""
    prompts: list[PromptIn] = Field(default_factory=list)
    current_view: ViewIn | None = Field(None, description="what the user is looking at, for 'this slice' questions")
    window: str | None = Field(
        None, description="ct-soft-tissue, ct-lung, ct-bone, ct-brain, percentile, or LEVEL,WIDTH"
    )
    propagate: bool = Field(True, description="false: segment the key slice only")


class MaskIn(BaseModel):
    """A mask as the wire carries it: box [k0, j0, i0, k1, j1, i1] (inclusive) + packed bits (base64)."""

    model_config = ConfigDict(extra="forbid")
    box: list[int] | None
    bits: str
    encoding: str = "packbits-little"
    voxels: int | None = None


class EntityPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str | None = Field(None, min_length=1, max_length=200)
    color: Annotated[list[int], Field(min_length=3, max_length=3)] | None = None
    review: ReviewState | None = None


class ExportIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: str = Field(max_length=40, description="an export format the installed exporter knows, e.g. dicom-seg")


class SessionOut(BaseModel):
    id: str
    created: str
    volume: dict | None
    rounds: int
    entities: int
    running_round: dict | None
    idle_timeout_s: float | None = None


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": text}
    for code, text in {
        400: "Bad input (the message says what to fix)",
        401: "No token, or a wrong one",
        404: "Unknown session or entity (or one of another token)",
        409: "Conflicting state: a round is running, no volume yet, ...",
        413: "Body or volume over the server's limits",
        422: "The JSON body does not match the schema",
        503: "Server full (Retry-After), or a model missing",
    }.items()
}
VOLUME_BODY = {
    "requestBody": {
        "required": False,
        "description": "Raw little-endian C-order [k, j, i] voxels; Content-Encoding deflate or gzip optional; an empty "
        "body re-uses a volume this token sent before (content_sha256 in the header). Shape, dtype and geometry go in "
        "the X-MedSeg-Volume header (JSON).",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    },
    "parameters": [
        {
            "name": "X-MedSeg-Volume",
            "in": "header",
            "required": True,
            "description": '{"shape": [nk, nj, ni], "dtype": "int16", "origin": [x, y, z], "spacing": [si, sj, sk], '
            '"direction": [[...], [...], [...]], "modality": "CT", "content_sha256": "<optional>"} (LPS)',
            "schema": {"type": "string"},
        }
    ],
}
SSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Server-Sent Events: progress, reasoning, target, error, done (docs/wire-format.md)",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


def binary_answer(description: str, *media_types: str) -> dict[int | str, dict[str, Any]]:
    """The 200 answer of a route that returns a file (not JSON), for the OpenAPI document."""
    schema = {"type": "string", "format": "binary"}
    return {200: {"description": description, "content": {m: {"schema": schema} for m in media_types}}}
