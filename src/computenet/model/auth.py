"""API tokens: who is asking, for which tenant, with which role."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import Field

from computenet.model.common import Model, Name


class Role(StrEnum):
    admin = "admin"
    tenant = "tenant"
    provider = "provider"


class TokenCreate(Model):
    name: Name
    tenant: Name | None = Field(default=None, description="defaults to the token's name")
    role: Role = Role.tenant


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
