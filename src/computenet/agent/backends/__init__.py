"""Execution backends: where an agent's assignments actually run."""

import importlib
import inspect

from computenet.agent.backends.base import Backend, LaunchError, Outcome, Task

__all__ = ["Backend", "LaunchError", "Outcome", "Task", "create"]


BACKENDS = {
    "local": "computenet.agent.backends.local:LocalBackend",
    "ray": "computenet.agent.backends.ray:RayBackend",
    "slurm": "computenet.agent.backends.slurm:SlurmBackend",
}


def create(name: str, options: dict[str, str] | None = None) -> Backend:
    """Backends are found by name and imported only when used, so that an agent needs an
    engine's client library only if it fronts that engine."""
    target = BACKENDS.get(name)
    if target is None:
        raise ValueError(f"unknown backend {name!r}; available: {', '.join(BACKENDS)}")
    module_name, _, cls_name = target.partition(":")
    module = importlib.import_module(module_name)
    cls = getattr(module, cls_name)
    known = set(inspect.signature(cls).parameters)
    unknown = set(options or {}) - known
    if unknown:
        raise ValueError(
            f"backend {name!r} has no option {', '.join(sorted(unknown))}; "
            f"it takes: {', '.join(sorted(known)) or 'none'}"
        )
    try:
        backend: Backend = cls(**(options or {}))
    except (ValueError, TypeError) as e:  # a value the backend cannot take: say whose
        given = ", ".join(f"{k}={v}" for k, v in (options or {}).items()) or "none"
        raise ValueError(f"backend {name!r}: {e} (options given: {given})") from e
    return backend
