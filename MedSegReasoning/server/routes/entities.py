"""A session's entities: list, read, read the mask, refine (a round), replace the mask, rename/recolour/review,
delete."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from ...wire.masks import CompactMask
from ..errors import ApiError, not_found
from ..refine import RefineIn, RefineRun, parse_refine_request
from ..runtime import Runtime, session_of, token_of
from ..schemas import API, ERRORS, SSE, EntityPatch, MaskIn
from ..sessions import ServerSession, idle_dialogue, locked
from ..streaming import launch
from ..wire import entity_json, mask_json


def add_routes(app: FastAPI, rt: Runtime) -> None:
    base = f"{API}/sessions/{{session_id}}/entities"

    def entity_of(session: ServerSession, entity_id: str):
        dialogue = session.dialogue
        key = entity_id.upper()
        if dialogue is None or key not in dialogue.entities:
            raise not_found("entity", f"there is no entity {entity_id!r} in this session.")
        return dialogue.entities[key]

    @app.get(base, tags=["entities"], responses=ERRORS)
    def list_entities(session_id: str, request: Request, masks: bool = False) -> Response:
        """The session's entities (``masks=true`` includes every mask: large)."""
        session = rt.store.get(session_id, token_of(request))
        entities = list(session.dialogue.entities.values()) if session.dialogue else []
        return JSONResponse({"entities": [entity_json(e, with_mask=masks) for e in entities]})

    @app.get(f"{base}/{{entity_id}}", tags=["entities"], responses=ERRORS)
    def get_entity(session_id: str, entity_id: str, request: Request, mask: bool = False) -> Response:
        session = rt.store.get(session_id, token_of(request))
        return JSONResponse(entity_json(entity_of(session, entity_id), with_mask=mask))

    @app.get(f"{base}/{{entity_id}}/mask", tags=["entities"], responses=ERRORS)
    def get_mask(session_id: str, entity_id: str, request: Request) -> Response:
        """The entity's current mask: box + packed bits (docs/wire-format.md)."""
        session = rt.store.get(session_id, token_of(request))
        entity = entity_of(session, entity_id)
        assert session.dialogue is not None  # entity_of found the entity in it
        return JSONResponse({**mask_json(entity), "shape": list(session.dialogue.shape), "revision": entity.revision})

    @app.post(f"{base}/{{entity_id}}/refine", tags=["entities", "rounds"], responses={**ERRORS, **SSE})
    async def refine(session_id: str, entity_id: str, body: RefineIn, request: Request) -> Response:
        """Correct the entity from one box (add) or erase box on any plane, as a round: streamed like a round (its
        ``target`` is the entity, same id, next revision), undone like one (``POST …/undo``). server/refine.py."""
        token = token_of(request)
        session = await session_of(rt, session_id, token)
        return await launch(rt, session, RefineRun, parse_refine_request(body, entity_id), token)

    @app.put(f"{base}/{{entity_id}}/mask", tags=["entities"], responses=ERRORS)
    def put_mask(session_id: str, entity_id: str, body: MaskIn, request: Request) -> dict:
        """The user's edit replaces the entity's mask (later rounds and exports use it)."""
        session = rt.store.get(session_id, token_of(request))

        def do() -> dict:
            dialogue = idle_dialogue(session)
            entity = entity_of(session, entity_id)
            mask = CompactMask.from_json(body.model_dump(exclude_none=True) | {"box": body.box}, shape=dialogue.shape)
            return entity_json(dialogue.replace_mask(entity.id, mask), with_mask=False)

        result = locked(session, do)
        rt.audit.record("entity.mask", session.owner, session=session.id, entity=result["id"])
        return result

    @app.patch(f"{base}/{{entity_id}}", tags=["entities"], responses=ERRORS)
    def patch_entity(session_id: str, entity_id: str, body: EntityPatch, request: Request) -> dict:
        """Rename, recolour, or set the review status (proposed, confirmed, rejected)."""
        session = rt.store.get(session_id, token_of(request))

        def do() -> dict:
            dialogue = idle_dialogue(session)
            entity = entity_of(session, entity_id)
            if body.label is None and body.color is None and body.review is None:
                raise ApiError(400, "empty_patch", "the patch changes nothing: give label, color and/or review.")
            if body.label is not None:
                dialogue.rename(entity.id, body.label.strip())
            if body.color is not None:
                dialogue.recolor(entity.id, list(body.color))
            if body.review is not None:
                dialogue.set_review(entity.id, body.review)
            return entity_json(dialogue.entities[entity.id], with_mask=False)

        result = locked(session, do)
        rt.audit.record("entity.patch", session.owner, session=session.id, entity=result["id"])
        return result

    @app.delete(f"{base}/{{entity_id}}", status_code=204, tags=["entities"], responses=ERRORS)
    def delete_entity(session_id: str, entity_id: str, request: Request) -> Response:
        session = rt.store.get(session_id, token_of(request))

        def do() -> str:
            dialogue = idle_dialogue(session)
            entity = entity_of(session, entity_id)
            dialogue.delete(entity.id)
            return entity.id

        removed = locked(session, do)
        rt.audit.record("entity.delete", session.owner, session=session.id, entity=removed)
        return Response(status_code=204)
