"""First start: the admin token, shown once and handed to the local CLI."""

from __future__ import annotations

import logging
from pathlib import Path

from computenet import config
from computenet.model import Role
from computenet.node.errors import NodeError
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


def adopt_admin_token(node: Node) -> Path | None:
    """A node started again at another address (another port) is still the same node: an
    admin token of its own that the local CLI holds for an earlier address is saved for
    this one too, so that ``cnet`` works there without ``CNET_TOKEN``."""
    url = node.settings.url
    if not node.settings.write_credentials:
        return None
    try:
        creds = config.load_credentials()
        if creds.get(url.rstrip("/")):
            return None
        with node.store.read() as conn:
            for secret in dict.fromkeys(creds.values()):
                try:
                    token = token_store.authenticate(conn, secret)
                except NodeError:
                    continue  # another node's, or revoked
                if token.role is Role.admin:
                    return config.save_token(url, secret)
    except OSError as e:  # a credentials file it may not read or write: serve without
        log.warning("cannot save the admin token for %s: %s", url, e)
    return None
