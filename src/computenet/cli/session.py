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


def pool_cpi(pool: str | None) -> str | None:
    """A pool named by its name, as ``cnet resources`` lists it, is looked up: one CPI
    to type less."""
    if pool is None or pool.startswith("cpi:"):
        return pool
    if not pool.strip():
        raise CLIError("--pool: name a pool (cnet resources lists them)", 2)
    with client() as c:
        found = [p.cpi for p in c.pools() if p.name == pool]
    if len(found) != 1:
        why = "no pool is named so" if not found else f"{len(found)} pools are: name its CPI"
        raise CLIError(f"--pool {pool!r}: {why} (cnet resources lists them)", 2)
    return found[0]
