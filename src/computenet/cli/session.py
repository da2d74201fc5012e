"""The connection the CLI commands share, from global options or the environment."""

from __future__ import annotations

from dataclasses import dataclass

from computenet.cli.output import CLIError
from computenet.sdk.client import Client


@dataclass
class Session:
    url: str | None = None
    token: str | None = None


current = Session()


def client() -> Client:
    c = Client(current.url, current.token)
    if not c.token:
        raise CLIError(
            f"no token for {c.url}: pass --token, set CNET_TOKEN, or run 'cnet up' on this machine"
        )
    return c
