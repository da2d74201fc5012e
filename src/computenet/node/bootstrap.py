"""First start: the admin token, shown once and handed to the local CLI."""

from __future__ import annotations

import logging
from pathlib import Path

from computenet import config
from computenet.model import Role
from computenet.node.runtime import Node
from computenet.node.store import tokens as token_store

log = logging.getLogger("computenet.node")


def ensure_admin_token(node: Node) -> tuple[str, Path | None] | None:
    """Creates the admin token if the node has no token at all; returns it and where it went."""
    with node.store.write() as conn:
        if token_store.count(conn) > 0:
            return None
        secret = token_store.create(conn, "admin", "admin", Role.admin).secret
    path = None
    if node.settings.write_credentials:
        path = config.save_token(node.settings.url, secret)
    return secret, path
