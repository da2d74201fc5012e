"""A test hook: ``CNET_TRANSFER_FAULTS`` makes the client break its own transfer on purpose.

``corrupt:chunk=N`` flips a byte of the N-th chunk this client moves (counting from 1, its
first attempt only), as a bad wire would; the receiver must catch it and have it sent
again. ``kill:chunk=N`` kills the client with SIGKILL once N chunks have been verified,
as a crash half way would; running the copy again must move only what is missing.
``stop:chunk=N`` stops the client with SIGSTOP there instead, holding the copy open at a
known point until it gets SIGCONT. Several faults are separated by commas. The data
server never reads the variable.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

from computenet.transfer.wire import TransferError

ENV = "CNET_TRANSFER_FAULTS"
FAULTS = ("corrupt", "kill", "stop")


@dataclass
class Faults:
    corrupt_at: int | None = None
    kill_at: int | None = None
    stop_at: int | None = None
    moved: int = 0

    @classmethod
    def from_env(cls) -> Faults:
        f = cls()
        for item in filter(None, (x.strip() for x in os.environ.get(ENV, "").split(","))):
            what, _, arg = item.partition(":")
            key, _, value = arg.partition("=")
            if key != "chunk" or not value.isdigit() or what not in FAULTS:
                kinds = ", ".join(f"{k}:chunk=N" for k in FAULTS)
                raise TransferError(f"{ENV}: {item!r} is not one of {kinds}")
            setattr(f, f"{what}_at", int(value))
        return f

    def tamper(self, ordinal: int, data: bytes) -> bytes:
        """``data`` as the wire delivers it: damaged when this is the chunk to corrupt."""
        if ordinal != self.corrupt_at or not data:
            return data
        return bytes([data[0] ^ 0xFF]) + data[1:]

    def verified(self) -> None:
        self.moved += 1
        if self.kill_at is not None and self.moved >= self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if self.stop_at is not None and self.moved >= self.stop_at:
            self.stop_at = None  # once: SIGCONT lets the copy go on
            os.kill(os.getpid(), signal.SIGSTOP)
