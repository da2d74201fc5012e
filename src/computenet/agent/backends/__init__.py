"""Execution backends: where an agent's assignments actually run."""

from computenet.agent.backends.base import Backend, LaunchError, Outcome, Task

__all__ = ["Backend", "LaunchError", "Outcome", "Task", "create"]


def create(name: str) -> Backend:
    """Backends are looked up by name so that a new one touches only its own module."""
    if name == "local":
        from computenet.agent.backends.local import LocalBackend

        return LocalBackend()
    raise ValueError(f"unknown backend {name!r}; available: local")
