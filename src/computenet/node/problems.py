"""Every error leaves the node as RFC 9457 problem+json naming the field; never a traceback."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from computenet.model import FieldError, Problem
from computenet.model.common import allowed_form
from computenet.node.errors import NodeError

log = logging.getLogger("computenet.node")
MEDIA_TYPE = "application/problem+json"
UNPARSED = "There was an error parsing the body"  # FastAPI's 400 when decoding itself fails


def problem_response(
    status: int, title: str, detail: str, instance: str = "", errors: list[FieldError] | None = None
) -> JSONResponse:
    body = Problem(
        title=title, status=status, detail=detail, instance=instance, errors=errors or []
    )
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(
        body.model_dump(exclude_defaults=False), status, media_type=MEDIA_TYPE, headers=headers
    )


def _field(loc: tuple[object, ...]) -> str:
    """The field without where it came from: a field may itself be called ``path``."""
    if loc and loc[0] in ("body", "query", "path", "header"):
        loc = loc[1:]
    return ".".join(str(p) for p in loc) or "body"


def install(app: FastAPI) -> None:
    @app.exception_handler(NodeError)
    async def _node_error(request: Request, exc: NodeError) -> JSONResponse:
        errors = [FieldError(field=exc.field, message=exc.detail)] if exc.field else []
        return problem_response(exc.status, exc.title, exc.detail, request.url.path, errors)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = []
        for e in exc.errors()[:20]:
            msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
            field = _field(tuple(e.get("loc", ())))
            if e.get("type") == "extra_forbidden":
                msg = "unknown field"
            elif e.get("type") == "string_pattern_mismatch" and (
                form := allowed_form(str(e.get("ctx", {}).get("pattern", "")))
            ):
                msg = f"{e.get('input')!r} is not in the allowed form: {form}"
            elif e.get("type") == "json_invalid":
                field, msg = "body", f"not valid JSON: {e.get('ctx', {}).get('error', msg)}"
            errors.append(FieldError(field=field, message=msg))
        detail = "; ".join(f"{e.field}: {e.message}" for e in errors[:5])
        return problem_response(422, "Invalid request", detail, request.url.path, errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.detail == UNPARSED:  # past what json.loads takes
            why = "not valid JSON: nested too deeply, or a number too long to read"
            errors = [FieldError(field="body", message=why)]
            return problem_response(
                422, "Invalid request", f"body: {why}", request.url.path, errors
            )
        return problem_response(exc.status_code, str(exc.detail), str(exc.detail), request.url.path)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(
            500, "Internal error", "the node hit an unexpected error; see its log", request.url.path
        )
