"""The agent's connection to its node: a bearer token to register, the pool key after that."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import websockets
from pydantic import BaseModel

from computenet.agent.identity import Identity
from computenet.ident import requests as signed
from computenet.ident.keys import KeyPair
from computenet.model import (
    Directives,
    Heartbeat,
    HeartbeatAck,
    Pool,
    PoolInventory,
    PoolRegistration,
    Provider,
    ProviderRegistration,
    ReportBatch,
    ReportResult,
)
from computenet.model.dataset import (
    CopiesAsk,
    DatasetVersion,
    PoolCopies,
    StagingAsk,
    StagingLanded,
    StagingPlan,
)
from computenet.sdk.client import check


class NodeLink:
    def __init__(self, url: str, token: str | None, identity: Identity) -> None:
        self.url = url.rstrip("/")
        self.identity = identity
        headers = {"content-type": "application/json"}
        if token:
            headers["authorization"] = f"Bearer {token}"
        self._http = httpx.AsyncClient(
            base_url=self.url,
            headers=headers,
            timeout=httpx.Timeout(30.0, connect=5.0),
            limits=httpx.Limits(max_connections=8, max_keepalive_connections=8),
        )
        self.pool_cpi = ""

    async def close(self) -> None:
        await self._http.aclose()

    async def register(self, provider: ProviderRegistration, inventory: PoolInventory) -> Pool:
        resp = await self._http.post("/v1/providers", content=_json(provider))
        check(resp)
        Provider.model_validate_json(resp.content)
        signed_at = time.time()
        payload = {"inventory": inventory.model_dump(mode="json"), "signed_at": signed_at}
        reg = PoolRegistration(
            inventory=inventory,
            signed_at=signed_at,
            signature=self.identity.provider_key.sign_json(payload),
        )
        resp = await self._http.post("/v1/pools", content=_json(reg))
        check(resp)
        pool = Pool.model_validate_json(resp.content)
        self.pool_cpi = pool.cpi
        return pool

    async def _signed(
        self, method: str, path: str, body: bytes = b"", timeout: float | None = None
    ) -> httpx.Response:
        headers = signed.sign(self.identity.pool_key, self.pool_cpi, method, path, body)
        extra: dict[str, Any] = {}
        if timeout is not None:
            extra["timeout"] = httpx.Timeout(timeout, connect=5.0)
        resp = await self._http.request(method, path, content=body, headers=headers, **extra)
        check(resp)
        return resp

    async def transfer_key(self) -> str:
        """The node's public key, which transfer tickets are signed with."""
        resp = await self._http.get("/v1/transfers/key")
        check(resp)
        return str(resp.json()["public_key"])

    async def staging(self, ask: StagingAsk) -> StagingPlan:
        """Where one of a job's inputs is, or where one of its outputs goes."""
        resp = await self._signed("POST", f"/v1/pools/{self.pool_cpi}/staging", _json(ask))
        return StagingPlan.model_validate_json(resp.content)

    async def copies(self, path: str) -> list[str]:
        """The dataset copies at, above or below ``path`` of this pool."""
        body = _json(CopiesAsk(path=path))
        resp = await self._signed("POST", f"/v1/pools/{self.pool_cpi}/copies", body)
        return PoolCopies.model_validate_json(resp.content).copies

    async def landed(self, body: StagingLanded) -> DatasetVersion:
        path = f"/v1/pools/{self.pool_cpi}/staging/landed"
        resp = await self._signed("POST", path, _json(body))
        return DatasetVersion.model_validate_json(resp.content)

    async def heartbeat(self, hb: Heartbeat) -> HeartbeatAck:
        resp = await self._signed("POST", f"/v1/pools/{self.pool_cpi}/heartbeat", _json(hb))
        return HeartbeatAck.model_validate_json(resp.content)

    async def leave(self) -> None:
        await self._signed("POST", f"/v1/pools/{self.pool_cpi}/leave", timeout=3)

    def beats(self) -> BeatChannel:
        """Heartbeats over one WebSocket: each still signed, none paying for a request."""
        ws_url = "ws" + self.url[len("http") :] + f"/v1/pools/{self.pool_cpi}/beats"
        return BeatChannel(ws_url, self.identity.pool_key)

    async def directives(self, wait: float, resync: bool) -> Directives:
        path = f"/v1/pools/{self.pool_cpi}/directives?wait={wait:g}"
        if resync:
            path += "&resync=true"
        resp = await self._signed("GET", path, timeout=wait + 30)
        return Directives.model_validate_json(resp.content)

    async def report(self, batch: ReportBatch) -> ReportResult:
        resp = await self._signed("POST", f"/v1/pools/{self.pool_cpi}/reports", _json(batch))
        return ReportResult.model_validate_json(resp.content)


def _json(model: BaseModel) -> bytes:
    return json.dumps(model.model_dump(mode="json"), separators=(",", ":")).encode()


class BeatChannel:
    def __init__(self, url: str, key: KeyPair) -> None:
        self.url, self.key = url, key
        self._ws: Any = None

    async def __aenter__(self) -> BeatChannel:
        self._ws = await websockets.connect(self.url, open_timeout=10, max_size=2**20)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._ws is not None:
            await self._ws.close()

    async def send(self, hb: Heartbeat, timeout: float = 10.0) -> HeartbeatAck:
        raw = hb.model_dump_json()
        await self._ws.send(
            json.dumps({"heartbeat": raw, "signature": self.key.sign(raw.encode())})
        )
        reply = json.loads(await asyncio.wait_for(self._ws.recv(), timeout))
        if "error" in reply:
            raise BeatRefused(str(reply["error"]))
        return HeartbeatAck.model_validate({"stop": reply.get("stop", [])})


class BeatRefused(Exception):
    """The node read the heartbeat and refused it (replayed, unsigned, out of window)."""
