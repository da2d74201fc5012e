"""computenet: an open computing power network.

Query, discover and call heterogeneous compute owned by many providers through one
standard interface.
"""

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
