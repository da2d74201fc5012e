"""Tails a task's output files into chunks for the node, without splitting a character."""

from __future__ import annotations

import codecs
import os
from pathlib import Path

from computenet.agent import workdir as job_files
from computenet.model.agent import MAX_LOG_CHUNK
from computenet.model.common import as_text

READ = MAX_LOG_CHUNK // 4  # leaves room for the worst-case UTF-8 → JSON escaping growth


class Tail:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0  # bytes read from the file
        self.sent = 0  # characters handed out, the offset the node sees
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def read(self, final: bool = False) -> list[tuple[int, str]]:
        out: list[tuple[int, str]] = []
        try:
            fd = job_files.open_read(self.path)  # a link the job left there is not followed
        except OSError:
            return out
        with os.fdopen(fd, "rb") as f:
            f.seek(self.offset)
            while True:
                raw = f.read(READ)
                if not raw:
                    break
                self.offset += len(raw)
                text = as_text(self._decoder.decode(raw))  # a NUL the job wrote
                if text:
                    out.append((self.sent, text))
                    self.sent += len(text)
        if final:
            rest = as_text(self._decoder.decode(b"", final=True))
            if rest:
                out.append((self.sent, rest))
                self.sent += len(rest)
        return out
