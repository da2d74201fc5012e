"""The agent's connection to its node: a bearer token to register, the pool key after that."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
from pydantic import BaseModel

from computenet.agent.identity import Identity
from computenet.ident import requests as signed
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

    async def heartbeat(self, hb: Heartbeat) -> HeartbeatAck:
        resp = await self._signed("POST", f"/v1/pools/{self.pool_cpi}/heartbeat", _json(hb))
        return HeartbeatAck.model_validate_json(resp.content)

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
