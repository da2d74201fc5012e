"""computenet: an open computing power network.

Query, discover and call heterogeneous compute owned by many providers through one
standard interface.
"""

from computenet.sdk.client import AsyncClient, Client, JobFailed

__version__ = "0.1.0"
__all__ = ["AsyncClient", "Client", "JobFailed", "__version__"]
