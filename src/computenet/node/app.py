"""The node's ASGI application."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import sys
from collections.abc import AsyncIterator
from types import FrameType
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from computenet import __version__
from computenet.node import problems
from computenet.node.bootstrap import adopt_admin_token, ensure_admin_token
from computenet.node.routers import (
    beats,
    datasets,
    discover,
    federation,
    functions,
    jobs,
    pools,
    system,
    tenants,
    tokens,
    transfers,
)
from computenet.node.runtime import Node
from computenet.node.settings import Settings
from computenet.node.text import TextOnly

log = logging.getLogger("computenet.node")


class BodyLimit:
    """Refuses bodies over the limit before they are buffered, declared length or not.

    Without a Content-Length the excess shows only while reading: the app is then told the
    client left, and this middleware answers 413 in its place.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == "/v1/blobs":
            await self.app(
                scope, receive, send
            )  # blobs are streamed to disk, with a cap of their own
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, receive, send)
            return
        seen = 0
        refused = False

        async def limited() -> Message:
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            msg = await receive()
            seen += len(msg.get("body", b""))
            if seen > self.limit:
                refused = True
                await self._refuse(scope, receive, send)
                return {"type": "http.disconnect"}
            return msg

        async def guarded(msg: Message) -> None:
            if not refused:
                await send(msg)

        await self.app(scope, limited, guarded)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        resp = problems.problem_response(
            413, "Request too large", f"the body exceeds {self.limit} bytes", scope["path"]
        )
        await resp(scope, receive, send)


def create_app(settings: Settings | None = None, announce: bool = True) -> FastAPI:
    settings = settings or Settings()
    # The node's own files (its key, blobs, the SQLite database) are its user's alone.
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(settings.data_dir, 0o700)  # made wider by an earlier version: tightened
    node = Node(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await node.db(node.store.migrate)
        created = await node.db(ensure_admin_token, node)
        if created and announce:
            secret, path = created
            where = f" (saved to {path})" if path else ""
            print(f"computenet: admin token, shown once{where}:\n  {secret}", file=sys.stderr)
        elif (adopted := await node.db(adopt_admin_token, node)) and announce:
            print(
                f"computenet: this node's admin token is saved for {settings.url} too, in {adopted}",
                file=sys.stderr,
            )
        await node.load_index()
        await node.federation.load()
        # The index can hold millions of long-lived objects; the collector need not
        # walk them again and again (a full collection over 100,000 pools takes ms).
        gc.collect()
        gc.freeze()
        tasks = [
            asyncio.create_task(node.federation.summary_loop(), name="summaries"),
            asyncio.create_task(node.forwarder.loop(), name="forwarder"),
            asyncio.create_task(node.scheduler_loop(), name="scheduler"),
            asyncio.create_task(node.liveness_loop(), name="liveness"),
            asyncio.create_task(node.index_loop(), name="index"),
            asyncio.create_task(node.beats.loop(), name="heartbeats"),
            asyncio.create_task(functions.reap_loop(node), name="sessions"),
        ]
        try:
            yield
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                await node.beats.flush()
            await node.forwarder.close()
            await node.federation.close()
            node.store.close()

    app = FastAPI(
        title="computenet node",
        version=__version__,
        lifespan=lifespan,
        description="Query, discover and call computing power across providers.",
    )
    app.state.node = node
    problems.install(app)
    for r in (
        system.router,
        tokens.router,
        tenants.router,
        discover.router,
        beats.router,
        pools.router,
        jobs.router,
        federation.router,
        functions.router,
        transfers.router,
        datasets.router,
    ):
        app.include_router(r)
    app.add_middleware(TextOnly)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)  # outermost: bounds the rest
    return app


# Longer than any client's own idle expiry (httpx: 5 s): the client, not the node, ends an
# idle connection, so a request is never sent down a socket the node is closing.
KEEP_ALIVE = 65
GRACE = 5  # seconds open requests get to finish once the node is told to stop


def serve(settings: Settings, log_level: str = "warning", **uvicorn_args: Any) -> None:
    import uvicorn

    app = create_app(settings)
    node: Node = app.state.node

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            # Long polls answer now and streams end: else they hold the stop for its grace
            # and are cancelled mid-answer, a traceback each.
            with contextlib.suppress(RuntimeError):  # no loop yet, or no longer
                asyncio.get_event_loop().call_soon_threadsafe(node.events.close)
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        access_log=False,
        timeout_keep_alive=KEEP_ALIVE,
        # agents' long polls end with the node: a stopped node that lingered on them kept
        # writing to its database beside the one started after it
        timeout_graceful_shutdown=GRACE,
        **uvicorn_args,
    )
    with contextlib.suppress(KeyboardInterrupt):  # as uvicorn.run: Ctrl-C is a clean stop
        Server(config).run()
