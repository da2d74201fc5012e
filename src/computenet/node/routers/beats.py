"""Heartbeats over one WebSocket per pool: the same signed heartbeats, without paying for
an HTTP request each.

Each message is ``{"heartbeat": {...}, "signature": "..."}``: the pool key's Ed25519
signature over the heartbeat's exact JSON text, so every heartbeat is verified on its own,
as over POST. The node answers each with ``{"seq": n, "stop": [...]}`` or
``{"seq": n, "error": "..."}``. The connection itself proves nothing; the pool is named
in the path and each message must verify against that pool's key.
"""

from __future__ import annotations

import json
import math
import time

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import ValidationError

from computenet.ident.cpi import CPIError, parse
from computenet.ident.keys import SignatureError, verify
from computenet.model import Heartbeat
from computenet.node.beats import take
from computenet.node.errors import NodeError
from computenet.node.runtime import Node

router = APIRouter(tags=["pools"])
MAX_MESSAGE = 256 * 1024


@router.websocket("/v1/pools/{pool:path}/beats")
async def beats(ws: WebSocket, pool: str) -> None:
    node: Node = ws.app.state.node
    try:
        parse(pool)
    except CPIError as e:
        await ws.close(code=4400, reason=str(e)[:120])
        return
    key = await node.pool_key(pool)
    if key is None:
        await ws.close(code=4401, reason="unknown pool; register it first")
        return
    await ws.accept()
    try:
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
            text = msg.get("text")
            if text is None:  # a binary frame: heartbeats are text
                await ws.close(code=1003, reason="heartbeats are text frames of JSON")
                return
            if await node.pool_key(pool) != key:  # its token was revoked, or it registered anew
                await ws.close(code=4401, reason="the pool's registration no longer holds")
                return
            await ws.send_text(json.dumps(await _one(node, pool, key, text)))
    except WebSocketDisconnect:
        return


async def _one(node: Node, pool: str, key: str, text: str) -> dict[str, object]:
    if len(text) > MAX_MESSAGE:
        return {"error": f"message over {MAX_MESSAGE} bytes"}
    try:
        msg = json.loads(text)
        raw, sig = msg["heartbeat"], msg["signature"]
        if not isinstance(raw, str) or not isinstance(sig, str):
            raise TypeError("heartbeat is the signed JSON text, signature a string")
        verify(key, raw.encode(), sig)
        hb = Heartbeat.model_validate_json(raw)
    except SignatureError as e:
        return {"error": f"bad pool signature: {e}"}
    except (ValueError, KeyError, TypeError, ValidationError) as e:
        return {"error": f"malformed heartbeat: {str(e).splitlines()[0][:200]}"}
    if not math.isfinite(hb.sent_at) or abs(hb.sent_at - time.time()) > 300:
        return {"seq": hb.seq, "error": "heartbeat timestamp outside the accepted window"}
    try:
        stale = await take(node, pool, hb)
    except NodeError as e:
        return {"seq": hb.seq, "error": e.detail}
    return {"seq": hb.seq, "stop": [s.model_dump() for s in stale]}
