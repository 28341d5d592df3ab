# mypy: disable-error-code="empty-body"
"""The block device: a disk image the host owns and a driver reaches by kernel calls.

The host keeps the image consistent when a driver dies mid-update: every write
a driver makes while serving a request goes to an overlay, and the overlay is
committed to the image only when that request's reply arrives. A driver killed
half-way through a request leaves the image exactly as the previous request
left it, and the shadow re-issues the request to the new driver. This relies
on the driver serving one request at a time (the domain's default), so that
the writes before a reply all belong to the request it answers.

Inside the domain, ``BlockDeviceFile`` is a file object: reads from a
read-only mapping of the image plus the domain's own uncommitted writes,
writes through kernel calls.
"""

from __future__ import annotations

import io
import mmap
import os
import threading
from typing import Annotated, Any

import msgspec

from nooks.errors import LimitExceeded
from nooks.fs.spill import Spill
from nooks.wrappers import Interface, posted

Offset = Annotated[int, msgspec.Meta(ge=0, lt=1 << 48)]
Size = Annotated[int, msgspec.Meta(ge=0, le=4 << 20)]
Chunk = Annotated[bytes, msgspec.Meta(max_length=4 << 20)]


class BlockDeviceInterface(Interface):
    def bd_size(self) -> int: ...
    def bd_path(self) -> str: ...
    def bd_read(self, offset: Offset, size: Size) -> Chunk: ...
    @posted
    def bd_write(self, offset: Offset, data: Chunk) -> None: ...
    def bd_sync(self) -> None: ...
    # the request is answered: its writes become the image (a domain that answers the
    # kernel itself says so before it writes the reply: nooks.fs.serve)
    def bd_commit(self) -> None: ...


class UndoLog:
    """What the image held before each write committed since the last checkpoint.

    Kept across driver incarnations (one per mount), so that the host can put the
    image back as it was at a checkpoint (``nooks.fs.consistency``). Only the
    first write of each exact range is saved: undoing in reverse order, a later
    write of the same range is covered by the first one's saved bytes. The
    saved bytes live in a ``Spill``, not in the Python heap.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        self._lock = threading.Lock()
        self._spill = Spill("nooks-undo")
        self._saved: list[tuple[int, int, int]] = []  # (image offset, spill pos, length)
        self._seen: set[tuple[int, int]] = set()
        self.bytes = 0
        self.enabled = True
        self.broken: str | None = None  # why saving failed (then nothing can roll back)

    def save(self, offset: int, length: int) -> None:
        """Called before ``length`` bytes at ``offset`` are overwritten. A failure to
        save (no memory for the spill) never fails the write: the log stops, says
        why in ``broken``, and the host stops relying on it."""
        key = (offset, length)
        with self._lock:
            if key in self._seen or not self.enabled:
                return
            try:
                pos, n = self._spill.put_from(self._fd, offset, length)
            except OSError as e:
                self.broken = f"saving {length} bytes at {offset}: {e}"
                self.enabled = False
                return
            self._seen.add(key)
            self._saved.append((offset, pos, n))
            self.bytes += n

    def disable(self) -> None:
        """Save nothing more (nothing will roll back): forget what was saved."""
        self.clear()
        self.enabled = False

    def clear(self) -> None:
        """A checkpoint: the image as it is now is the one to come back to."""
        with self._lock:
            self._saved.clear()
            self._seen.clear()
            self._spill.reset()
            self.bytes = 0

    def rollback(self) -> int:
        """Put the image back as it was at the last checkpoint; bytes restored."""
        with self._lock:
            restored = 0
            for offset, pos, length in reversed(self._saved):
                os.pwrite(self._fd, self._spill.get(pos, length), offset)
                restored += length
            os.fsync(self._fd)
            self._saved.clear()
            self._seen.clear()
            self._spill.reset()
            self.bytes = 0
            return restored

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            self._spill.close()


# what one request may write before its reply commits it: the host holds it meanwhile
MAX_PENDING = 64 << 20


class ImageDevice:
    """The host side: an image file with a per-request overlay.

    The overlay is the list of writes since the last committed request, in
    order; a read merges it over the file, a commit writes it out in order
    (saving what it overwrites in ``undo`` first, when there is one).
    """

    def __init__(self, path: str, undo: UndoLog | None = None,
                 max_pending: int = MAX_PENDING) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        self.size = os.fstat(self.fd).st_size
        self._pending: list[tuple[int, bytes]] = []
        self._pending_bytes = 0
        self.max_pending = max_pending
        self._lock = threading.Lock()
        self._undo = undo

    def bd_size(self) -> int:
        return self.size

    def bd_path(self) -> str:
        """Where the domain may map the committed image read-only from."""
        return self.path

    def bd_read(self, offset: int, size: int) -> bytes:
        size = max(0, min(size, self.size - offset))
        with self._lock:
            data = os.pread(self.fd, size, offset)
            if not self._pending:
                return data
            out = bytearray(data)
            end = offset + size
            for woff, wdata in self._pending:
                lo, hi = max(offset, woff), min(end, woff + len(wdata))
                if lo < hi:
                    out[lo - offset:hi - offset] = wdata[lo - woff:hi - woff]
            return bytes(out)

    def bd_write(self, offset: int, data: bytes) -> None:
        if offset + len(data) > self.size:
            raise OSError(28, "write past the end of the device")  # ENOSPC
        with self._lock:
            if self._pending_bytes + len(data) > self.max_pending:
                raise LimitExceeded(f"wrote more than {self.max_pending >> 20} MiB to the block "
                                    "device in one request")
            self._pending.append((offset, data))
            self._pending_bytes += len(data)

    def bd_sync(self) -> None:
        self.call_done()
        os.fsync(self.fd)

    def bd_commit(self) -> None:
        self.call_done()

    def call_done(self) -> None:
        """A request completed: its writes become the image."""
        with self._lock:
            if not self._pending:
                return
            undo = self._undo
            for offset, data in self._pending:
                if undo is not None:
                    undo.save(offset, len(data))
                os.pwrite(self.fd, data, offset)
            self._pending.clear()
            self._pending_bytes = 0

    def close(self) -> None:
        """The domain is gone: what it had not committed is dropped."""
        with self._lock:
            self._pending.clear()
            self._pending_bytes = 0
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1


# own writes of earlier requests kept before asking the host whether they are committed
OWN_MAX = 64


class BlockDeviceFile(io.RawIOBase):
    """Inside the domain: the host's block device as a seekable binary file.

    Reads come from a read-only mapping of the image (the driver may read
    kernel memory, not write it) patched with this domain's own writes that the
    host may not have committed yet; writes are kernel calls, so the host can
    hold them back until the request that made them completes. Writes are *posted*
    kernel calls: the domain does not wait for them, and they reach the host, in
    order, before the request's reply.

    Which own writes are still uncommitted: the host commits a request's writes
    when it reads the request's reply, before it reads anything the domain sends
    after it. So once a kernel call made during request N has been answered,
    every write of requests before N is in the image and is dropped here.
    ``request_started`` (called by the adapter) marks request boundaries.
    Without a readable image (a domain running as another user), reads are
    kernel calls too.
    """

    def __init__(self, kernel: Any = None) -> None:
        super().__init__()
        if kernel is None:
            from nooks.domain.child import kernel as current

            kernel = current()
        self._k = kernel
        self._size = int(kernel.bd_size())
        self._pos = 0
        self._epoch = 0
        self._committed_before = 0  # writes of earlier epochs are in the image
        self._own: list[tuple[int, int, bytes]] = []  # (epoch, offset, data)
        self._uncommitted = False  # written to since the last ``request_done``
        self._map: mmap.mmap | None = None
        try:
            fd = os.open(kernel.bd_path(), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return
        try:
            if os.fstat(fd).st_size >= self._size > 0:
                self._map = mmap.mmap(fd, self._size, prot=mmap.PROT_READ)
        finally:
            os.close(fd)

    def request_started(self) -> None:
        self._epoch += 1

    def request_done(self) -> None:
        """The request is about to be answered: have its writes committed first (for
        a domain that answers the kernel itself; the host commits on each reply it
        reads otherwise)."""
        if self._uncommitted:
            self._k.bd_commit()
            self._uncommitted = False
            self._committed_before = self._epoch
            self._own.clear()

    def _answered(self) -> None:
        """A kernel call was answered: earlier requests' writes are committed."""
        if self._committed_before < self._epoch:
            self._committed_before = self._epoch
            self._own = [w for w in self._own if w[0] >= self._epoch]

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            pos += self._pos
        elif whence == io.SEEK_END:
            pos += self._size
        if pos < 0:
            raise OSError(22, "negative seek position")
        self._pos = pos
        return pos

    def readinto(self, buf: Any) -> int:
        view = memoryview(buf).cast("B")
        pos = self._pos
        want = min(len(view), max(0, self._size - pos))
        if self._map is None:
            data = self._k.bd_read(pos, want)
            self._answered()
            view[:len(data)] = data
            self._pos += len(data)
            return len(data)
        end = pos + want
        view[:want] = self._map[pos:end]
        for _, woff, wdata in self._own:
            lo, hi = max(pos, woff), min(end, woff + len(wdata))
            if lo < hi:
                view[lo - pos:hi - pos] = wdata[lo - woff:hi - woff]
        self._pos = end
        return want

    def write(self, data: Any) -> int:
        data = bytes(data)
        if self._pos + len(data) > self._size:
            raise OSError(28, "write past the end of the device")  # ENOSPC
        self._k.bd_write(self._pos, data)  # posted: not waited for
        self._uncommitted = True
        self._own.append((self._epoch, self._pos, data))
        self._pos += len(data)
        if len(self._own) > OWN_MAX and self._own[0][0] < self._epoch:
            # writes are posted, so nothing answered says the host has committed
            # earlier requests; ask something, to forget their writes
            self._k.bd_size()
            self._answered()
        return len(data)

    def flush(self) -> None:
        pass

    def fileno(self) -> int:
        raise OSError(95, "the block device has no file descriptor")
