"""Domain errors. Each maps to one HTTP status and a problem+json body in ``problems.py``."""

from __future__ import annotations


class NodeError(Exception):
    status = 400
    title = "Bad request"

    def __init__(self, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field


class Invalid(NodeError):
    status = 422
    title = "Invalid request"


class Unauthorized(NodeError):
    status = 401
    title = "Unauthorized"


class Forbidden(NodeError):
    status = 403
    title = "Forbidden"


class NotFound(NodeError):
    status = 404
    title = "Not found"


class Conflict(NodeError):
    status = 409
    title = "Conflict"


class TooLarge(NodeError):
    status = 413
    title = "Request too large"


class Busy(NodeError):
    """Full for now: the caller sends again once the other end has taken some."""

    status = 429
    title = "Too many requests"
