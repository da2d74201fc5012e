"""The node's place in the hierarchy: its delegation, its children, resolution, summaries.

A node that is part of a tree keeps its key and its delegation chain in its data
directory (``node.key``, ``federation.json``). Its code is the chain's last link, and it
mints CPIs under that code only. It talks only with its neighbours: its parent (found in
``federation.json``) and its children (recorded when they joined). Everything it is told
by another node is checked against the root key of its own chain.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from sqlalchemy import select

from computenet.ident import requests as signed
from computenet.ident.cpi import CPI, CPIError, parse
from computenet.ident.delegation import (
    ChainError,
    root,
    sign_record,
    verify_chain,
    verify_record,
)
from computenet.ident.keys import KeyPair, b64d, b64e, canonical
from computenet.model import Capacity, Device, DeviceKind, Machine, Pool, PoolStatus
from computenet.model.discovery import PoolSummary
from computenet.model.federation import (
    Aggregate,
    Delegation,
    NodeBrief,
    Record,
    Resolution,
    Summary,
    TreeView,
)
from computenet.node.errors import Conflict, Invalid, NotFound, Unauthorized
from computenet.node.index import LiveIndex
from computenet.node.store import federation as fed_store
from computenet.node.store import pools as pool_store
from computenet.node.store.tables import providers

if TYPE_CHECKING:
    from computenet.node.runtime import Node

log = logging.getLogger("computenet.node")
FILE = "federation.json"
HEADER_TENANT = "X-CNet-Tenant"
HEADER_CHAIN = "X-CNet-Chain"
KEY_FILE = "node.key"
RECORD_TTL = 30.0
_TENANT = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")


def _env(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


@dataclass
class Membership:
    chain: list[Delegation]
    parent_url: str | None = None

    @property
    def code(self) -> str:
        return self.chain[-1].code


def load_membership(data_dir: Path) -> Membership | None:
    path = data_dir / FILE
    if not path.exists():
        return None
    raw = json.loads(path.read_text())
    chain = [Delegation.model_validate(x) for x in raw["chain"]]
    verify_chain(chain)  # a damaged file must not make a node speak for a code it lacks
    return Membership(chain, raw.get("parent_url"))


def save_membership(data_dir: Path, m: Membership) -> None:
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # the database goes here too
    body = {"chain": [x.model_dump(mode="json") for x in m.chain], "parent_url": m.parent_url}
    tmp = data_dir / f"{FILE}.tmp"
    tmp.write_text(json.dumps(body, indent=2))
    os.replace(tmp, data_dir / FILE)


def node_key(data_dir: Path) -> KeyPair:
    return KeyPair.load_or_create(data_dir / KEY_FILE)


@dataclass
class _Heard:
    at: float
    summary: Summary


class Federation:
    def __init__(self, node: Node) -> None:
        self.node = node
        data_dir = node.settings.data_dir
        self.key = node_key(data_dir)
        self.membership = load_membership(data_dir)
        if self.membership is not None and self.membership.chain[-1].public_key != (
            self.key.public_key
        ):
            raise ChainError(f"{data_dir / FILE} was delegated to another key than {KEY_FILE}")
        self.summary_every = _env("CNET_SUMMARY_EVERY", 2.0)
        self.summary_timeout = _env("CNET_SUMMARY_TIMEOUT", 10.0)
        self.children: dict[str, Delegation] = {}
        self.heard: dict[str, _Heard] = {}
        self.cache: dict[str, tuple[float, Resolution]] = {}
        self.tree_index = LiveIndex()
        self._tree_built = 0.0
        self._seq = time.time_ns() // 1000
        self._standalone: list[Delegation] | None = None
        self.http = httpx.AsyncClient(timeout=10.0)

    # --- who this node is ---------------------------------------------------------------

    @property
    def code(self) -> str:
        return self.membership.code if self.membership else self.node.settings.code

    @property
    def chain(self) -> list[Delegation]:
        return self.membership.chain if self.membership else []

    @property
    def root_key(self) -> str | None:
        return self.chain[0].public_key if self.chain else None

    @property
    def parent(self) -> Delegation | None:
        return self.chain[-2] if len(self.chain) >= 2 else None

    @property
    def url(self) -> str:
        return self.chain[-1].url if self.chain else ""

    def _own_root(self) -> list[Delegation]:
        """A node outside any tree still signs its records: its chain is a root of its
        own, made once rather than on every answer."""
        if self._standalone is None:
            s = self.node.settings
            self._standalone = [root(self.key, self.code, f"http://{s.host}:{s.port}")]
        return self._standalone

    def require_tree(self) -> None:
        if not self.chain:
            raise Conflict(
                "this node is in no hierarchy: start one with 'cnet node init --root', or "
                "join one with 'cnet node join'"
            )

    async def load(self) -> None:
        self.children = {c.code: c for c in await self.node.reading(fed_store.list_children)}

    def neighbour_key(self, code: str) -> str | None:
        if (p := self.parent) is not None and p.code == code:
            return p.public_key
        child = self.children.get(code)
        return child.public_key if child else None

    # --- talking to neighbours ----------------------------------------------------------

    async def call(
        self,
        method: str,
        base: str,
        path: str,
        content: bytes = b"",
        params: dict[str, Any] | None = None,
        tenant: str | None = None,
    ) -> httpx.Response:
        """A request to another node, signed with this node's key. With ``tenant``, it is
        made for that tenant of this node, and carries this node's delegation chain, so a
        node that is not a neighbour can check who asks."""
        url = httpx.URL(base.rstrip("/") + path, params=params)
        target = url.raw_path.decode("latin-1")
        headers = signed.sign(self.key, self.code, method, target, content, signed.HEADER_NODE)
        headers["content-type"] = "application/json"
        if tenant is not None:
            headers[HEADER_TENANT] = tenant
            headers[HEADER_CHAIN] = b64e(canonical([x.model_dump(mode="json") for x in self.chain]))
        return await self.http.request(method, url, content=content, headers=headers)

    def far_caller(self, code: str, chain_b64: str, tenant: str) -> tuple[str, str]:
        """A node anywhere in the tree, calling for one of its tenants: its chain must
        verify against this node's root and end at ``code``. Returns the caller's key and
        the tenant name it gets here, ``<tenant>.<code>``."""
        root = self.root_key
        if root is None:
            raise Unauthorized("this node is in no hierarchy; it takes no calls from nodes")
        try:
            raw = json.loads(b64d(chain_b64))
            chain = [Delegation.model_validate(x) for x in raw]
            link = verify_chain(chain, root)
        except (ValueError, TypeError) as e:
            raise Unauthorized(f"the caller's delegation chain does not verify: {e}") from e
        if link.code != code:
            raise Unauthorized(f"the chain is {link.code}'s, not {code}'s")
        name = f"{tenant}.{code}"
        if not _TENANT.fullmatch(tenant) or len(name) > 63:
            raise Unauthorized(f"invalid tenant {tenant!r} from {code}", field="tenant")
        return link.public_key, name

    # --- resolution ---------------------------------------------------------------------

    async def resolve(self, text: str) -> Resolution:
        try:
            cpi = parse(text)
        except CPIError as e:
            raise Invalid(str(e), field="cpi") from e
        if cpi.authority == self.code:
            return await self._local(str(cpi))
        hit = self.cache.get(str(cpi))
        if hit is not None and hit[0] > time.monotonic():
            res = hit[1]
            return res.model_copy(update={"path": [self.code, *res.path], "cached": True})
        base = self._next_hop(cpi.authority)
        r = await self.call("GET", base, f"/v1/resolve/{cpi}")
        if r.status_code == 404:
            raise NotFound(r.json().get("detail", f"{cpi} does not resolve"), field="cpi")
        if r.status_code != 200:
            raise Conflict(f"resolving {cpi} at {base} failed: HTTP {r.status_code}")
        res = Resolution.model_validate(r.json())
        self._check(res, str(cpi))
        res = res.model_copy(update={"cached": False})
        self.cache[str(cpi)] = (time.monotonic() + min(res.record.ttl, RECORD_TTL), res)
        if len(self.cache) > 200_000:
            self.cache.clear()
        return res.model_copy(update={"path": [self.code, *res.path]})

    def _next_hop(self, authority: str) -> str:
        """Down to the child whose code the authority lies under, else up to the parent."""
        for code, child in self.children.items():
            if authority == code or authority.startswith(code + "."):
                return child.url
        below = authority == self.code or authority.startswith(self.code + ".")
        if self.membership is not None and self.membership.parent_url and not below:
            return self.membership.parent_url
        raise NotFound(f"no node in this tree holds the code {authority!r}", field="cpi")

    def _check(self, res: Resolution, cpi: str) -> None:
        """Refused loudly: a node must never pass on a record it cannot prove."""
        root = self.root_key
        if root is None:
            raise Unauthorized("this node has no root to check records against")
        if res.record.cpi != cpi:
            raise Unauthorized(f"asked for {cpi}, answered for {res.record.cpi}", field="cpi")
        try:
            verify_record(res.record, res.signature, res.chain, root)
        except ChainError as e:
            log.error("refused a record for %s: %s", cpi, e)
            raise Unauthorized(f"the record for {cpi} does not verify: {e}", field="cpi") from e

    async def _local(self, cpi: str) -> Resolution:
        c = parse(cpi)
        if c.kind == "provider":
            record = await self.node.reading(_provider_record, cpi, self.code, self.url)
        else:
            pool_cpi = str(CPI(c.authority, c.path[:2]))
            entry = self.node.index.entries.get(pool_cpi)
            pool = entry.pool if entry else await self.node.reading(pool_store.get, pool_cpi)
            record = _pool_record(pool, cpi, c.kind, self.code, self.url)
        return Resolution(
            record=record,
            signature=sign_record(self.key, record),
            chain=self.chain or self._own_root(),
            path=[self.code],
        )

    # --- summaries ----------------------------------------------------------------------

    async def summary_loop(self) -> None:
        """Tells the parent, every few seconds, what this node and its subtree hold."""
        while True:
            await asyncio.sleep(self.summary_every)
            if self.membership is None or not self.membership.parent_url:
                continue
            try:
                # Microseconds, so that a restarted node's summaries are still newer.
                self._seq = max(self._seq + 1, time.time_ns() // 1000)
                body = Summary(
                    code=self.code,
                    seq=self._seq,
                    at=time.time(),
                    pools=self.subtree_pools(),
                    nodes=self.subtree_nodes(),
                )
                r = await self.call(
                    "POST",
                    self.membership.parent_url,
                    "/v1/federation/summaries",
                    content=body.model_dump_json().encode(),
                )
                if r.status_code >= 400:
                    log.warning("parent refused the summary: %s", r.text[:300])
            except httpx.HTTPError as e:
                log.info("parent not reachable: %s", e)

    def accept_summary(self, sender: str, summary: Summary) -> None:
        if summary.code != sender or sender not in self.children:
            raise Unauthorized(f"{sender} may send only its own summary", field="code")
        prefix = sender + "."
        for p in summary.pools:
            authority = parse(p.cpi).authority
            if authority != sender and not authority.startswith(prefix):
                raise Unauthorized(f"{sender} may not report {p.cpi}", field="pools")
        for n in summary.nodes:
            if n.code != sender and not n.code.startswith(prefix):
                raise Unauthorized(f"{sender} may not report node {n.code}", field="nodes")
        last = self.heard.get(sender)
        if last is not None and summary.seq <= last.summary.seq:
            raise Conflict(f"summary seq {summary.seq} is not newer: replayed", field="seq")
        self.heard[sender] = _Heard(time.time(), summary)
        self._tree_built = 0.0

    def _live_children(self) -> list[_Heard]:
        cutoff = time.time() - self.summary_timeout
        return [h for h in self.heard.values() if h.at >= cutoff]

    def subtree_pools(self) -> list[PoolSummary]:
        own = [
            e.to_summary()
            for e in self.node.index.entries.values()
            if e.pool.status is PoolStatus.online
        ]
        return own + [p for h in self._live_children() for p in h.summary.pools]

    def subtree_nodes(self) -> list[NodeBrief]:
        me = NodeBrief(
            code=self.code,
            url=self.url or "http://unknown",
            parent=self.parent.code if self.parent else None,
            last_summary_at=time.time(),
            pools_online=sum(
                e.pool.status is PoolStatus.online for e in self.node.index.entries.values()
            ),
        )
        below = []
        cutoff = time.time() - self.summary_timeout
        for code, child in self.children.items():
            h = self.heard.get(code)
            if h is None or h.at < cutoff or not any(n.code == code for n in h.summary.nodes):
                below.append(
                    NodeBrief(
                        code=code,
                        url=child.url,
                        parent=self.code,
                        status="offline",
                        last_summary_at=h.at if h else None,
                    )
                )
            else:
                below += h.summary.nodes
        return [me, *below]

    def tree(self) -> TreeView:
        return TreeView(
            code=self.code,
            url=self.url or "http://unknown",
            root=self.chain[0].code if self.chain else self.code,
            nodes=self.subtree_nodes(),
            aggregates=aggregate(self.subtree_pools()),
        )

    def tree_index_now(self) -> LiveIndex:
        """This node's and its subtree's pools, as one index; rebuilt at most every second."""
        if time.monotonic() - self._tree_built > 1.0:
            self.tree_index.load([_as_pool(s) for s in self.subtree_pools()])
            self._tree_built = time.monotonic()
        return self.tree_index

    async def close(self) -> None:
        await self.http.aclose()


def _provider_record(conn: Any, cpi: str, owner: str, url: str) -> Record:
    row = conn.execute(select(providers).where(providers.c.cpi == cpi)).first()
    if row is None:
        raise NotFound(f"no provider {cpi!r}", field="cpi")
    return Record(
        cpi=cpi,
        kind="provider",
        owner=owner,
        endpoints=[url] if url else [],
        capabilities={"name": row.name, "public_key": row.public_key},
        status="active",
        issued_at=time.time(),
        ttl=RECORD_TTL,
    )


def _pool_record(pool: Pool, cpi: str, kind: str, owner: str, url: str) -> Record:
    caps: dict[str, Any]
    if kind == "pool":
        caps = {
            "region": pool.region,
            "backend": pool.backend,
            "capacity": pool.capacity.model_dump(mode="json"),
            "free": pool.free.model_dump(mode="json"),
            "scu": pool.scu,
            "machines": len(pool.machines),
            "price": pool.price.model_dump(mode="json") if pool.price else None,
        }
    else:
        found: dict[str, Any] | None = None
        for m in pool.machines:
            if m.cpi == cpi:
                found = m.model_dump(mode="json", exclude={"devices", "calibration"})
                found["devices"] = len(m.devices)
            for d in m.devices:
                if d.cpi == cpi:
                    found = d.model_dump(mode="json")
        if found is None:
            raise NotFound(f"no {kind} {cpi!r}", field="cpi")
        caps = found
    return Record(
        cpi=cpi,
        kind=kind,
        owner=owner,
        endpoints=[url] if url else [],
        capabilities=caps,
        status=pool.status.value,
        issued_at=time.time(),
        ttl=RECORD_TTL,
    )


def aggregate(pools: list[PoolSummary]) -> list[Aggregate]:
    """Per device class and region: devices total and free, SCU, price range, pools."""
    groups: dict[tuple[str, str, str, str], dict[str, Any]] = defaultdict(
        lambda: {"total": 0, "free": 0, "scu": 0.0, "prices": [], "pools": 0}
    )
    for p in pools:
        if p.status is not PoolStatus.online:
            continue
        classes = [(g.kind, g.vendor, g.model, g.count) for g in p.accelerators]
        if not classes:
            arch = p.cpu_arch[0] if p.cpu_arch else ""
            classes = [("cpu", "", arch, int(p.capacity.cpus))]
        busy_gpus = p.capacity.gpus - p.free.gpus
        for kind, vendor, model, count in classes:
            g = groups[(kind, vendor, model, p.region)]
            g["total"] += count
            if kind == "cpu":
                g["free"] += int(p.free.cpus)
            else:
                taken = min(count, busy_gpus)
                busy_gpus -= taken
                g["free"] += count - taken
            g["scu"] += p.scu or 0.0
            g["pools"] += 1
            if p.price is not None:
                g["prices"].append(p.price.gpu_hour if kind != "cpu" else p.price.cpu_hour)
    return [
        Aggregate(
            kind=k,
            vendor=v,
            model=m,
            region=r,
            devices_total=g["total"],
            devices_free=g["free"],
            scu=round(g["scu"], 6),
            price_min=min(g["prices"]) if g["prices"] else None,
            price_max=max(g["prices"]) if g["prices"] else None,
            pools_online=g["pools"],
        )
        for (k, v, m, r), g in sorted(groups.items())
    ]


def _as_pool(s: PoolSummary) -> Pool:
    """A remote pool as the index holds pools: its accelerators become one machine's
    devices, enough for every discovery filter."""
    devices = [
        Device(
            kind=DeviceKind(g.kind),
            name=f"{g.kind}{i}",
            index=i,
            vendor=g.vendor,
            model=g.model,
            arch=g.arch,
            memory_bytes=g.memory_bytes,
        )
        for i, g in enumerate(x for x in s.accelerators for _ in range(x.count))
    ]
    machine = Machine(
        name="summary",
        cpus=max(1, int(s.capacity.cpus)),
        memory_bytes=s.capacity.memory_bytes,
        arch=s.cpu_arch[0] if s.cpu_arch else "",
        devices=devices,
    )
    return Pool(
        cpi=s.cpi,
        provider=s.provider,
        name=s.name,
        backend=s.backend,
        region=s.region,
        labels=s.labels,
        status=s.status,
        capacity=s.capacity,
        allocated=s.capacity.minus(s.free) if s.free else Capacity(),
        machines=[machine],
        public_key="",
        registered_at=s.last_heartbeat_at or datetime.fromtimestamp(0, UTC),
        last_heartbeat_at=s.last_heartbeat_at,
        price=s.price,
        carbon_intensity=s.carbon_intensity,
        scu=s.scu,
    )
