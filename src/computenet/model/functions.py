"""Functions on the network: sessions of warm workers, calls and results.

A client opens a session: the node starts warm worker jobs for it (ordinary jobs, placed by
the scheduler with the session's resources), then relays calls to them and results back.
Payloads are cloudpickle bytes, base64 in JSON; anything larger than ``INLINE_MAX`` goes
as a blob (``/v1/blobs``) and travels by its BLAKE3 hash instead.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from computenet.ident.cpi import CPIStr
from computenet.model.common import Model
from computenet.model.job import ResourceRequest

INLINE_MAX = 1 << 20
BlobId = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Payload = Annotated[str, Field(max_length=2 * INLINE_MAX)]


class SessionCreate(Model):
    resources: ResourceRequest = Field(default_factory=ResourceRequest)
    pool: CPIStr | None = None
    regions: list[Annotated[str, Field(pattern=r"^[a-z0-9-]{1,63}$")]] = Field(
        default_factory=list, max_length=64
    )
    workers: int = Field(default=1, ge=1, le=256, description="warm worker processes")
    runtime: dict[str, Annotated[str, Field(max_length=64)]] = Field(
        default_factory=dict, max_length=16, description="the client's Python and packages"
    )


class Session(Model):
    id: str
    jobs: list[str]
    token: str = Field(description="what the session's workers present; the creator's only")


class Call(Model):
    id: int = Field(ge=0)
    payload: Payload | None = None
    blob: BlobId | None = None


class Calls(Model):
    calls: list[Call] = Field(default_factory=list, max_length=10_000)


class Result(Model):
    id: int = Field(ge=0)
    ok: bool
    payload: Payload | None = None
    blob: BlobId | None = None
    error: Annotated[str, Field(max_length=65_536)] = ""


class Results(Model):
    results: list[Result] = Field(default_factory=list, max_length=10_000)
    error: str = Field(default="", description="set when the session cannot go on")
    workers: int = Field(default=0, description="workers that said hello")


class Hello(Model):
    runtime: dict[str, Annotated[str, Field(max_length=64)]] = Field(
        default_factory=dict, max_length=16
    )
