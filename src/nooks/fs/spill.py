"""Bytes kept until the next checkpoint, out of the Python heap.

The undo log and the journal keep every byte written since the last checkpoint.
Kept as Python objects, each 128 KiB write would take fresh memory (page
faults: ~50 µs here); a memfd written from the start again after each
checkpoint keeps its pages, so keeping a write costs a copy (~10 µs). Above
``keep`` bytes the file is shrunk back at the next reset.
"""

from __future__ import annotations

import os
import threading


class Spill:
    def __init__(self, name: str, keep: int = 256 << 20) -> None:
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC)
        self.end = 0
        self.keep = keep
        self._lock = threading.Lock()

    def put(self, data: bytes | bytearray | memoryview) -> int:
        """Keep ``data``; where it is."""
        with self._lock:
            pos = self.end
            view = memoryview(data)
            done = 0
            while done < len(view):
                done += os.pwrite(self.fd, view[done:], pos + done)
            self.end += len(view)
            return pos

    def put_from(self, fd: int, offset: int, length: int) -> tuple[int, int]:
        """Keep ``length`` bytes of file ``fd`` at ``offset`` (fewer at its end);
        (where they are, how many)."""
        with self._lock:
            pos = self.end
            os.lseek(self.fd, pos, os.SEEK_SET)
            done = 0
            while done < length:
                n = os.sendfile(self.fd, fd, offset + done, length - done)
                if n <= 0:
                    break
                done += n
            self.end += done
            return pos, done

    def get(self, pos: int, length: int) -> bytes:
        return os.pread(self.fd, length, pos)

    def reset(self) -> None:
        """Forget everything kept (a checkpoint)."""
        with self._lock:
            self.end = 0
            if os.fstat(self.fd).st_size > self.keep:
                os.ftruncate(self.fd, 0)

    def close(self) -> None:
        with self._lock:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1
