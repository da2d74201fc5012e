"""Tokens: the operator creates, lists and revokes them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path

from computenet.model import Token, TokenCreate, TokenSecret
from computenet.node.auth import Principal, admin, node_of
from computenet.node.runtime import Node
from computenet.node.store import pools as pool_store
from computenet.node.store import tokens as token_store

router = APIRouter(prefix="/v1/tokens", tags=["tokens"])
TokenId = Annotated[str, Path(pattern=r"^[0-9a-f]{1,32}$")]


@router.post("", status_code=201, response_model=TokenSecret)
async def create_token(
    body: TokenCreate, _: Principal = Depends(admin), node: Node = Depends(node_of)
) -> TokenSecret:
    return await node.writing(token_store.create, body.name, body.tenant or body.name, body.role)


@router.get("", response_model=list[Token])
async def list_tokens(_: Principal = Depends(admin), node: Node = Depends(node_of)) -> list[Token]:
    return await node.reading(token_store.list_all)


@router.delete("/{token_id}", response_model=Token)
async def revoke_token(
    token_id: TokenId, _: Principal = Depends(admin), node: Node = Depends(node_of)
) -> Token:
    token = await node.writing(token_store.revoke, token_id)
    node.forget_tokens()
    node.forget_pool_keys({token_id})  # the pools it registered are cut off with it
    suspended = await node.writing(pool_store.suspend_token, token_id)
    if suspended:
        await node.reindex(set(suspended))
    return token
