"""Heartbeats over the WebSocket channel: each one verified, replays and forgeries refused."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import pytest
import websockets

from computenet.ident.keys import KeyPair
from computenet.model import Heartbeat, TelemetrySample
from conftest import Network

pytestmark = pytest.mark.slow


def beat(seq: int, sent_at: float | None = None) -> str:
    sample = TelemetrySample(
        time=time.time(), cpu_percent=1, load_1m=0, memory_used_bytes=1, memory_total_bytes=2
    )
    return Heartbeat(seq=seq, sent_at=sent_at or time.time(), sample=sample).model_dump_json()


async def exchange(url: str, messages: list[str]) -> list[dict[str, object]]:
    async with websockets.connect(url) as ws:
        out = []
        for m in messages:
            await ws.send(m)
            out.append(json.loads(await ws.recv()))
        return out


def test_signed_beats_accepted_and_bad_ones_refused(shared: Network) -> None:
    with shared.client() as c:
        pool = next(p for p in c.pools() if p.name == "alpha")
    key = KeyPair.load_or_create(Path(shared.home) / "agents" / "alpha" / "identity" / "pool.key")
    url = shared.url.replace("http", "ws", 1) + f"/v1/pools/{pool.cpi}/beats"
    seq = time.time_ns() // 1000  # ahead of the agent's millisecond sequence
    good = beat(seq)
    forged = KeyPair.generate()
    replies = asyncio.run(
        exchange(
            url,
            [
                json.dumps({"heartbeat": good, "signature": key.sign(good.encode())}),
                json.dumps({"heartbeat": good, "signature": key.sign(good.encode())}),  # replay
                json.dumps({"heartbeat": beat(seq + 1), "signature": forged.sign(b"x")}),
                json.dumps(
                    {
                        "heartbeat": beat(seq + 2, time.time() - 3600),
                        "signature": key.sign(beat(seq + 2, time.time() - 3600).encode()),
                    }
                ),
                "not json",
            ],
        )
    )
    assert replies[0] == {"seq": seq, "stop": []}
    assert "replayed" in str(replies[1]["error"])
    assert "bad pool signature" in str(replies[2]["error"])
    assert "malformed" in str(replies[4]["error"])
    assert all("error" in r for r in replies[1:])


def test_unknown_pool_is_turned_away(shared: Network) -> None:
    url = shared.url.replace("http", "ws", 1) + "/v1/pools/cpi:local:nobody/none/beats"

    async def go() -> None:
        async with websockets.connect(url) as ws:
            await ws.recv()

    with pytest.raises(websockets.exceptions.WebSocketException):
        asyncio.run(go())


def test_beats_out_of_range_are_refused_and_a_binary_frame_closes(shared: Network) -> None:
    """A signed heartbeat whose numbers no store or clock comparison can take is refused
    by name; the pool's key signed it, but it must not stop the node's bookkeeping."""
    with shared.client() as c:
        pool = next(p for p in c.pools() if p.name == "alpha")
    key = KeyPair.load_or_create(Path(shared.home) / "agents" / "alpha" / "identity" / "pool.key")
    url = shared.url.replace("http", "ws", 1) + f"/v1/pools/{pool.cpi}/beats"
    seq = time.time_ns() // 1000
    texts = [
        beat(seq).replace(f'"seq":{seq}', f'"seq":{2**63}'),
        re.sub(r'"sent_at":[^,]+', '"sent_at":NaN', beat(seq)),
        json.dumps(json.loads(beat(seq)) | {"sent_at": 1e400}),
    ]
    messages = [json.dumps({"heartbeat": t, "signature": key.sign(t.encode())}) for t in texts]
    replies = asyncio.run(exchange(url, messages))
    assert all("malformed heartbeat" in str(r["error"]) for r in replies), replies

    async def binary() -> websockets.frames.Close | None:
        async with websockets.connect(url) as ws:
            await ws.send(b"\x00\x01")
            with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
                await ws.recv()
            return closed.value.rcvd

    close = asyncio.run(binary())
    assert close is not None and close.code == 1003
    good = beat(seq + 1)  # the refused seq was not taken: a later one still lands
    signed = json.dumps({"heartbeat": good, "signature": key.sign(good.encode())})
    assert asyncio.run(exchange(url, [signed])) == [{"seq": seq + 1, "stop": []}]
