"""The Python SDK: the same client the CLI uses."""

from computenet.sdk.client import ApiError, AsyncClient, Client, JobFailed

__all__ = ["ApiError", "AsyncClient", "Client", "JobFailed"]
