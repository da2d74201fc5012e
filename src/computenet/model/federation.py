"""The node hierarchy: delegations, resolution records and the summaries nodes send up.

A root node certifies itself; every other node holds a chain of delegations from the root
down to itself, each link signed by the node above. A node's code is the last link's
``code``, and it mints CPIs only under it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field

from computenet.ident.cpi import check_authority
from computenet.model.common import Model
from computenet.model.discovery import PoolSummary

NodeCode = Annotated[str, AfterValidator(check_authority)]
Url = Annotated[str, Field(min_length=8, max_length=2000, pattern=r"^https?://[^\s]+$")]
Key = Annotated[str, Field(min_length=43, max_length=43, pattern=r"^[A-Za-z0-9_-]+$")]
Signature = Annotated[str, Field(min_length=86, max_length=86, pattern=r"^[A-Za-z0-9_-]+$")]
Label = Annotated[str, Field(pattern=r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$")]
MAX_DEPTH = 8


class Delegation(Model):
    """``issuer`` grants ``code`` to the holder of ``public_key``, reachable at ``url``.

    The root's own link has no issuer and is signed by its own key. Every other link is
    signed by the key of the link above it, and its code extends the issuer's code by one
    label (``cn`` → ``cn.east`` → ``cn.east.fin``).
    """

    code: NodeCode
    public_key: Key
    url: Url
    issuer: NodeCode | None = None
    issued_at: float
    expires_at: float
    signature: Signature

    def payload(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"signature"})


Chain = Annotated[list[Delegation], Field(min_length=1, max_length=MAX_DEPTH)]


class InviteCreate(Model):
    label: Label = Field(description="the child's own label; its code is <this code>.<label>")
    ttl: float = Field(default=3600.0, gt=0, le=7 * 86400)


class Invite(Model):
    """A one-time join token, shown once."""

    code: NodeCode
    token: str
    expires_at: float


class JoinRequest(Model):
    """Signed by the joining node's key, so the parent learns that key is really held."""

    token: Annotated[str, Field(min_length=10, max_length=200)]
    public_key: Key
    url: Url
    signed_at: float
    signature: Signature

    def payload(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"signature"})


class JoinAnswer(Model):
    chain: Chain


RecordKind = Literal["node", "provider", "pool", "machine", "device"]


class Record(Model):
    """What a CPI names, as its owner node states it."""

    cpi: str
    kind: RecordKind
    owner: NodeCode
    endpoints: list[str] = Field(default_factory=list, max_length=16)
    capabilities: dict[str, Any] = Field(default_factory=dict)
    status: str = ""
    issued_at: float
    ttl: float = Field(ge=0, le=86400)


class Resolution(Model):
    """A record with the proof that its owner may state it: the owner's signature over the
    record, and the owner's delegation chain from the root. ``path`` lists the node codes
    that were consulted, in order."""

    record: Record
    signature: Signature
    chain: Chain
    path: list[NodeCode] = Field(default_factory=list, max_length=32)
    cached: bool = False


class NodeBrief(Model):
    code: NodeCode
    url: Url
    parent: NodeCode | None = None
    status: Literal["online", "offline"] = "online"
    last_summary_at: float | None = None
    pools_online: int = 0


class Summary(Model):
    """What a node tells its parent every few seconds: its pools and its subtree's, as
    discovery summaries, and the nodes below it. Signed by the sender's node key."""

    code: NodeCode
    seq: int = Field(ge=1)
    at: float
    pools: list[PoolSummary] = Field(default_factory=list, max_length=100_000)
    nodes: list[NodeBrief] = Field(default_factory=list, max_length=10_000)


class Aggregate(Model):
    """One device class in one region, over the pools a node sees."""

    kind: str
    vendor: str
    model: str
    region: str
    devices_total: int
    devices_free: int
    scu: float
    price_min: float | None = None
    price_max: float | None = None
    pools_online: int


class TreeView(Model):
    code: NodeCode
    url: Url
    root: NodeCode
    nodes: list[NodeBrief]
    aggregates: list[Aggregate]
