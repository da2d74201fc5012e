"""Tenants: weights for fair share and quotas, set by the operator."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path

from computenet.model import Tenant, TenantPolicy
from computenet.node.auth import Principal, admin, node_of, principal
from computenet.node.runtime import Node
from computenet.node.store import tenants as tenant_store

router = APIRouter(prefix="/v1/tenants", tags=["tenants"])
TenantName = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$")]


@router.get("", response_model=list[Tenant])
async def list_tenants(
    who: Principal = Depends(principal), node: Node = Depends(node_of)
) -> list[Tenant]:
    if who.admin:
        return await node.reading(tenant_store.list_all)
    return [await node.reading(tenant_store.get, who.tenant)]


@router.put("/{name}", response_model=Tenant)
async def set_policy(
    name: TenantName,
    policy: TenantPolicy,
    _: Principal = Depends(admin),
    node: Node = Depends(node_of),
) -> Tenant:
    tenant = await node.writing(tenant_store.put, name, policy)
    node.events.schedule.set()  # a raised quota may let queued work start
    return tenant
