"""computenet: an open computing power network.

Query, discover and call heterogeneous compute owned by many providers through one
standard interface.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from computenet.functions.executor import Executor, RemoteError, RemoteFunction, function
    from computenet.functions.xp import xp
    from computenet.sdk.client import AsyncClient, Client, JobFailed

__version__ = "0.1.0"
__all__ = [
    "AsyncClient",
    "Client",
    "Executor",
    "JobFailed",
    "RemoteError",
    "RemoteFunction",
    "__version__",
    "function",
    "xp",
]

# Imported on first use: every `cnet` command imports this package, and the function
# executor alone would add a third to its start-up.
_HOMES = {
    "AsyncClient": "computenet.sdk.client",
    "Client": "computenet.sdk.client",
    "JobFailed": "computenet.sdk.client",
    "Executor": "computenet.functions.executor",
    "RemoteError": "computenet.functions.executor",
    "RemoteFunction": "computenet.functions.executor",
    "function": "computenet.functions.executor",
    "xp": "computenet.functions.xp",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'computenet' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
