"""A FAT12/16/32 file system with long file names (VFAT), as a FUSE driver.

``Vfat`` is an ``mfusepy.Operations`` over an image file (a path or an open
binary file object). pyfatfs parses the volume: the boot sector (BPB), the
FAT, the FSInfo sector and the 32-byte directory entry records
(``FATDirectoryEntry``, ``EightDotThree``, ``DosDateTime``); this module keeps
the directory tree, allocates clusters and does every write itself, in an
order of its own (see the end of this docstring for why).

Consistency rule
----------------
The driver runs in a process that may be killed at any instant, and the image
must then be consistent as of the end of the last completed operation. So
there is no write-back caching across operations: when a state-changing
operation (write, create, mkdir, rename, unlink, rmdir, truncate, utimens,
release, ...) returns, everything it changed -- data clusters, both FATs, the
directory entries including the file size, the FAT32 FSInfo free count -- has
been written to the file object and the file object has been ``flush()``-ed.
Between two operations the volume is marked clean, so ``fsck.fat -n`` on a
copy of the image taken then reports no problems.

Within an operation, the first write marks the volume dirty (bit 0 of the
boot sector's BS_Reserved1 byte, as Linux does) and the end of the
operation marks it clean again; an image of an operation cut short therefore
says it needs checking. The writes of one operation are ordered so that such
an image only needs repairs that ``fsck.fat -a`` can make without losing
completed data: data goes to clusters before the FAT links them in, the FAT
before the directory entry that points at it, a directory entry is removed
before its clusters are freed, and rename writes the new name before it
removes the old one (at worst lost clusters, a chain longer than the file or
two names for one file). A volume that was already dirty when mounted stays
dirty. Read-only operations never write.

Nothing here is thread-safe: mount with ``nothreads=True``.

Why not pyfatfs's own writing paths (``PyFatFS``/``FatIO``/``PyFat``)
----------------------------------------------------------------------
* ``PyFat.set_fp`` marks the volume dirty on open (``_mark_dirty``: FAT[1] in
  every FAT plus BS_Reserved1) and only ``close`` marks it clean, so any copy
  taken while mounted fails ``fsck.fat -n``. pyfatfs is therefore handed a
  read-only view of the file object and writes nothing.
* ``flush_fat`` rewrites every FAT in full, and ``update_directory_entry``
  rewrites a whole directory (compacted) for every change; when the directory
  shrinks below a cluster boundary the old tail cluster keeps stale entries
  that come back to life.
* ``FatIO.truncate`` frees the tail of a chain without terminating the kept
  part, keeps a cluster for an empty file, and ``FatIO.seek`` cannot go past
  the end of a file (no zero-filled gaps).
* ``allocate_bytes`` may hand out clusters past the end of the data area
  (the FAT is sector-sized) and reports ENOSPC when the last free cluster is
  exactly enough.
* ``make_lfn_entry`` limits names to 255 *bytes* of UTF-16 (127 characters);
  ``make_8dot3_name`` can produce an empty short name; lookups are
  case-sensitive, while VFAT names are not.
* ``EightDotThree.__str__`` rewrites a leading 0x05 to 0xE5 in place, which
  would turn the entry into a deleted one when written back.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import logging
import os
import stat
import struct
import subprocess
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, BinaryIO, Concatenate, ParamSpec, TypeVar

# mfusepy looks for libfuse 2 unless told otherwise.
os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")

import mfusepy
from pyfatfs import FAT_OEM_ENCODING
from pyfatfs.DosDateTime import DosDateTime
from pyfatfs.EightDotThree import EightDotThree
from pyfatfs.FATDirectoryEntry import FATDirectoryEntry, FATLongDirectoryEntry
from pyfatfs.FSInfo import FSInfo
from pyfatfs.PyFat import PyFat

log = logging.getLogger(__name__)

__all__ = ["Vfat", "mkfs"]

_SLOT = FATDirectoryEntry.FAT_DIRECTORY_HEADER_SIZE  # 32 bytes per directory slot
_DELETED = FATDirectoryEntry.FREE_DIR_ENTRY_MARK  # 0xE5
_ATTR_DIR = FATDirectoryEntry.ATTR_DIRECTORY
_ATTR_VOLUME = FATDirectoryEntry.ATTR_VOLUME_ID
_ATTR_ARCHIVE = FATDirectoryEntry.ATTR_ARCHIVE
_ATTR_LFN = FATDirectoryEntry.ATTR_LONG_NAME
_ATTR_LFN_MASK = FATDirectoryEntry.ATTR_LONG_NAME_MASK
_LFN_LAYOUT = FATLongDirectoryEntry.FAT_LONG_DIRECTORY_LAYOUT
_LFN_LAST = FATLongDirectoryEntry.LAST_LONG_ENTRY
_LFN_CHARS = 13  # UTF-16 code units per long-name slot
_NAME_MAX = 255
_FILE_MAX = FATDirectoryEntry.MAX_FILE_SIZE
_DIR_MAX_SLOTS = 65536
_NT_LOWER_BASE = 0x08
_NT_LOWER_EXT = 0x10
_DIRTY = 0x01
_UTIME_NOW = (1 << 30) - 1
_UTIME_OMIT = (1 << 30) - 2
_ZERO_CHUNK = 1 << 20

_BAD_CHARS = frozenset('"*/:<>?\\|')
_SFN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'()-@^_`{}~")
_DOT = b".          "
_DOTDOT = b"..         "

P = ParamSpec("P")
R = TypeVar("R")


def _fail(code: int) -> mfusepy.FuseOSError:
    return mfusepy.FuseOSError(code)


# --- names ------------------------------------------------------------------


def _key(name: str) -> str:
    """Lookup key: VFAT names compare case-insensitively, trailing dots ignored."""
    name = name.rstrip(".")
    up = name.upper()
    if len(up) == len(name):
        return up
    return "".join(c if len(c.upper()) != 1 else c.upper() for c in name)


def _check_name(name: str) -> str:
    """The name to store for a new entry, or the errno Linux vfat gives."""
    name = name.rstrip(".")
    if not name:
        raise _fail(errno.ENOENT)
    if name.endswith(" "):
        raise _fail(errno.EINVAL)
    if len(name.encode("utf-8", "surrogatepass")) > _NAME_MAX:
        raise _fail(errno.ENAMETOOLONG)
    for c in name:
        o = ord(c)
        if o < 0x20 or c in _BAD_CHARS or 0xD800 <= o <= 0xDFFF:
            raise _fail(errno.EINVAL)
    if len(name.encode("utf-16-le")) // 2 > _NAME_MAX:
        raise _fail(errno.ENAMETOOLONG)
    return name


def _pack_sfn(base: str, ext: str) -> bytes:
    return (base.ljust(8) + ext.ljust(3)).encode("ascii")


def _plain_sfn(name: str) -> bytes | None:
    """The short name if ``name`` is a valid upper-case 8.3 name as it is."""
    parts = name.split(".")
    if len(parts) > 2:
        return None
    base = parts[0]
    ext = parts[1] if len(parts) == 2 else ""
    if not 1 <= len(base) <= 8 or len(ext) > 3 or (len(parts) == 2 and not ext):
        return None
    if not all(c in _SFN_CHARS for c in base + ext):
        return None
    return _pack_sfn(base, ext)


def _sfn_basis(name: str) -> tuple[str, str, bool]:
    """Base and extension of a short name for ``name`` and whether they lose information."""
    up = _key(name)
    lossy = False
    s = up.lstrip(".")
    if s != up:
        lossy = True
    if " " in s:
        s = s.replace(" ", "")
        lossy = True
    cut = s.rfind(".")
    base, ext = (s[:cut], s[cut + 1 :]) if cut >= 0 else (s, "")

    def convert(part: str) -> str:
        nonlocal lossy
        out = []
        for c in part:
            if c in _SFN_CHARS:
                out.append(c)
            elif c == ".":
                lossy = True
            else:
                out.append("_")
                lossy = True
        return "".join(out)

    base, ext = convert(base), convert(ext)
    if len(base) > 8:
        base, lossy = base[:8], True
    if len(ext) > 3:
        ext, lossy = ext[:3], True
    if not base:
        base, lossy = "_", True
    return base, ext, lossy


def _sfn_display(raw: bytes, ntres: int) -> str:
    base, ext = bytearray(raw[:8]), raw[8:11]
    if base[0] == 0x05:
        base[0] = _DELETED
    b = bytes(base).decode(FAT_OEM_ENCODING).rstrip(" ")
    e = ext.decode(FAT_OEM_ENCODING).rstrip(" ")
    if ntres & _NT_LOWER_BASE:
        b = b.lower()
    if ntres & _NT_LOWER_EXT:
        e = e.lower()
    return f"{b}.{e}" if e else b


def _checksum(sfn: bytes) -> int:
    e = EightDotThree(encoding=FAT_OEM_ENCODING)
    e.set_byte_name(sfn)
    return int(e.checksum())


def _lfn_slots(name: str, sfn: bytes) -> bytes:
    """The long-name slots for ``name``, in on-disk order (last part first)."""
    u = name.encode("utf-16-le")
    count = -(-len(u) // (2 * _LFN_CHARS))
    if len(u) % (2 * _LFN_CHARS):
        u += b"\0\0"
        u += b"\xff" * (count * 2 * _LFN_CHARS - len(u))
    csum = _checksum(sfn)
    out = bytearray()
    for ordinal in range(count, 0, -1):
        part = u[(ordinal - 1) * 26 : ordinal * 26]
        first = ordinal | (_LFN_LAST if ordinal == count else 0)
        out += struct.pack(_LFN_LAYOUT, first, part[:10], _ATTR_LFN, 0, csum, part[10:22], 0,
                           part[22:26])
    return bytes(out)


# --- times ------------------------------------------------------------------

_DOS_MIN = datetime(1980, 1, 1).timestamp()
_DOS_MAX = datetime(2107, 12, 31, 23, 59, 58).timestamp()


def _to_dos(ns: int) -> tuple[int, int, int]:
    """DOS (date, time, 10 ms units) of a time in ns since the epoch (local time)."""
    secs = min(max(ns / 1e9, _DOS_MIN), _DOS_MAX)
    dt = DosDateTime.fromtimestamp(secs)
    tenth = (dt.second % 2) * 100 + int(secs * 100) % 100
    return int(dt.serialize_date()), int(dt.serialize_time()), tenth


def _from_dos(date: int, tm: int = 0) -> int:
    d = DosDateTime.deserialize_date(date)
    t = DosDateTime.deserialize_time(tm)
    return int(datetime.combine(d, t).timestamp()) * 10**9


# --- the in-memory tree -----------------------------------------------------


class _Node:
    """A file: its 8.3 entry (a pyfatfs ``FATDirectoryEntry``) and where it lives."""

    def __init__(self, parent: _Dir | None, name: str, de: Any, slot: int, nslots: int) -> None:
        self.parent = parent
        self.name = name
        self.de = de  # None only for the root directory
        self.slot = slot  # index of the 8.3 slot in the parent directory
        self.nslots = nslots  # long-name slots + 1
        self.chain: list[int] = []  # cluster chain, followed lazily
        self.chain_done = False
        self.opens = 0
        self.deleted = False

    @property
    def first_slot(self) -> int:
        return self.slot - self.nslots + 1

    @property
    def sfn(self) -> bytes:
        return bytes(self.de.name.name)


class _Dir(_Node):
    """A directory: a byte-for-byte copy of its slots and indexes over them."""

    def __init__(self, parent: _Dir | None, name: str, de: Any, slot: int, nslots: int) -> None:
        super().__init__(parent, name, de, slot, nslots)
        self.loaded = False
        self.fixed = False  # the FAT12/16 root directory: a fixed region, not clusters
        self.data = bytearray()
        self.used = bytearray()  # one byte per slot: 1 in use, 0 free
        self.end = 0  # first slot of the free tail (the 0x00 end marker)
        self.by_key: dict[str, _Node] = {}
        self.by_sfn: dict[bytes, _Node | None] = {}  # None: the volume label
        self.subdirs = 0


@dataclass
class _Handle:
    node: _Node
    writable: bool


class _ReadOnlyView:
    """What pyfatfs gets: reads through to the image, and no way to write or close it."""

    def __init__(self, fp: BinaryIO) -> None:
        self._fp = fp

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._fp.seek(offset, whence)

    def tell(self) -> int:
        return self._fp.tell()

    def read(self, size: int = -1) -> bytes:
        return self._fp.read(size)

    def close(self) -> None:
        pass


class _ParseOnly(PyFat):  # type: ignore[misc]
    """PyFat that parses the boot sector and FAT only; the tree is read here, lazily."""

    def parse_root_dir(self) -> None:
        pass


def _mutating(fn: Callable[Concatenate[Vfat, P], R]) -> Callable[Concatenate[Vfat, P], R]:
    """Bracket a state-changing operation: dirty while it writes, clean and flushed after."""

    @functools.wraps(fn)
    def op(self: Vfat, /, *args: P.args, **kwargs: P.kwargs) -> R:
        if self._broken:
            raise _fail(errno.EROFS)
        try:
            result = fn(self, *args, **kwargs)
        except mfusepy.FuseOSError:
            # Raised only where the image is consistent (before or between steps).
            self._end_op()
            raise
        except Exception:
            # A bug, not a condition of the volume: memory and image may disagree now,
            # so stop writing and leave the volume dirty -- and let the bug be seen as
            # what it is (mfusepy answers EINVAL; under nooks the driver is restarted
            # from its image, and the half-done operation never reaches it).
            self._broken = True
            log.exception("vfat: %s failed; the volume is now read-only", fn.__name__)
            with contextlib.suppress(Exception):
                self._fp.flush()
            raise
        self._end_op()
        return result

    return op


class Vfat(mfusepy.Operations):  # type: ignore[misc]
    """FAT12/16/32 with long file names over an image (a path or a binary file object)."""

    use_ns = True

    def __init__(self, image: str | BinaryIO) -> None:
        if isinstance(image, str):
            self._fp: BinaryIO = open(image, "r+b")  # noqa: SIM115 - closed in close()
            self._owned = True
        else:
            self._fp = image
            self._owned = False
        try:
            self._mount()
        except BaseException:
            if self._owned:
                self._fp.close()
            raise

    # --- mounting -------------------------------------------------------------

    def _mount(self) -> None:
        pf = _ParseOnly(encoding=FAT_OEM_ENCODING)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pf.set_fp(_ReadOnlyView(self._fp))
        self._pf = pf
        bpb = pf.bpb_header
        bps = int(bpb["BPB_BytsPerSec"])
        self._fat_type = int(pf.fat_type)
        self._bpc = int(pf.bytes_per_cluster)
        fat_sectors = int(bpb["BPB_FATSz16"]) or int(bpb["BPB_FATSz32"])
        self._fat_bytes = fat_sectors * bps
        fat_start = int(bpb["BPB_RsvdSecCnt"]) * bps
        # pyfatfs reads the first FAT; every FAT is written the same (mirroring)
        self._fat_offsets = [fat_start + i * self._fat_bytes
                             for i in range(int(bpb["BPB_NumFATs"]))]
        self._fat_raw = bytearray(self._read(self._fat_offsets[0], self._fat_bytes))
        self._fat: list[int] = pf.fat
        self._data_off = int(pf.first_data_sector) * bps
        self._root_off = int(pf.root_dir_sector) * bps
        self._root_bytes = int(pf.root_dir_sectors) * bps
        total = int(bpb["BPB_TotSec16"]) or int(bpb["BPB_TotSec32"])
        self._nclusters = (total - int(pf.first_data_sector)) // int(bpb["BPB_SecPerClus"])
        values = PyFat.FAT_CLUSTER_VALUES[self._fat_type]
        self._max_cluster = min(self._nclusters + 1, int(values["MAX_DATA_CLUSTER"]),
                                len(self._fat) - 1)
        self._eoc = int(values["END_OF_CLUSTER_MAX"])
        self._eoc_min = int(values["END_OF_CLUSTER_MIN"])
        self._free = self._fat[2 : self._max_cluster + 1].count(0)
        self._hint = 2

        boot = self._read(0, 512)
        self._state_off = 65 if self._fat_type == 32 else 37
        self._state = boot[self._state_off] & ~_DIRTY
        self._stay_dirty = bool(pf._is_dirty())  # dirty before us: only fsck may clear it

        self._fsinfo_off: int | None = None
        self._fsinfo_written: tuple[int, int] | None = None
        if self._fat_type == 32:
            sector = int(bpb["BPB_FSInfo"])
            if 0 < sector < int(bpb["BPB_RsvdSecCnt"]):
                info = FSInfo()
                info.parse_header(self._read(sector * bps, 512))
                if (info["FSI_LeasSig"] == FSInfo.LEAD_SIG_MAGIC
                        and info["FSI_StrucSig"] == FSInfo.STRUCT_SIG_MAGIC):
                    self._fsinfo_off = sector * bps + 488
                    self._fsinfo_written = (int(info["FSI_Free_Count"]),
                                            int(info["FSI_Nxt_Free"]))
                    if 2 <= self._fsinfo_written[1] <= self._max_cluster:
                        self._hint = self._fsinfo_written[1]

        self._root = _Dir(None, "", None, -1, 0)
        if self._fat_type == 32:
            self._root_cluster = int(bpb["BPB_RootClus"])
        else:
            self._root.fixed = True
            self._root_cluster = 0
        self._handles: dict[int, _Handle] = {}
        self._op_writes = False
        self._fat_pending: list[tuple[int, int]] = []
        self._broken = False
        self._closed = False

    def close(self) -> None:
        """Flush and, if the image was opened from a path, close it."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            self._sync()
        if self._owned:
            self._fp.close()

    def _sync(self) -> None:
        """Flush the file object and fsync it if it is a real file."""
        self._fp.flush()
        try:
            fd = self._fp.fileno()
        except (AttributeError, OSError, ValueError):  # BytesIO and the like
            return
        os.fsync(fd)

    # --- raw image I/O ----------------------------------------------------------

    def _read(self, addr: int, n: int) -> bytes:
        self._fp.seek(addr)
        data = self._fp.read(n)
        while len(data) < n:
            more = self._fp.read(n - len(data))
            if not more:
                raise _fail(errno.EIO)
            data += more
        return data

    def _write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        if not self._op_writes:
            self._op_writes = True
            self._raw_write(self._state_off, bytes([self._state | _DIRTY]))
        self._raw_write(addr, data)

    def _raw_write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        self._fp.seek(addr)
        view = memoryview(data)
        while view:
            n = self._fp.write(view)
            if n is None or n <= 0:
                raise OSError(errno.EIO, "short write to the image")
            view = view[n:]

    def _end_op(self) -> None:
        if self._op_writes:
            self._commit_fat()
            if self._fsinfo_off is not None:
                now = (self._free, self._hint)
                if now != self._fsinfo_written:
                    self._raw_write(self._fsinfo_off, struct.pack("<LL", *now))
                    self._fsinfo_written = now
            if not self._stay_dirty:
                self._raw_write(self._state_off, bytes([self._state]))
            self._op_writes = False
        self._fp.flush()

    def _caddr(self, cluster: int) -> int:
        return self._data_off + (cluster - 2) * self._bpc

    # --- the FAT ----------------------------------------------------------------

    def _set_fat(self, cluster: int, value: int) -> None:
        old = self._fat[cluster]
        self._fat[cluster] = value
        if old == 0 and value != 0:
            self._free -= 1
        elif old != 0 and value == 0:
            self._free += 1
        raw = self._fat_raw
        if self._fat_type == 12:
            off = cluster + cluster // 2
            if cluster & 1:
                raw[off] = (raw[off] & 0x0F) | ((value & 0x0F) << 4)
                raw[off + 1] = (value >> 4) & 0xFF
            else:
                raw[off] = value & 0xFF
                raw[off + 1] = (raw[off + 1] & 0xF0) | ((value >> 8) & 0x0F)
            self._fat_pending.append((off, off + 2))
        elif self._fat_type == 16:
            struct.pack_into("<H", raw, cluster * 2, value)
            self._fat_pending.append((cluster * 2, cluster * 2 + 2))
        else:
            (keep,) = struct.unpack_from("<L", raw, cluster * 4)
            struct.pack_into("<L", raw, cluster * 4, (keep & 0xF0000000) | (value & 0x0FFFFFFF))
            self._fat_pending.append((cluster * 4, cluster * 4 + 4))

    def _commit_fat(self) -> None:
        """Write the changed FAT bytes to every FAT, first FAT first."""
        if not self._fat_pending:
            return
        runs: list[list[int]] = []
        for lo, hi in sorted(self._fat_pending):
            if runs and lo <= runs[-1][1] + 16:
                runs[-1][1] = max(runs[-1][1], hi)
            else:
                runs.append([lo, hi])
        self._fat_pending = []
        for base in self._fat_offsets:
            for lo, hi in runs:
                self._write(base + lo, self._fat_raw[lo:hi])

    def _next(self, cluster: int) -> int | None:
        value = self._fat[cluster]
        if value >= self._eoc_min:
            return None
        if 2 <= value <= self._max_cluster:
            return value
        log.error("vfat: cluster %d links to %#x", cluster, value)
        raise _fail(errno.EIO)

    def _alloc(self, n: int, near: int) -> list[int]:
        """Take ``n`` free clusters, linked and terminated in memory; not yet written."""
        if n > self._free:
            raise _fail(errno.ENOSPC)
        start = near if 2 <= near <= self._max_cluster else self._hint
        if not 2 <= start <= self._max_cluster:
            start = 2
        out: list[int] = []
        fat = self._fat
        for lo, hi in ((start, self._max_cluster + 1), (2, start)):
            pos = lo
            while len(out) < n:
                try:
                    c = fat.index(0, pos, hi)
                except ValueError:
                    break
                out.append(c)
                pos = c + 1
        if len(out) < n:
            raise _fail(errno.ENOSPC)
        for a, b in itertools.pairwise(out):
            self._set_fat(a, b)
        self._set_fat(out[-1], self._eoc)
        self._hint = out[-1] + 1 if out[-1] < self._max_cluster else 2
        return out

    def _free_chain(self, chain: list[int]) -> None:
        for c in chain:
            self._set_fat(c, 0)
        self._commit_fat()

    def _chain(self, node: _Node, upto: int | None = None) -> list[int]:
        """The node's cluster chain, followed at least to index ``upto`` (else to its end)."""
        chain = node.chain
        if not chain and not node.chain_done:
            first = self._first_cluster(node)
            if first == 0:
                node.chain_done = True
                return chain
            if not 2 <= first <= self._max_cluster:
                raise _fail(errno.EIO)
            chain.append(first)
        while not node.chain_done and (upto is None or len(chain) <= upto):
            nxt = self._next(chain[-1])
            if nxt is None:
                node.chain_done = True
            else:
                chain.append(nxt)
                if len(chain) > self._nclusters:
                    raise _fail(errno.EIO)  # a loop
        return chain

    def _first_cluster(self, node: _Node) -> int:
        if node is self._root:
            return self._root_cluster
        return int(node.de.get_cluster())

    # --- file data ----------------------------------------------------------------

    def _spans(self, chain: list[int], offset: int, length: int) -> list[tuple[int, int, int]]:
        """(image address, offset into the request, length) for a byte range of a chain."""
        bpc = self._bpc
        out = []
        idx, within = divmod(offset, bpc)
        done = 0
        while done < length:
            c = chain[idx]
            run = 1
            while (run * bpc - within < length - done and idx + run < len(chain)
                   and chain[idx + run] == c + run):
                run += 1
            n = min(length - done, run * bpc - within)
            out.append((self._caddr(c) + within, done, n))
            done += n
            idx += run
            within = 0
        return out

    def _write_data(self, chain: list[int], offset: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        for addr, at, n in self._spans(chain, offset, len(view)):
            self._write(addr, view[at : at + n])

    def _write_zeros(self, chain: list[int], start: int, end: int) -> None:
        while start < end:
            n = min(end - start, _ZERO_CHUNK)
            self._write_data(chain, start, bytes(n))
            start += n

    def _grow_and_write(self, node: _Node, offset: int, data: bytes) -> None:
        """Write ``data`` at ``offset``, zero-filling from the old end; size becomes at least
        ``offset + len(data)``."""
        old = int(node.de.filesize)
        new_size = max(old, offset + len(data))
        chain = self._chain(node)
        need = -(-new_size // self._bpc)
        had = len(chain)
        fresh: list[int] = []
        if need > had:
            fresh = self._alloc(need - had, chain[-1] + 1 if chain else self._hint)
            chain.extend(fresh)  # in memory only: nothing on the image points at them yet
        # 1. data, into clusters nothing points at yet or into the file's own
        if offset > old:
            self._write_zeros(chain, old, offset)
        if data:
            self._write_data(chain, offset, data)
        # 2. the new clusters' FAT entries, then the link to them
        if fresh:
            self._commit_fat()
            if had:
                self._set_fat(chain[had - 1], fresh[0])
                self._commit_fat()
            else:
                node.de.set_cluster(fresh[0])
        # 3. the directory entry: size, start cluster, time
        node.de.filesize = new_size
        self._stamp(node, archive=True)
        self._write_entry(node)

    def _shrink(self, node: _Node, length: int) -> None:
        chain = self._chain(node)
        keep = -(-length // self._bpc)
        node.de.filesize = length
        if keep == 0:
            node.de.set_cluster(0)
        self._stamp(node, archive=True)
        self._write_entry(node)  # first: the entry no longer covers the tail
        if keep < len(chain):
            if keep:
                self._set_fat(chain[keep - 1], self._eoc)
            self._free_chain(chain[keep:])
            node.chain = chain[:keep]
            node.chain_done = True

    # --- directories -------------------------------------------------------------

    def _load(self, d: _Dir) -> None:
        if d.loaded:
            return
        if d.fixed:
            data = bytearray(self._read(self._root_off, self._root_bytes))
        else:
            chain = self._chain(d)
            if not chain:
                raise _fail(errno.EIO)
            data = bytearray()
            for addr, _, n in self._spans(chain, 0, len(chain) * self._bpc):
                data += self._read(addr, n)
        d.data = data
        d.used = bytearray(len(data) // _SLOT)
        d.end = len(d.used)
        self._parse(d)
        d.loaded = True

    def _parse(self, d: _Dir) -> None:
        data = d.data
        parts: list[bytes] = []
        lfn_start = lfn_csum = expect = -1
        for k in range(len(d.used)):
            off = k * _SLOT
            first = data[off]
            if first == 0:
                d.end = k
                break
            if first == _DELETED:
                expect = -1
                continue
            d.used[k] = 1
            attr = data[off + 11]
            if attr & _ATTR_LFN_MASK == _ATTR_LFN:
                ordinal = first & 0x1F
                if first & _LFN_LAST:
                    expect, lfn_start, lfn_csum, parts = ordinal, k, data[off + 13], []
                if expect < 1 or ordinal != expect or data[off + 13] != lfn_csum:
                    expect = -1
                    continue
                parts.append(bytes(data[off + 1 : off + 11] + data[off + 14 : off + 26]
                                   + data[off + 28 : off + 32]))
                expect -= 1
                continue
            raw = bytes(data[off : off + 11])
            if attr & _ATTR_VOLUME and not attr & _ATTR_DIR:
                d.by_sfn.setdefault(raw, None)
                expect = -1
                continue
            if raw in (_DOT, _DOTDOT):
                expect = -1
                continue
            de = self._entry_from(bytes(data[off : off + _SLOT]))
            name = None
            if expect == 0 and lfn_csum == _checksum(raw):
                name = b"".join(reversed(parts)).decode("utf-16-le", "replace")
                cut = name.find("\0")
                if cut >= 0:
                    name = name[:cut]
            expect = -1
            nslots = k - lfn_start + 1
            if not name:
                name, nslots = _sfn_display(raw, int(de.ntres)), 1
            node: _Node
            if de.is_directory():
                node = _Dir(d, name, de, k, nslots)
            else:
                node = _Node(d, name, de, k, nslots)
            key = _key(name)
            if key in d.by_key or d.by_sfn.get(raw) is not None:
                log.warning("vfat: duplicate name %r ignored", name)
                continue
            self._index_add(d, node)

    @staticmethod
    def _entry_from(raw: bytes) -> Any:
        values = struct.unpack(FATDirectoryEntry.FAT_DIRECTORY_LAYOUT, raw)
        fields = dict(zip(FATDirectoryEntry.FAT_DIRECTORY_VARS, values, strict=True))
        sfn = EightDotThree(encoding=FAT_OEM_ENCODING)
        sfn.set_byte_name(fields["DIR_Name"])
        fields["DIR_Name"] = sfn
        return FATDirectoryEntry(encoding=FAT_OEM_ENCODING, **fields)

    def _new_entry(self, sfn: bytes, attr: int, cluster: int) -> Any:
        date, tm, tenth = _to_dos(time.time_ns())
        raw = struct.pack(FATDirectoryEntry.FAT_DIRECTORY_LAYOUT, sfn, attr, 0, tenth, tm, date,
                          date, (cluster >> 16) & 0xFFFF, tm, date, cluster & 0xFFFF, 0)
        return self._entry_from(raw)

    def _index_add(self, d: _Dir, node: _Node) -> None:
        d.by_key[_key(node.name)] = node
        d.by_sfn[node.sfn] = node
        if isinstance(node, _Dir):
            d.subdirs += 1

    def _index_remove(self, d: _Dir, node: _Node) -> None:
        if d.by_key.get(_key(node.name)) is node:
            del d.by_key[_key(node.name)]
        if d.by_sfn.get(node.sfn) is node:
            del d.by_sfn[node.sfn]
        if isinstance(node, _Dir):
            d.subdirs -= 1

    def _dir_write(self, d: _Dir, start: int, end: int) -> None:
        if d.fixed:
            self._write(self._root_off + start, d.data[start:end])
            return
        pos = start
        while pos < end:
            idx, within = divmod(pos, self._bpc)
            n = min(end - pos, self._bpc - within)
            self._write(self._caddr(d.chain[idx]) + within, d.data[pos : pos + n])
            pos += n

    def _write_entry(self, node: _Node) -> None:
        """Write the node's 8.3 entry if it differs from what the image holds."""
        d = node.parent
        assert d is not None
        off = node.slot * _SLOT
        raw = bytes(node.de)
        if d.data[off : off + _SLOT] != raw:
            d.data[off : off + _SLOT] = raw
            self._dir_write(d, off, off + _SLOT)

    def _extend_dir(self, d: _Dir, clusters: int) -> None:
        if d.fixed:
            raise _fail(errno.ENOSPC)
        if (len(d.data) + clusters * self._bpc) // _SLOT > _DIR_MAX_SLOTS:
            raise _fail(errno.ENOSPC)
        fresh = self._alloc(clusters, d.chain[-1] + 1)
        for addr, _, n in self._spans(fresh, 0, clusters * self._bpc):
            self._write(addr, bytes(n))
        self._commit_fat()
        self._set_fat(d.chain[-1], fresh[0])
        self._commit_fat()
        d.chain.extend(fresh)
        d.data += bytes(clusters * self._bpc)
        d.used += bytes(clusters * self._bpc // _SLOT)

    def _put_slots(self, d: _Dir, blob: bytes) -> int:
        """Write a run of slots into free ones (growing the directory); its first slot."""
        n = len(blob) // _SLOT
        start = d.used.find(bytes(n))
        if start < 0:
            tail = len(d.used) - len(d.used.rstrip(b"\0"))
            need = (n - tail) * _SLOT
            self._extend_dir(d, -(-need // self._bpc))
            start = d.used.find(bytes(n))
            assert start >= 0
        stop = start + n
        if stop > d.end:
            # the slot after the run becomes the end marker: make sure it reads as one
            if stop < len(d.used) and d.data[stop * _SLOT] != 0:
                d.data[stop * _SLOT] = 0
                self._dir_write(d, stop * _SLOT, stop * _SLOT + 1)
            d.end = stop
        d.data[start * _SLOT : stop * _SLOT] = blob
        d.used[start:stop] = b"\1" * n
        self._dir_write(d, start * _SLOT, stop * _SLOT)
        return start

    def _free_slots(self, d: _Dir, first: int, last: int) -> None:
        for k in range(first, last + 1):
            d.data[k * _SLOT] = _DELETED
            d.used[k] = 0
        self._dir_write(d, first * _SLOT, (last + 1) * _SLOT)

    def _short_name(self, d: _Dir, name: str) -> tuple[bytes, bool]:
        """A short name unique in ``d`` and whether ``name`` needs long-name slots."""
        plain = _plain_sfn(name)
        if plain is not None and plain not in d.by_sfn:
            return plain, False
        base, ext, lossy = _sfn_basis(name)
        if not lossy and plain is None:
            raw = _pack_sfn(base, ext)
            if raw not in d.by_sfn:
                return raw, True
        for i in range(1, 1_000_000):
            tail = f"~{i}"
            raw = _pack_sfn(base[: 8 - len(tail)] + tail, ext)
            if raw not in d.by_sfn:
                return raw, True
        raise _fail(errno.ENOSPC)

    def _add(self, d: _Dir, name: str, attr: int, cluster: int) -> _Node:
        """A new entry in ``d`` (disk and memory)."""
        sfn, long = self._short_name(d, name)
        de = self._new_entry(sfn, attr, cluster)
        blob = (_lfn_slots(name, sfn) if long else b"") + bytes(de)
        start = self._put_slots(d, blob)
        n = len(blob) // _SLOT
        node: _Node
        if attr & _ATTR_DIR:
            node = _Dir(d, name, de, start + n - 1, n)
        else:
            node = _Node(d, name, de, start + n - 1, n)
        self._index_add(d, node)
        return node

    def _dotdot(self, moved: _Dir, parent: _Dir) -> None:
        """Point a directory's '..' at its (new) parent."""
        self._load(moved)
        off = _SLOT
        if bytes(moved.data[off : off + 11]) != _DOTDOT:
            return
        cluster = 0 if parent is self._root else self._first_cluster(parent)
        struct.pack_into("<H", moved.data, off + 20, (cluster >> 16) & 0xFFFF)
        struct.pack_into("<H", moved.data, off + 26, cluster & 0xFFFF)
        self._dir_write(moved, off, off + _SLOT)

    def _stamp(self, node: _Node, archive: bool = False) -> None:
        date, tm, _ = _to_dos(time.time_ns())
        node.de.wrtdate = date
        node.de.wrttime = tm
        if archive:
            node.de.attr |= _ATTR_ARCHIVE

    def _touch_dir(self, d: _Dir) -> None:
        if d is self._root or d.deleted:
            return
        self._stamp(d)
        self._write_entry(d)

    # --- paths and handles ----------------------------------------------------------

    def _lookup(self, d: _Dir, name: str) -> _Node | None:
        self._load(d)
        key = _key(name)
        node = d.by_key.get(key)
        if node is None:
            sfn = _plain_sfn(key)
            if sfn is not None:
                node = d.by_sfn.get(sfn)
        return node

    def _resolve(self, path: str) -> _Node:
        node: _Node = self._root
        for part in path.split("/"):
            if not part:
                continue
            if not isinstance(node, _Dir):
                raise _fail(errno.ENOTDIR)
            child = self._lookup(node, part)
            if child is None:
                raise _fail(errno.ENOENT)
            node = child
        return node

    def _parent_of(self, path: str) -> tuple[_Dir, str]:
        head, _, name = path.rstrip("/").rpartition("/")
        if not name:
            raise _fail(errno.EBUSY)  # the root itself
        parent = self._resolve(head)
        if not isinstance(parent, _Dir):
            raise _fail(errno.ENOTDIR)
        self._load(parent)
        return parent, name

    def _node(self, path: str | None, fh: int | None) -> _Node:
        if fh is not None and fh in self._handles:
            return self._handles[fh].node
        if path is None:
            raise _fail(errno.EBADF)
        return self._resolve(path)

    def _open_handle(self, node: _Node, writable: bool) -> int:
        fh = 1
        while fh in self._handles:
            fh += 1
        self._handles[fh] = _Handle(node, writable)
        node.opens += 1
        return fh

    def _handle(self, fh: int) -> _Handle:
        h = self._handles.get(fh)
        if h is None:
            raise _fail(errno.EBADF)
        return h

    # --- FUSE operations: reading -------------------------------------------------------

    def getattr(self, path: str | None, fh: int | None = None) -> dict[str, Any]:
        node = self._node(path, fh)
        if isinstance(node, _Dir):
            self._load(node)
            size = len(node.data)
            st: dict[str, Any] = {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2 + node.subdirs}
        else:
            size = int(node.de.filesize)
            st = {"st_mode": stat.S_IFREG | 0o644, "st_nlink": 1}
        if node.de is None:
            mtime = atime = 0
        else:
            mtime = _from_dos(int(node.de.wrtdate), int(node.de.wrttime))
            atime = _from_dos(int(node.de.lstaccessdate))
        clusters = -(-size // self._bpc)
        st.update(st_size=size, st_blocks=clusters * self._bpc // 512, st_uid=0, st_gid=0,
                  st_mtime=mtime, st_ctime=mtime, st_atime=atime)
        return st

    def readdir(self, path: str, fh: int) -> list[str]:
        node = self._resolve(path)
        if not isinstance(node, _Dir):
            raise _fail(errno.ENOTDIR)
        self._load(node)
        children = sorted(node.by_key.values(), key=lambda n: n.slot)
        return [".", "..", *(n.name for n in children)]

    def access(self, path: str, amode: int) -> int:
        self._resolve(path)
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": self._bpc, "f_frsize": self._bpc,
                "f_blocks": self._max_cluster - 1, "f_bfree": self._free,
                "f_bavail": self._free, "f_files": 0, "f_ffree": 0, "f_favail": 0,
                "f_namemax": _NAME_MAX}

    def open(self, path: str, flags: int) -> int:
        node = self._resolve(path)
        writable = flags & os.O_ACCMODE != os.O_RDONLY
        if isinstance(node, _Dir) and writable:
            raise _fail(errno.EISDIR)
        if writable and flags & os.O_TRUNC:
            self.truncate(path, 0)
        return self._open_handle(node, writable)

    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        node = self._handle(fh).node
        if isinstance(node, _Dir):
            raise _fail(errno.EISDIR)
        if node.deleted:
            raise _fail(errno.ESTALE)
        filesize = int(node.de.filesize)
        if offset >= filesize or size <= 0:
            return b""
        n = min(size, filesize - offset)
        last = (offset + n - 1) // self._bpc
        chain = self._chain(node, last)
        if len(chain) <= last:
            log.error("vfat: %s is shorter than its size", node.name)
            raise _fail(errno.EIO)
        return b"".join(self._read(addr, ln) for addr, _, ln in self._spans(chain, offset, n))

    # --- FUSE operations: writing ---------------------------------------------------------

    @_mutating
    def create(self, path: str, mode: int, fi: int | None = None) -> int:
        d, name = self._parent_of(path)
        if self._lookup(d, name) is not None:
            raise _fail(errno.EEXIST)
        node = self._add(d, _check_name(name), _ATTR_ARCHIVE, 0)
        self._touch_dir(d)
        writable = fi is None or fi & os.O_ACCMODE != os.O_RDONLY
        return self._open_handle(node, writable)

    @_mutating
    def mkdir(self, path: str, mode: int) -> int:
        d, name = self._parent_of(path)
        if self._lookup(d, name) is not None:
            raise _fail(errno.EEXIST)
        name = _check_name(name)
        (cluster,) = self._alloc(1, self._hint)
        block = bytearray(self._bpc)
        dot = self._new_entry(_DOT, _ATTR_DIR, cluster)
        up = self._new_entry(_DOTDOT, _ATTR_DIR, 0 if d is self._root else self._first_cluster(d))
        block[0:_SLOT] = bytes(dot)
        block[_SLOT : 2 * _SLOT] = bytes(up)
        self._write(self._caddr(cluster), block)
        self._commit_fat()
        try:
            node = self._add(d, name, _ATTR_DIR, cluster)
        except mfusepy.FuseOSError:
            self._free_chain([cluster])
            raise
        assert isinstance(node, _Dir)
        node.chain, node.chain_done = [cluster], True
        node.data, node.used, node.end = block, bytearray(len(block) // _SLOT), 2
        node.used[0:2] = b"\1\1"
        node.loaded = True
        self._touch_dir(d)
        return 0

    @_mutating
    def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
        h = self._handle(fh)
        node = h.node
        if not h.writable:
            raise _fail(errno.EBADF)
        if isinstance(node, _Dir):
            raise _fail(errno.EISDIR)
        if node.deleted:
            raise _fail(errno.ESTALE)
        if offset < 0:
            raise _fail(errno.EINVAL)
        if not data:
            return 0
        if offset + len(data) > _FILE_MAX:
            raise _fail(errno.EFBIG)
        self._grow_and_write(node, offset, data)
        return len(data)

    @_mutating
    def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
        node = self._node(path, fh)
        if isinstance(node, _Dir):
            raise _fail(errno.EISDIR)
        if node.deleted:
            raise _fail(errno.ESTALE)
        if length < 0:
            raise _fail(errno.EINVAL)
        if length > _FILE_MAX:
            raise _fail(errno.EFBIG)
        if length < int(node.de.filesize):
            self._shrink(node, length)
        else:
            self._grow_and_write(node, length, b"")
        return 0

    @_mutating
    def unlink(self, path: str) -> int:
        node = self._resolve(path)
        if isinstance(node, _Dir):
            raise _fail(errno.EISDIR)
        d = node.parent
        assert d is not None
        chain = list(self._chain(node))
        self._free_slots(d, node.first_slot, node.slot)  # the name goes first,
        self._free_chain(chain)  # then the clusters
        self._index_remove(d, node)
        node.deleted = True
        node.chain = []
        self._touch_dir(d)
        return 0

    @_mutating
    def rmdir(self, path: str) -> int:
        node = self._resolve(path)
        if node is self._root:
            raise _fail(errno.EBUSY)
        if not isinstance(node, _Dir):
            raise _fail(errno.ENOTDIR)
        self._load(node)
        if node.by_key:
            raise _fail(errno.ENOTEMPTY)
        d = node.parent
        assert d is not None
        self._free_slots(d, node.first_slot, node.slot)
        self._free_chain(list(node.chain))
        self._index_remove(d, node)
        node.deleted = True
        self._touch_dir(d)
        return 0

    @_mutating
    def rename(self, old: str, new: str) -> int:
        src = self._resolve(old)
        if src is self._root:
            raise _fail(errno.EBUSY)
        dest, name = self._parent_of(new)
        if isinstance(src, _Dir):
            self._load(src)  # its '..' may change: read it before anything is written
            p: _Dir | None = dest
            while p is not None:
                if p is src:
                    raise _fail(errno.EINVAL)
                p = p.parent
        source_dir = src.parent
        assert source_dir is not None
        target = self._lookup(dest, name)
        if target is src:
            if src.name == name.rstrip("."):
                return 0
            target = None  # a change of case only
        if target is None:
            self._move(src, dest, _check_name(name))
        else:
            if isinstance(src, _Dir) and not isinstance(target, _Dir):
                raise _fail(errno.ENOTDIR)
            if not isinstance(src, _Dir) and isinstance(target, _Dir):
                raise _fail(errno.EISDIR)
            if isinstance(target, _Dir):
                self._load(target)
                if target.by_key:
                    raise _fail(errno.ENOTEMPTY)
            self._replace(src, target)
        self._touch_dir(source_dir)
        if dest is not source_dir:
            self._touch_dir(dest)
        return 0

    def _move(self, src: _Node, dest: _Dir, name: str) -> None:
        """Rename to a free name: write the new entry, then remove the old one."""
        old_dir = src.parent
        assert old_dir is not None
        sfn, long = self._short_name(dest, name)
        raw = bytearray(bytes(src.de))
        raw[0:11] = sfn
        raw[12] = 0  # no case flags: the long name carries the case
        de = self._entry_from(bytes(raw))
        blob = (_lfn_slots(name, sfn) if long else b"") + bytes(de)
        start = self._put_slots(dest, blob)
        if isinstance(src, _Dir) and dest is not old_dir:
            self._dotdot(src, dest)
        self._free_slots(old_dir, src.first_slot, src.slot)
        self._index_remove(old_dir, src)
        n = len(blob) // _SLOT
        src.parent, src.name, src.de, src.slot, src.nslots = dest, name, de, start + n - 1, n
        self._index_add(dest, src)

    def _replace(self, src: _Node, target: _Node) -> None:
        """Rename over an existing entry, as Linux does: the target's slot takes the source's
        entry (one 32-byte write), then the source's name goes, then the target's clusters."""
        old_dir, dest = src.parent, target.parent
        assert old_dir is not None and dest is not None
        doomed = list(self._chain(target))
        raw = bytearray(bytes(src.de))
        raw[0:11] = target.sfn
        raw[12] = int(target.de.ntres)
        de = self._entry_from(bytes(raw))
        off = target.slot * _SLOT
        dest.data[off : off + _SLOT] = raw
        self._dir_write(dest, off, off + _SLOT)
        if isinstance(src, _Dir) and dest is not old_dir:
            self._dotdot(src, dest)
        self._free_slots(old_dir, src.first_slot, src.slot)
        self._free_chain(doomed)
        self._index_remove(old_dir, src)
        self._index_remove(dest, target)
        target.deleted = True
        target.chain = []
        src.parent, src.name, src.de = dest, target.name, de
        src.slot, src.nslots = target.slot, target.nslots
        self._index_add(dest, src)

    @_mutating
    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        node = self._resolve(path)
        if node is self._root:
            return 0
        now = time.time_ns()
        atime, mtime = times if times is not None else (now, now)
        if mtime != _UTIME_OMIT:
            date, tm, _ = _to_dos(now if mtime == _UTIME_NOW else mtime)
            node.de.wrtdate, node.de.wrttime = date, tm
        if atime != _UTIME_OMIT:
            node.de.lstaccessdate = _to_dos(now if atime == _UTIME_NOW else atime)[0]
        self._write_entry(node)
        return 0

    def chmod(self, path: str | None, mode: int) -> int:
        if path is not None:
            self._resolve(path)
        return 0

    def chown(self, path: str | None, uid: int, gid: int) -> int:
        if path is not None:
            self._resolve(path)
        return 0

    def release(self, path: str | None, fh: int) -> int:
        # Nothing is cached per handle, so there is nothing to write; flush anyway.
        h = self._handles.pop(fh, None)
        if h is not None:
            h.node.opens -= 1
            if h.node.opens == 0 and not isinstance(h.node, _Dir):
                h.node.chain, h.node.chain_done = [], False  # free the memory
        self._fp.flush()
        return 0

    def flush(self, path: str | None, fh: int) -> int:
        self._fp.flush()
        return 0

    def fsync(self, path: str | None, datasync: int, fh: int) -> int:
        try:
            self._sync()
        except OSError as e:
            raise _fail(errno.EIO) from e
        return 0

    def destroy(self, path: str) -> None:
        self.close()


def mkfs(path: str, size: int, fat: int | None = None, label: str = "NOOKS") -> None:
    """Create a FAT image of ``size`` bytes at ``path`` with mkfs.fat (FAT type chosen by
    mkfs.fat unless ``fat`` is 12, 16 or 32)."""
    if fat not in (None, 12, 16, 32):
        raise ValueError(f"FAT type must be 12, 16 or 32, not {fat}")
    with open(path, "wb") as f:
        f.truncate(size)
    cmd = ["mkfs.fat"]
    if fat is not None:
        cmd += ["-F", str(fat)]
    cmd += ["-n", label, path]
    subprocess.run(cmd, check=True, capture_output=True)
