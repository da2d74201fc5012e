"""API tokens: who is asking, for which tenant, with which role."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import Field, ValidationInfo, field_validator

from computenet.model.common import MemoryBytes, Model, Name


class Role(StrEnum):
    admin = "admin"
    tenant = "tenant"
    provider = "provider"


class TokenCreate(Model):
    name: Name
    tenant: Name | None = Field(
        default=None,
        validate_default=True,
        description="defaults to the token's name; no dots (NAME.NODE is another node's tenant)",
    )
    role: Role = Role.tenant

    @field_validator("tenant")
    @classmethod
    def _local(cls, tenant: str | None, info: ValidationInfo) -> str | None:
        """A job forwarded from another node acts here as ``NAME.NODE``: a local tenant
        with a dotted name could be that tenant, and share its jobs, home and quota."""
        name = tenant if tenant is not None else info.data.get("name")
        if name is not None and "." in name:
            said = (
                "the tenant" if tenant is not None else "the token's name, its tenant by default,"
            )
            raise ValueError(
                f"{said} holds a dot: dotted names (NAME.NODE) are other nodes' tenants; "
                "name a tenant without dots"
            )
        return name


class Token(Model):
    id: str
    name: str
    tenant: str
    role: Role
    created_at: datetime
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None


class TokenSecret(Token):
    secret: str = Field(description="shown once; only its hash is stored")


class TenantPolicy(Model):
    """How much of the network a tenant may hold, and its weight when capacity is contended.

    Shares are dominant-resource shares (DRF): a tenant's share is the largest fraction of
    any resource (CPUs, accelerators) it holds. Under contention the scheduler serves the
    tenant whose share divided by its weight is smallest.
    """

    weight: float = Field(default=1.0, gt=0, le=1_000_000)
    max_cpus: float | None = Field(default=None, ge=0, le=10_000_000)
    max_gpus: int | None = Field(default=None, ge=0, le=10_000_000)
    max_data: MemoryBytes | None = Field(
        default=None, description="bytes its home may hold in each pool (512M, 10G, …)"
    )


class Tenant(TenantPolicy):
    name: str
    cpus_in_use: float = 0.0
    gpus_in_use: int = 0
