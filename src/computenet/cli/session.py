"""The connection the CLI commands share, from global options or the environment."""

from __future__ import annotations

from dataclasses import dataclass

from computenet.cli.output import CLIError
from computenet.sdk import naming
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


def pool_cpi(pool: str | None, what: str = "--pool") -> str | None:
    """A pool named by its name, as ``cnet resources`` lists it, is looked up: one CPI
    to type less."""
    if pool is None or pool.startswith("cpi:"):
        return pool
    try:
        if not pool.strip():
            return naming.pool_cpi(pool, [])
        with client() as c:
            return naming.pool_cpi(pool, c.discover(naming.query(pool), None, True, 10).items)
    except ValueError as e:  # "pool …": said as the option or argument it came from
        raise CLIError(f"{what}{str(e).removeprefix('pool')}", 2) from None
