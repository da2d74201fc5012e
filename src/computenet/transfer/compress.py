"""zstd for chunks that shrink: chosen by a sample, kept chunk by chunk only where it pays.

Compressing costs the sender CPU and loses ``sendfile``; it pays only where the data is
redundant (text, logs, sparse arrays) and the link is slower than zstd's fast levels. So a
transfer samples its first files and turns compression on when the sample shrinks by a
fifth; a chunk that does not shrink still goes as it is.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import zstandard

from computenet.transfer.paths import open_read
from computenet.transfer.wire import WireError

LEVEL = 1
SAMPLE_FILES = 8
SAMPLE_BYTES = 128 << 10  # from the start of each sampled file
WORTH = 0.8  # compressed / raw at or below this turns compression on


def worth_it(sources: Sequence[str | Path]) -> bool:
    """Whether a sample of ``sources`` shrinks enough to compress the transfer."""
    raw = packed = 0
    z = zstandard.ZstdCompressor(level=LEVEL)
    for p in sources[:SAMPLE_FILES]:
        fd = open_read(p)
        try:
            data = os.pread(fd, SAMPLE_BYTES, 0)
        finally:
            os.close(fd)
        raw += len(data)
        packed += len(z.compress(data)) if data else 0
    return raw > 0 and packed <= WORTH * raw


def pack(data: bytes) -> bytes | None:
    """The chunk compressed, or None where that would not make it smaller."""
    out = zstandard.ZstdCompressor(level=LEVEL).compress(data)
    return out if len(out) < len(data) else None


def unpack(data: bytes | memoryview, size: int) -> bytes:
    """A chunk of exactly ``size`` bytes from its zstd frame; never more. The frame must
    state that size in its header: zstd allocates what the header states, whatever
    ``max_output_size`` says, so a frame claiming more is refused before it is read."""
    try:
        stated = zstandard.get_frame_parameters(data).content_size
        if stated != size:
            raise WireError(
                f"a compressed chunk states {stated} bytes in its frame, not {size}"
                if stated != zstandard.CONTENTSIZE_UNKNOWN
                else "a compressed chunk does not state its size in its frame"
            )
        out = zstandard.ZstdDecompressor().decompress(data, max_output_size=size)
    except zstandard.ZstdError as e:
        raise WireError(f"a compressed chunk does not decompress: {e}") from e
    if len(out) != size:
        raise WireError(f"a compressed chunk came out at {len(out)} bytes, not {size}")
    return out
