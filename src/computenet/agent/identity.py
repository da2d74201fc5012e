"""The agent's identity on disk: its keys and the CPI the node gave its pool.

Keeping these across restarts is what makes a pool the same pool after a reboot: the node
recognises the key and the CPI stays the same.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from computenet.ident.keys import KeyPair


@dataclass
class Identity:
    root: Path
    provider_key: KeyPair
    pool_key: KeyPair

    @classmethod
    def load(cls, root: Path, provider_key: Path) -> Identity:
        """The pool key is the pool's own; the provider key is shared by all the provider's
        pools (one per agent), so it lives outside any one agent's state directory."""
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o700)
        return cls(
            root,
            KeyPair.load_or_create(provider_key),
            KeyPair.load_or_create(root / "pool.key"),
        )

    @property
    def _file(self) -> Path:
        return self.root / "identity.json"

    def saved(self) -> dict[str, str]:
        try:
            data = json.loads(self._file.read_text())
            return {str(k): str(v) for k, v in data.items()}
        except (OSError, ValueError):
            return {}

    def save(self, **values: str) -> None:
        data = {**self.saved(), **values}
        tmp = self._file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, self._file)

    @property
    def pool_cpi(self) -> str | None:
        return self.saved().get("pool_cpi")
