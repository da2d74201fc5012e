"""Where computenet keeps its files, and the credentials that let the CLI talk to a node.

``CNET_HOME`` puts everything (data, config) under one directory: handy for tests and for
running several nodes on one machine.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import platformdirs

DEFAULT_PORT = 8787
DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_PORT}"


def home() -> Path | None:
    value = os.environ.get("CNET_HOME")
    return Path(value).expanduser() if value else None


def data_dir() -> Path:
    h = home()
    return h / "data" if h else Path(platformdirs.user_data_dir("computenet"))


def config_dir() -> Path:
    h = home()
    return h / "config" if h else Path(platformdirs.user_config_dir("computenet"))


def own_dirs() -> tuple[Path, ...]:
    """Where computenet keeps this user's state: as ``CNET_HOME`` says, and the defaults
    beside (another process of the user may use those)."""
    defaults = (
        Path(platformdirs.user_config_dir("computenet")),
        Path(platformdirs.user_data_dir("computenet")),
    )
    return (config_dir(), data_dir(), *defaults)


def credentials_path() -> Path:
    return config_dir() / "credentials.json"


def _normal(url: str) -> str:
    return url.rstrip("/")


def load_credentials() -> dict[str, str]:
    path = credentials_path()
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def save_token(url: str, token: str) -> Path:
    """Written 0600 and atomically: the file holds secrets and is read by other processes."""
    path = credentials_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    creds = load_credentials()
    creds[_normal(url)] = token
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(creds, f, indent=2)
    os.replace(tmp, path)
    return path


def default_url() -> str:
    url = os.environ.get("CNET_URL", DEFAULT_URL).strip()
    return url if "://" in url else f"http://{url}"


def token_for(url: str) -> str | None:
    return os.environ.get("CNET_TOKEN") or load_credentials().get(_normal(url))
