"""Refuses JSON bodies whose strings are not text a store can hold.

JSON can spell a lone surrogate (``"\\udfff"``) or NUL (``"\\u0000"``). Python decodes
both, and a field typed ``str`` lets them through; then the row either fails to write
(PostgreSQL holds no NUL) or, worse, is written and fails every time it is read back,
taking down each listing that includes it. One check at the boundary covers every route,
and the refusal names the field as a validation error would.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from computenet.model import FieldError
from computenet.node import problems

# an agent's output and reasons: taken, with such characters made U+FFFD, by the route
_REPORTS = re.compile(r"^/v1/pools/.+/reports$")
_JSON = re.compile(rb"^\s*application/([a-z0-9.+-]*\+)?json\s*(;|$)")
_BODIES = ("POST", "PUT", "PATCH")
_SUSPECT = re.compile(rb"\\u(?:0000|[dD][89a-fA-F][0-9a-fA-F]{2})")


def _why(text: str) -> str | None:
    if "\x00" in text:
        return "holds NUL, which is not allowed in text"
    try:
        text.encode()
    except UnicodeEncodeError as e:
        return f"holds a lone surrogate (U+{ord(text[e.start]):04X}), which is not text"
    return None


def untextual(doc: Any) -> FieldError | None:
    """The first string of a parsed JSON document (key or value) that is not text, by its
    dotted path; None where every one is."""
    stack: list[tuple[tuple[str, ...], Any]] = [((), doc)]
    while stack:
        loc, x = stack.pop()
        if isinstance(x, str):
            if (why := _why(x)) is not None:
                return FieldError(field=".".join(loc) or "body", message=why)
        elif isinstance(x, dict):
            for k, v in x.items():
                if (why := _why(k)) is not None:
                    return FieldError(field=".".join((*loc, ascii(k)[1:-1])), message=why)
                stack.append(((*loc, k), v))
        elif isinstance(x, list):
            stack.extend(((*loc, str(i)), v) for i, v in enumerate(x))
    return None


class TextOnly:
    """Reads a JSON body whole (the body limit outside it bounds that), and answers 422
    where a string in it is not text. Most bodies hold no escape that could be one, and
    are passed on without being parsed here. A body of another media type is answered 415:
    a route would read it as one string and say only that it is not an object."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if (bad := _in_url(scope)) is not None:
            await self._refuse(bad, scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        kind = headers.get(b"content-type", b"application/json").lower()  # a media type's case
        if scope["path"] == "/v1/blobs":
            await self.app(scope, receive, send)
            return
        if not _JSON.match(kind):
            if scope["method"] in _BODIES and headers.get(b"content-length") != b"0":
                said = kind.decode("latin-1")[:100]
                await problems.problem_response(
                    415,
                    "Unsupported media type",
                    f"content-type: this route takes application/json, not {said}",
                    scope["path"],
                    [FieldError(field="content-type", message="not application/json")],
                )(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        if _REPORTS.match(scope["path"]):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            msg = await receive()
            if msg["type"] != "http.request":  # the client left, or the body limit refused
                return
            chunks.append(msg.get("body", b""))
            if not msg.get("more_body", False):
                break
        body = b"".join(chunks)
        if _SUSPECT.search(body):
            try:
                bad = untextual(json.loads(body))
            except (ValueError, RecursionError):
                bad = None  # not JSON: the route says so
            if bad is not None:
                await self._refuse(bad, scope, receive, send)
                return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(bad: FieldError, scope: Scope, receive: Receive, send: Send) -> None:
        detail = f"{bad.field}: {bad.message}"
        await problems.problem_response(422, "Invalid request", detail, scope["path"], [bad])(
            scope, receive, send
        )


def _in_url(scope: Scope) -> FieldError | None:
    """NUL in the path or a query parameter (``%00``): a route would compare it with a
    column, which PostgreSQL refuses with an error."""
    if "\x00" in scope["path"]:
        return FieldError(field="path", message="holds NUL, which is not allowed in text")
    query = scope.get("query_string", b"")
    if b"%00" in query or b"\x00" in query:
        for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            if "\x00" in value or "\x00" in name:
                return FieldError(
                    field=name.replace("\x00", "\\0"),
                    message="holds NUL, which is not allowed in text",
                )
    return None
