"""Reusable receive buffers for large frames.

Every fresh buffer of a megabyte costs hundreds of page faults the first
time it is written (the C allocator serves large blocks with ``mmap`` and
returns them to the system on free), which for 1 MiB messages costs more
than receiving and unmasking them. Large frame payloads are therefore
received into buffers taken from a small process-wide pool and handed back
once unmasked into the message's own ``bytes``. Each thread (each event
loop) has a pool of its own.
"""

from __future__ import annotations

import threading
from typing import Optional

#: Largest buffer the pool keeps (larger frames get a buffer of their own).
MAX_POOLED_BUFFER = 4 * 1024 * 1024
#: Most bytes the pool holds while idle.
MAX_POOLED_BYTES = 8 * 1024 * 1024


class BufferPool:
    """Hands out bytearrays of at least a given size and keeps some of those given back."""

    __slots__ = ("max_buffer", "max_bytes", "_free", "_bytes")

    def __init__(self, max_buffer: int = MAX_POOLED_BUFFER, max_bytes: int = MAX_POOLED_BYTES) -> None:
        self.max_buffer = max_buffer
        self.max_bytes = max_bytes
        self._free: list[bytearray] = []
        self._bytes = 0

    @property
    def pooled_bytes(self) -> int:
        """Bytes held by free buffers."""
        return self._bytes

    def take(self, size: int) -> bytearray:
        """A buffer of at least ``size`` bytes (contents undefined): the smallest free one that fits, else new."""
        best: Optional[int] = None
        for index, buf in enumerate(self._free):
            if len(buf) >= size and (best is None or len(buf) < len(self._free[best])):
                best = index
        if best is None:
            return bytearray(size)
        buf = self._free.pop(best)
        self._bytes -= len(buf)
        return buf

    def give(self, buf: bytearray) -> None:
        """Return ``buf`` (no view of it may be in use any more); kept if it fits the limits."""
        size = len(buf)
        if size > self.max_buffer or size > self.max_bytes:
            return
        while self._bytes + size > self.max_bytes:
            # Make room by dropping the smallest: the large ones are the expensive ones to fault in.
            smallest = min(range(len(self._free)), key=lambda i: len(self._free[i]))
            self._bytes -= len(self._free.pop(smallest))
        self._free.append(buf)
        self._bytes += size


class _ThreadPools(threading.local):
    def __init__(self) -> None:
        self.frames = BufferPool()


_THREAD = _ThreadPools()


def frame_buffers() -> BufferPool:
    """The pool the Protocols of the calling thread receive large frames into."""
    return _THREAD.frames
