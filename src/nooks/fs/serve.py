"""Serving ``/dev/fuse`` for a path-based driver as libfuse's high-level API and
mfusepy would: direct mode's FUSE layer, run in the driver's domain.

Each request names nodes; ``Nodes`` gives their paths and keeps the table in a
``StateLog`` the host owns. The driver is called through its adapter
(``nooks.fs.adapter.FsAdapter``: the context of the request first, then what
mfusepy would pass it, its answers read as mfusepy reads them), and
attributes go to the kernel with the node id as the inode number (libfuse's
default, without ``use_ino``).

What the host checks of every answer in the host-mediated mode is checked
here, before the reply is written: each result is converted to the type its
declaration in ``FsInterface`` gives, and one that does not convert (a
negative size, a mode wider than 32 bits, a write of more than was given) is
the driver's misbehaviour (``Misbehaved``, raised out of ``serve``: the domain
fails with it, and the request goes to a fresh driver). An error the driver
means (an ``OSError``) is answered with its errno.

The request being served is in ``InFlight`` (the host sees a hung driver from
its age, and which request a dead one had taken). A request the kernel sends
again after a server died (``RESEND`` in its id) that fails with an error its
declaration lists as "done" (``done_if``: an EEXIST from a mkdir) had its
effect before: it is answered as done.

An exception the driver raises that is not an error it means fails the domain
(the request goes to a fresh driver), and is kept in a log the next domains
read (``lenient_after``): when a fresh driver raises it too in the same call,
it is answered as mfusepy answers it (EINVAL), as in the host-mediated mode.

Served: lookup, forget, getattr, setattr (mode, owner, size, times), readlink,
symlink, mknod, mkdir, unlink, rmdir, rename, link, open, read, write, flush,
fsync, release, opendir, readdir, releasedir, fsyncdir, statfs, access, create,
and the xattr calls. Anything else is ENOSYS.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import msgspec

from nooks.domain import child
from nooks.errors import OutOfTasks
from nooks.fs import kernelproto as kp
from nooks.fs.attrs import Stat, packed
from nooks.fs.clock import wall_clock_at
from nooks.fs.handles import REOPEN_STRIP, Handles
from nooks.fs.inflight import InFlight
from nooks.fs.interface import FsInterface
from nooks.fs.journal import FH_AT, JOURNALED, OPENERS
from nooks.fs.nodes import Nodes
from nooks.fs.statelog import Full, StateLog
from nooks.wrappers import declare

FATTR_MODE, FATTR_UID, FATTR_GID, FATTR_SIZE = 1 << 0, 1 << 1, 1 << 2, 1 << 3
FATTR_ATIME, FATTR_MTIME, FATTR_FH = 1 << 4, 1 << 5, 1 << 6
FATTR_ATIME_NOW, FATTR_MTIME_NOW = 1 << 7, 1 << 8
GETATTR_FH = 1
UTIME_OMIT = (1 << 30) - 2
BUFFER = kp.MIN_READ_BUFFER + (1 << 17)
UNKNOWN_INO = 0xFFFFFFFF  # what libfuse's high level puts in a directory entry
RESEND = 1 << 63  # in a request's id: sent again after its first server died
SLOT = 0  # this server's slot in the in-flight record (one serving thread)
MAX_LENIENT = 16  # exception types remembered per driver method (as the shadow engine)
_TRUST = "\x01trust"  # (a record of the raised log that is a trusted error)
Ctx = tuple[int, int, int]

_DECLARED = declare(FsInterface)
_RESULTS = {m.name: m.result for m in _DECLARED.methods}
# the operation each opcode is, for what its declaration says when it comes again
_OPERATION = {kp.Op.MKNOD: "mknod", kp.Op.MKDIR: "mkdir", kp.Op.UNLINK: "unlink",
              kp.Op.RMDIR: "rmdir", kp.Op.SYMLINK: "symlink", kp.Op.RENAME: "rename",
              kp.Op.RENAME2: "rename", kp.Op.LINK: "link", kp.Op.RELEASE: "release",
              kp.Op.RELEASEDIR: "releasedir"}
_DONE_IF: dict[int, frozenset[int]] = {
    op: _DECLARED.method(name).meaning.done_if for op, name in _OPERATION.items()}
# a create sent again that finds its file: the first try made it (then it is opened)
_DONE_IF[kp.Op.CREATE] = frozenset({errno.EEXIST})
_ENTRY_AFTER = frozenset({kp.Op.MKNOD, kp.Op.MKDIR, kp.Op.SYMLINK, kp.Op.LINK})
# errors a driver gives when it is broken more often than when the world is (as the
# host-mediated mode's ``nooks.fs.spec.SUSPECT``): a fresh driver is asked again
SUSPECT = frozenset({errno.EIO, errno.EFAULT, errno.ENOSPC, errno.EMFILE, errno.ENFILE,
                     errno.ENOMEM})
OUT_OF = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM})  # its domain's own limits
_ON_DIRECTORIES = frozenset({kp.Op.OPENDIR, kp.Op.READDIR, kp.Op.RMDIR})
# requests that look a name up: ENOENT is an answer (the kernel looked up the others)
_LOOKING = frozenset({kp.Op.LOOKUP, kp.Op.GETATTR, kp.Op.ACCESS, kp.Op.STATFS})
# handles the kernel passes (it passes only those it was given), by where they are
_FH_ARGS: dict[int, struct.Struct] = {
    kp.Op.READ: kp.READ_IN, kp.Op.WRITE: kp.READ_IN, kp.Op.FLUSH: kp.FLUSH_IN,
    kp.Op.FSYNC: kp.FSYNC_IN, kp.Op.RELEASE: kp.RELEASE_IN, kp.Op.READDIR: kp.READ_IN,
    kp.Op.RELEASEDIR: kp.RELEASE_IN, kp.Op.FSYNCDIR: kp.FSYNC_IN}
HIDE_TRIES = 10  # hidden names tried for an open file unlinked (as libfuse)
TRUST_MS = 10_000  # how long an error a fresh driver repeated is believed without asking


# what libfuse's high level does without the driver's: succeeds
_UNNEEDED = frozenset({"open", "opendir", "release", "releasedir"})


def _lenient_record(name: str, exc: str) -> bytes:
    return f"{name}\0{exc}"[:200].encode()


def _trust_record(op: int, code: int, until: int) -> bytes:
    return f"{_TRUST}\0{op}\0{code}\0{until}".encode()


def _sized(data: bytes, size: int) -> bytes:
    """An xattr value or list as the kernel asked for it: its size only (``size``
    0), or itself if it fits (ERANGE if not)."""
    if size == 0:
        return kp.GETXATTR_OUT.pack(len(data), 0)
    if len(data) > size:
        raise OSError(errno.ERANGE, "larger than asked for")
    return data


class HandleLost(OSError):
    """The file a handle was open on is not there for a fresh driver to re-open."""


class Misbehaved(Exception):
    """The driver gave an answer its declaration does not allow."""


class Suspect(Exception):
    """The driver gave an answer a correct driver gives rarely or never here: a fresh
    one is asked (the domain fails with this, and the kernel sends the request
    again)."""


def checked(name: str, value: Any) -> Any:
    """``value`` as the declared result of ``name``; Misbehaved if it is not one."""
    try:
        return msgspec.convert(value, _RESULTS[name])
    except msgspec.ValidationError as e:
        raise Misbehaved(f"{name} returned a bad result: {e}") from None


class Server:
    def __init__(self, fd: int, ops: Any, nodes: Nodes, handles: Handles | None = None, *,
                 inflight: InFlight | None = None, attr_timeout: float = 0.0,
                 entry_timeout: float = 0.0, direct_io: bool = False,
                 hard_remove: bool = False) -> None:
        """``ops``: the driver's adapter (``FsAdapter``); ``handles``: the kernel is
        given virtual handles from it (a successor re-opens them), without, the
        driver's own; ``inflight``: where the request being served is recorded;
        ``direct_io``: files are opened past the kernel's page cache (libfuse's
        ``-o direct_io``); ``hard_remove``: an open file that is unlinked goes at
        once, not hidden (libfuse's ``-o hard_remove``)."""
        self.fd = fd
        self.ops = ops
        self.nodes = nodes
        self.handles = handles
        self.inflight = inflight
        self.use_ns = bool(ops.uses_ns())
        self.attr_timeout, self.entry_timeout = attr_timeout, entry_timeout
        self.open_flags = kp.FOPEN_DIRECT_IO if direct_io else 0
        self.hard_remove = hard_remove
        self.listings: dict[int, list[tuple[bytes, int]]] = {}  # a directory handle's
        self.ctx: Ctx = (0, 0, 0)  # the caller of the request being served
        # a block device's writes are one request's from here to the reply
        self._begin = ops.request_started if ops.stores_per_request() else None
        self._done = ops.request_done if ops.stores_per_request() else None
        self.resent = False  # whether the request being served is sent again
        self.calling = ""  # the driver's method being called
        self.lenient: set[tuple[str, str]] = set()
        self.raised: StateLog | None = None
        self.trusted: dict[tuple[int, int], int] = {}  # (opcode, errno): until (ms)
        # whether a doubted answer can be asked of a fresh driver: only if the kernel
        # sends the request again (else the doubt would cost the request: EIO)
        self.second_opinions = True
        self._hidden = 0  # hidden names handed out (libfuse's counter)
        self._forks_seen = child.forks_refused()  # (refused by the task limit: counted)
        # a volatile driver's: where each request's state-changing driver calls go
        # before it is answered (``nooks.fs.journal``), and those of this request
        self.journal: Callable[[list[list[Any]]], None] | None = None
        self._pending: list[list[Any]] = []
        self._vfh = 0  # the virtual handle of the request being served
        # the journaled driver call being made, and whether it re-opens a handle whose
        # open is journaled already
        self._attempt: tuple[str, tuple[Any, ...], int] | None = None
        self._reopening = False
        self.journaled: set[int] = set()  # virtual handles whose open is journaled
        # a checked image's (nooks.fs.checkpointed): held around each request, so that
        # the host can check the image between two; the kernel call that pauses
        # (asking for a checkpoint, or not); the paths written since the checkpoint
        self.hold = threading.Lock()
        self.pause_wanted = threading.Event()
        self.pause: Callable[[bool], bool] | None = None
        self.written: set[str] = set()
        # what the driver implements, as mfusepy would register it with libfuse
        self._bound: dict[str, Callable[..., Any]] = {
            name: getattr(ops, name) for name in ops.implemented()}
        self._stat_op: Callable[..., Stat] | None = \
            ops.stat if "getattr" in self._bound else None
        self._handlers: dict[int, Callable[[int, int, bytearray, int], bytes | None]] = {
            kp.Op.LOOKUP: self._lookup, kp.Op.GETATTR: self._getattr,
            kp.Op.SETATTR: self._setattr, kp.Op.READLINK: self._readlink,
            kp.Op.SYMLINK: self._symlink, kp.Op.MKNOD: self._mknod, kp.Op.MKDIR: self._mkdir,
            kp.Op.UNLINK: self._unlink, kp.Op.RMDIR: self._rmdir, kp.Op.RENAME: self._rename,
            kp.Op.RENAME2: self._rename2, kp.Op.LINK: self._link, kp.Op.OPEN: self._open,
            kp.Op.READ: self._read, kp.Op.WRITE: self._write, kp.Op.FLUSH: self._flush,
            kp.Op.FSYNC: self._fsync, kp.Op.RELEASE: self._release,
            kp.Op.OPENDIR: self._opendir, kp.Op.READDIR: self._readdir,
            kp.Op.RELEASEDIR: self._releasedir, kp.Op.STATFS: self._statfs,
            kp.Op.ACCESS: self._access, kp.Op.CREATE: self._create,
            kp.Op.SETXATTR: self._setxattr, kp.Op.GETXATTR: self._getxattr,
            kp.Op.LISTXATTR: self._listxattr, kp.Op.REMOVEXATTR: self._removexattr,
            kp.Op.FSYNCDIR: self._fsyncdir}

    # -- the loop ----------------------------------------------------------------------

    def serve(self) -> None:
        """Serve until the mount goes away."""
        buf = bytearray(BUFFER)
        while True:
            try:
                n = os.readv(self.fd, [buf])
            except OSError as e:
                if e.errno == errno.ENODEV:
                    return
                if e.errno in (errno.EINTR, errno.ENOENT, errno.EAGAIN):
                    continue  # (ENOENT: a request interrupted before it was read)
                raise
            if self.ops is None:  # (detached: the domain is exiting)
                with contextlib.suppress(OSError, kp.Malformed):
                    op, unique = kp.header(buf, n)[:2]
                    if op not in (kp.Op.FORGET, kp.Op.BATCH_FORGET, kp.Op.INTERRUPT):
                        os.write(self.fd, kp.reply(unique, error=errno.EIO))
                return
            done = self._done
            with self.hold:
                out = self.handle(buf, n)
                if done is not None:
                    done()  # (what the request stored is kept before the kernel hears of it)
                if out is not None:
                    try:
                        os.write(self.fd, out)
                    except OSError as e:
                        if e.errno == errno.ENODEV:
                            return
                        if e.errno != errno.ENOENT:  # (its caller was interrupted: gone)
                            raise
                if self.inflight is not None:
                    self.inflight.done(SLOT)
            if self.pause_wanted.is_set():  # (the host waits to check the image)
                self.pause_wanted.clear()
                self._pause(False)

    def detach(self) -> bool:
        """Let go of the driver (the domain exits: its finalizers must run), unless a
        request is being served (it cannot be waited for: its kernel calls' replies
        come through the exiting thread); the loop ends at the next request."""
        if not self.hold.acquire(blocking=False):
            return False
        try:
            self._detach()
        finally:
            self.hold.release()
        return True

    def _detach(self) -> None:
        self.ops = None
        self._bound, self._stat_op = {}, None
        self._begin = self._done = None
        self.journal = self.pause = None

    def handle(self, buf: bytearray, n: int) -> bytes | None:
        """The reply to the request in ``buf[:n]`` (None for those that get none)."""
        op, unique, node, uid, gid, pid = kp.header(buf, n)
        if self.inflight is not None:
            self.inflight.took(SLOT, unique, op, int(time.monotonic() * 1000))
        if self._begin is not None:
            self._begin()
        self.ctx = (uid, gid, pid)
        self.resent = bool(unique & RESEND)
        try:
            out = self._answer(op, unique, node, buf, n)
        except BaseException:
            # the domain fails with this request; what its driver did before is done
            # (and in the tables: a hidden name), so it is journaled all the same
            if self._pending:
                with contextlib.suppress(Exception):
                    self._journal_pending(unique, None)
            raise
        if self._pending:
            out = self._journal_pending(unique, out)
        return out

    def _answer(self, op: int, unique: int, node: int, buf: bytearray, n: int) -> bytes | None:
        self._vfh = 0
        self._attempt = None
        if op in (kp.Op.FORGET, kp.Op.BATCH_FORGET):
            for nodeid, nlookup in kp.forgets(op, node, buf, n):
                self.nodes.forget(nodeid, nlookup)
            return None
        if op == kp.Op.INTERRUPT:
            return None  # (a request runs to its end; the kernel drops its answer)
        handler = self._handlers.get(op)
        if handler is None:
            return kp.reply(unique, error=errno.ENOSYS)
        try:
            return kp.reply(unique, handler(node, op, buf, n) or b"")
        except OSError as e:
            code = e.errno if isinstance(e.errno, int) and e.errno > 0 else errno.EINVAL
            if unique & RESEND and code in _DONE_IF.get(op, frozenset()):
                if self._attempt is not None:
                    # done the first time, in a driver that failed before it was
                    # journaled: journaled now, as the first try made it
                    self._note(*self._attempt)
                    self._attempt = None
                return kp.reply(unique, self._done_before(node, op, buf, n))
            if isinstance(e, HandleLost):
                return kp.reply(unique, error=errno.EIO)  # (as host mode: not the driver's)
            if code == errno.EAGAIN and self._out_of_tasks() and not self.resent \
                    and self.second_opinions:
                # out of processes: a *resource* failure, and a fresh driver's answer
                raise OutOfTasks(f"{kp.Op(op).name.lower()} answered EAGAIN: the domain's "
                                 "task limit refused a fork") from None
            if self.second_opinions and self._suspect(op, code, node, buf, n) \
                    and not self._trusted(op, code):
                if not self.resent:
                    if code in OUT_OF:
                        raise  # (a *resource* failure)
                    raise Suspect(f"{kp.Op(op).name.lower()} answered "
                                  f"{errno.errorcode.get(code, code)}: asking a fresh "
                                  "driver") from None
                self._trust(op, code)  # (a fresh driver said so too)
            return kp.reply(unique, error=code)
        except kp.Malformed:
            return kp.reply(unique, error=errno.EINVAL)
        except Exception as e:
            if isinstance(e, Misbehaved | Suspect | MemoryError | OutOfTasks):
                raise
            what = (self.calling, type(e).__name__)
            if what in self.lenient:  # (a fresh driver raised it too: mfusepy's answer)
                return kp.reply(unique, error=errno.EINVAL)
            self._raised(what)
            raise

    def _done_before(self, node: int, op: int, buf: bytearray, n: int) -> bytes:
        """The answer to a request sent again whose first try had done its work."""
        if op in (kp.Op.RENAME, kp.Op.RENAME2):
            at = kp.IN_HEADER.size + (kp.RENAME_IN.size if op == kp.Op.RENAME
                                      else kp.RENAME2_IN.size)
            old, new = kp.names(buf, n, 2, at)
            self.nodes.moved(node, old, kp.args(kp.RENAME_IN, buf, n)[0], new)
        elif op in (kp.Op.UNLINK, kp.Op.RMDIR):
            self.nodes.removed(node, self._name(buf, n))
        elif op in (kp.Op.RELEASE, kp.Op.RELEASEDIR):
            self._closed(kp.args(kp.RELEASE_IN, buf, n)[0])
        elif op == kp.Op.CREATE:
            flags, _, _, _ = kp.args(kp.CREATE_IN, buf, n)
            name = self._name(buf, n, kp.IN_HEADER.size + kp.CREATE_IN.size)
            entry = self._entry(node, name)
            fh = checked("open", self._call("open", self._path(node, name),
                                             flags & ~REOPEN_STRIP))
            return entry + kp.open_out(self._handed(kp.ENTRY_OUT.unpack_from(entry)[0],
                                                    flags, fh), self.open_flags)
        elif op in _ENTRY_AFTER:
            name = (kp.names(buf, n, 2)[0] if op == kp.Op.SYMLINK
                    else self._name(buf, n, kp.IN_HEADER.size + (
                        kp.MKNOD_IN.size if op == kp.Op.MKNOD else kp.MKDIR_IN.size
                        if op == kp.Op.MKDIR else kp.LINK_IN.size)))
            return self._entry(node, name)
        return b""

    def lenient_after(self, raised: StateLog) -> None:
        """Keep in ``raised`` each exception the driver raises that is not an error it
        means (its domain then fails, and the request goes to a fresh driver); one a
        driver before raised in the same call is answered as mfusepy answers it
        (EINVAL), as the host-mediated mode does."""
        self.raised = raised
        for record in raised.records():
            name, _, exc = record.decode(errors="replace").partition("\0")
            if name == _TRUST:
                op, code, until = (int(x) for x in exc.split("\0"))
                self.trusted[(op, code)] = until
            else:
                self.lenient.add((name, exc))

    def _suspect(self, op: int, code: int, node: int, buf: bytearray, n: int) -> bool:
        if code in SUSPECT:
            return True
        if code == errno.ENOENT:
            return op not in _LOOKING
        if code == errno.ENOTDIR and op in _ON_DIRECTORIES:
            # "not a directory" for what the driver itself says is one (as host mode)
            try:
                path = self._path(node, self._name(buf, n)) if op == kp.Op.RMDIR \
                    else self._path(node)
                return stat.S_ISDIR(self._stat(path).st_mode)
            except (OSError, kp.Malformed):
                return False
        if code in (errno.EBADF, errno.EINVAL):
            layout = _FH_ARGS.get(op)
            if layout is None:
                return code == errno.EBADF  # (no handle: it cannot be a bad one)
            fh = kp.args(layout, buf, n)[0]
            return self.handles is not None and fh in self.handles.handles
        return False

    def _out_of_tasks(self) -> bool:
        """Whether the domain's task limit has refused a fork since last asked."""
        n = child.forks_refused()
        seen, self._forks_seen = self._forks_seen, n
        return n > seen

    def _doubt(self, why: str) -> None:
        """The driver's answer cannot be right: ask a fresh driver (unless this one is
        the fresh one: then its answer stands)."""
        if not self.resent and self.second_opinions:
            raise Suspect(f"{why}: asking a fresh driver")

    def _gone(self, path: str, op: str) -> None:
        try:
            self._call("getattr", path)
        except OSError as e:
            if e.errno == errno.ENOENT:
                return
            raise
        self._doubt(f"{path} is still there after {op}")

    def _trusted(self, op: int, code: int) -> bool:
        until = self.trusted.get((op, code))
        return until is not None and int(time.monotonic() * 1000) < until

    def _trust(self, op: int, code: int) -> None:
        until = int(time.monotonic() * 1000) + TRUST_MS
        self.trusted[(op, code)] = until
        self._remember(_trust_record(op, code, until))

    def _raised(self, what: tuple[str, str]) -> None:
        if sum(1 for n, _ in self.lenient if n == what[0]) >= MAX_LENIENT:
            return
        self.lenient.add(what)
        self._remember(_lenient_record(*what))

    def _remember(self, record: bytes) -> None:
        """Keep ``record`` for the next drivers' servers; a full log is compacted to
        what still counts (every lenient answer, the trusts not yet run out)."""
        if self.raised is None:
            return
        try:
            self.raised.append(record)
        except Full:
            now = int(time.monotonic() * 1000)
            self.raised.compact([*(_lenient_record(*w) for w in self.lenient),
                                 *(_trust_record(op, code, until) for (op, code), until
                                   in self.trusted.items() if until > now)])

    # -- helpers -----------------------------------------------------------------------

    def _call(self, name: str, *args: Any) -> Any:
        """The driver's ``name`` for this request, or what libfuse's high level answers
        for a driver without it."""
        op = self._bound.get(name)
        if op is None:
            if name in _UNNEEDED:
                return 0
            raise OSError(errno.ENOSYS, f"the driver has no {name}")
        self.calling = name
        if self.journal is None or name not in JOURNALED:
            return op(self.ctx, *args)
        at = time.time_ns()
        self._attempt = (name, args, at)
        with wall_clock_at(at):  # (the clock the driver reads; a replay reads it again)
            result = op(self.ctx, *args)
        self._attempt = None
        self._note(name, args, at)
        return result

    # -- a checked image's checkpoints -------------------------------------------------

    def _pause(self, checkpoint: bool) -> None:
        """Wait in the host while it checks the image (``checkpoint``: asking it to)."""
        assert self.pause is not None
        if self.pause(checkpoint):
            self.checkpointed()

    def checkpointed(self) -> None:
        """The host took a checkpoint: its journal no longer holds what came before."""
        self.written.clear()
        self.journaled.clear()

    def _written(self, name: str, args: tuple[Any, ...]) -> None:
        if name in ("write", "truncate", "create") or (
                name == "open" and args[1] & os.O_TRUNC):
            self.written.add(args[0])
        elif name == "rename":
            old = args[0]
            for path in [p for p in self.written if p == old or p.startswith(old + "/")]:
                self.written.add(args[1] + path[len(old):])

    # -- a volatile driver's journal ---------------------------------------------------

    def _note(self, name: str, args: tuple[Any, ...], at: int) -> None:
        """Journal a driver call made at ``at`` (ns) that succeeded (sent with the
        request's others before the request is answered), with the virtual handle for
        the driver's."""
        if name == "open" and args[1] & os.O_ACCMODE == os.O_RDONLY \
                and not args[1] & (os.O_TRUNC | os.O_CREAT):
            return  # (a read-only open changes nothing; a recovery re-opens it)
        if name in OPENERS and self._reopening:
            return  # (its open is journaled: a rollback's redo opens it once)
        if self.pause is not None:
            self._written(name, args)
            if self._vfh and self._vfh not in self.journaled and self.handles is not None \
                    and name not in OPENERS and name != "release" \
                    and self._vfh in self.handles.handles:
                # opened before the checkpoint: its open is journaled now, by its path
                h = self.handles.handles[self._vfh]
                self._pending.append(["open", self._vfh, at,
                                      [self.ctx, self._path(h.node), h.flags & ~REOPEN_STRIP]])
                self.journaled.add(self._vfh)
        vfh = self._vfh if self._vfh in self.journaled else 0
        if name == "release":
            if not vfh:
                return
            self.journaled.discard(vfh)
        call = [self.ctx, *args]
        fh = FH_AT.get(name)
        if fh is not None and fh < len(call) and call[fh] is not None:
            # (0: a handle whose open is not journaled, as the driver's without open)
            call[fh] = vfh
        # (an opener's handle comes with _journal_opened; 0 if the request fails first)
        self._pending.append([name, 0 if name in OPENERS else None, at, call])

    def _journal_opened(self, handle: int) -> None:
        """The driver call just journaled opened virtual handle ``handle``."""
        if self._pending and self._pending[-1][0] in OPENERS and not self._pending[-1][1]:
            self._pending[-1][1] = handle
            self.journaled.add(handle)

    def _journal_pending(self, unique: int, out: bytes | None) -> bytes | None:
        assert self.journal is not None
        try:
            self.journal(self._pending)
        except OSError as e:  # (full: the request fails, as it is not kept)
            return kp.reply(unique, error=e.errno or errno.EIO)
        finally:
            self._pending.clear()
        return out

    def adopt(self, handles: dict[int, int], journaled: list[int]) -> None:
        """The driver's handles behind virtual ones (a fresh driver's, re-made from the
        journal), and the virtual handles whose open is journaled."""
        self.journaled = set(journaled)
        if self.handles is not None:
            for handle, real in handles.items():
                h = self.handles.handles.get(handle)
                if h is not None:
                    h.driver = real

    def _path(self, node: int, name: bytes | None = None) -> str:
        base = self.nodes.path(node)
        if base is None:
            raise OSError(errno.ENOENT, "a node without a name")
        if name is not None:
            if not name or b"/" in name:
                raise OSError(errno.EINVAL, "not a name")
            base = base + name if base == b"/" else base + b"/" + name
        return os.fsdecode(base)

    def _stat(self, path: str, fh: int | None = None) -> Stat:
        """The driver's getattr of ``path``, checked (Misbehaved if the declaration does
        not allow it): ``_call("getattr")``, the hot path of lookups."""
        if self._stat_op is None:
            raise OSError(errno.ENOSYS, "the driver has no getattr")
        self.calling = "getattr"
        try:
            return self._stat_op(self.ctx, path, fh)
        except msgspec.ValidationError as e:
            raise Misbehaved(f"getattr returned a bad result: {e}") from None

    def _entry(self, parent: int, name: bytes, made: int = 0) -> bytes:
        """Look ``name`` up in ``parent`` (the driver's getattr) and count it; ``made``:
        the kind of file a request has just made there (else the driver is doubted)."""
        st = self._stat(self._path(parent, name))
        if made and stat.S_IFMT(st.st_mode) != made:
            self._doubt(f"{self._path(parent, name)} is mode {st.st_mode:o} after it was made")
        node = self.nodes.lookup(parent, name)
        return kp.entry_out(node, packed(node, st, self.use_ns), self.entry_timeout,
                            self.attr_timeout)

    def _name(self, buf: bytearray, n: int, at: int = kp.IN_HEADER.size) -> bytes:
        return kp.name(buf, n, at)

    def _handed(self, node: int, flags: int, driver: Any, directory: bool = False) -> int:
        """The handle the kernel is given for what the driver opened as ``driver``."""
        fh = int(driver or 0)
        if self.handles is None:
            return fh
        handle = self.handles.opened(node, flags, fh, directory=directory)
        if self.journal is not None:
            self._journal_opened(handle)
        return handle

    def _fh(self, handle: int) -> int:
        """The driver's handle behind the kernel's ``handle``: re-opened by path if
        this server's driver never opened it."""
        self._vfh = handle
        if self.handles is None:
            return handle
        h = self.handles.handles.get(handle)
        if h is None:
            raise OSError(errno.EBADF, "no such handle")
        if h.driver is None:
            path = self._path(h.node)
            self._reopening = handle in self.journaled
            try:
                opened = self._call("opendir", path) if h.directory else \
                    self._call("open", path, h.flags & ~REOPEN_STRIP)
            except OSError as e:
                if e.errno != errno.ENOENT:
                    raise
                raise HandleLost(errno.EIO, f"{path} is gone: its handle is lost") from None
            finally:
                self._reopening = False
            h.driver = checked("open", opened)
            if self.journal is not None:
                self._journal_opened(handle)
        return h.driver

    def _closed(self, handle: int) -> None:
        if self.handles is not None:
            self.handles.closed(handle)

    # -- files unlinked while open (libfuse's high level, without hard_remove) ----------

    def _is_open(self, parent: int, name: bytes) -> bool:
        if self.hard_remove:
            return False
        node = self.nodes.by_name.get((parent, name))
        return node is not None and self.handles is not None and any(
            h.node == node and not h.directory for h in self.handles.handles.values())

    def _hide(self, parent: int, name: bytes) -> None:
        """Rename an open file that is unlinked (or renamed over) to a hidden name in its
        directory, as libfuse does: the driver can still serve it by path until the
        last handle on it is released (``_unhide``)."""
        node = self.nodes.by_name[(parent, name)]
        for _ in range(HIDE_TRIES):
            self._hidden += 1
            hidden = b".fuse_hidden%08x%08x" % (node & 0xFFFFFFFF, self._hidden & 0xFFFFFFFF)
            try:
                self._call("getattr", self._path(parent, hidden))
            except OSError as e:
                if e.errno != errno.ENOENT:
                    raise
                break
        else:
            raise OSError(errno.EBUSY, "no free hidden name")
        self._call("rename", self._path(parent, name), self._path(parent, hidden))
        self.nodes.moved(parent, name, parent, hidden)
        self.nodes.hide(node)

    def _unhide(self, node: int) -> None:
        """The last handle on a hidden file is released: it is unlinked now."""
        n = self.nodes.nodes.get(node)
        if n is None or not n.hidden or not n.name or self._is_open(n.parent, n.name):
            return
        with contextlib.suppress(OSError):  # (as libfuse: the release is answered anyway)
            self._call("unlink", self._path(n.parent, n.name))
            self.nodes.removed(n.parent, n.name)

    # -- the operations ----------------------------------------------------------------

    def _lookup(self, node: int, op: int, buf: bytearray, n: int) -> bytes:
        return self._entry(node, self._name(buf, n))

    def _getattr(self, node: int, op: int, buf: bytearray, n: int) -> bytes:
        flags, _, fh = kp.args(kp.GETATTR_IN, buf, n)
        path = self._path(node)
        st = self._stat(path, self._fh(fh) if flags & GETATTR_FH else None)
        h = self.handles.handles.get(fh) if flags & GETATTR_FH and self.handles else None
        mode = st.st_mode
        if h is not None and not h.directory and (
                stat.S_ISDIR(mode) or stat.S_ISSOCK(mode)
                or (h.flags & os.O_CREAT and not stat.S_ISREG(mode))):
            # (open() refuses both; what create made is a regular file)
            self._doubt(f"the open file {path} is described as mode {mode:o}")
        return kp.attr_out(packed(node, st, self.use_ns), self.attr_timeout)

    def _setattr(self, node: int, op: int, buf: bytearray, n: int) -> bytes:
        (valid, _, fh, size, _, atime, mtime, _, atimens, mtimens, _, mode, _, uid, gid,
         _) = kp.args(kp.SETATTR_IN, buf, n)
        path = self._path(node)
        if valid & FATTR_MODE:
            self._call("chmod", path, mode)
        if valid & (FATTR_UID | FATTR_GID):
            self._call("chown", path, uid if valid & FATTR_UID else -1,
                           gid if valid & FATTR_GID else -1)
        if valid & FATTR_SIZE:
            if valid & FATTR_FH:
                self._call("truncate", path, size, self._fh(fh))
            else:
                self._call("truncate", path, size)
        if valid & (FATTR_ATIME | FATTR_MTIME):
            now = time.time_ns()

            def when(set_: int, now_: int, sec: int, nsec: int) -> int:
                if valid & now_:
                    return now
                if valid & set_:
                    return sec * 10**9 + nsec
                return UTIME_OMIT

            times = (when(FATTR_ATIME, FATTR_ATIME_NOW, atime, atimens),
                     when(FATTR_MTIME, FATTR_MTIME_NOW, mtime, mtimens))
            if not self.use_ns:
                self._call("utimens", path, tuple(t / 1e9 for t in times))
            else:
                self._call("utimens", path, times)
        st = self._stat(path, self._fh(fh) if valid & FATTR_FH else None)
        return kp.attr_out(packed(node, st, self.use_ns), self.attr_timeout)

    def _readlink(self, node: int, op: int, buf: bytearray, n: int) -> bytes:
        return os.fsencode(checked("readlink", self._call("readlink", self._path(node))))

    def _symlink(self, node: int, op: int, buf: bytearray, n: int) -> bytes:
        name, target = kp.names(buf, n, 2)
        self._call("symlink", self._path(node, name), os.fsdecode(target))
        return self._entry(node, name, stat.S_IFLNK)

    def _mknod(self, node: int, op: int, buf: bytearray, n: int) -> bytes:
        mode, rdev, _, _ = kp.args(kp.MKNOD_IN, buf, n)
        name = self._name(buf, n, kp.IN_HEADER.size + kp.MKNOD_IN.size)
        self._call("mknod", self._path(node, name), mode, rdev)
        return self._entry(node, name)

    def _mkdir(self, node: int, op: int, buf: bytearray, n: int) -> bytes:
        mode, _ = kp.args(kp.MKDIR_IN, buf, n)
        name = self._name(buf, n, kp.IN_HEADER.size + kp.MKDIR_IN.size)
        self._call("mkdir", self._path(node, name), mode)
        return self._entry(node, name, stat.S_IFDIR)

    def _unlink(self, node: int, op: int, buf: bytearray, n: int) -> bytes:
        name = self._name(buf, n)
        if self._is_open(node, name):
            self._hide(node, name)
            return b""
        self._call("unlink", self._path(node, name))
        self._gone(self._path(node, name), "unlink")
        self.nodes.removed(node, name)
        return b""

    def _rmdir(self, node: int, op: int, buf: bytearray, n: int) -> bytes:
        name = self._name(buf, n)
        self._call("rmdir", self._path(node, name))
        self._gone(self._path(node, name), "rmdir")
        self.nodes.removed(node, name)
        return b""

    def _renamed(self, node: int, newdir: int, buf: bytearray, n: int, at: int) -> bytes:
        old, new = kp.names(buf, n, 2, at)
        if self._is_open(newdir, new) and (newdir, new) != (node, old):
            self._hide(newdir, new)
        self._call("rename", self._path(node, old), self._path(newdir, new))
        self._call("getattr", self._path(newdir, new))  # (ENOENT: doubted, as suspect)
        self.nodes.moved(node, old, newdir, new)
        return b""

    def _rename(self, node: int, op: int, buf: bytearray, n: int) -> bytes:
        (newdir,) = kp.args(kp.RENAME_IN, buf, n)
        return self._renamed(node, newdir, buf, n, kp.IN_HEADER.size + kp.RENAME_IN.size)

    def _rename2(self, node: int, op: int, buf: bytearray, n: int) -> bytes:
        newdir, flags, _ = kp.args(kp.RENAME2_IN, buf, n)
        if flags:  # (an Operations rename takes none: libfuse answers so)
            raise OSError(errno.EINVAL, "rename flags")
        return self._renamed(node, newdir, buf, n, kp.IN_HEADER.size + kp.RENAME2_IN.size)

    def _link(self, node: int, op: int, buf: bytearray, n: int) -> bytes:
        (old,) = kp.args(kp.LINK_IN, buf, n)
        name = self._name(buf, n, kp.IN_HEADER.size + kp.LINK_IN.size)
        self._call("link", self._path(node, name), self._path(old))
        return self._entry(node, name)

    def _open(self, node: int, op: int, buf: bytearray, n: int) -> bytes:
        flags, _ = kp.args(kp.OPEN_IN, buf, n)
        path = self._path(node)
        if self.written and path in self.written and flags & os.O_ACCMODE != os.O_WRONLY \
                and self.handles is not None and not any(
                    h.node == node for h in self.handles.handles.values()):
            # written since the checkpoint, closed, opened to be read: what it reads
            # back as is checked before anyone reads it
            self._pause(True)
        fh = checked("open", self._call("open", path, flags))
        return kp.open_out(self._handed(node, flags, fh), self.open_flags)

    def _read(self, node: int, op: int, buf: bytearray, n: int) -> bytes:
        fh, offset, size, _, _, _, _ = kp.args(kp.READ_IN, buf, n)
        data = checked("read", self._call("read", self._path(node), size, offset,
                                             self._fh(fh)))
        if len(data) > size:
            raise Misbehaved(f"read returned {len(data)} bytes, {size} were asked for")
        if len(data) < size and not self.resent:
            end = checked("getattr", self._call("getattr", self._path(node))).get("st_size")
            if isinstance(end, int) and offset + len(data) < end:
                self._doubt(f"read {len(data)} of {size} bytes at {offset} of a "
                            f"{end}-byte file")
        return bytes(data)

    def _write(self, node: int, op: int, buf: bytearray, n: int) -> bytes:
        fh, offset, size, _, _, _, _ = kp.args(kp.READ_IN, buf, n)
        at = kp.IN_HEADER.size + kp.READ_IN.size
        if n - at < size:
            raise kp.Malformed("a write shorter than it says")
        written = self._call("write", self._path(node), bytes(buf[at:at + size]), offset,
                                 self._fh(fh))
        written = checked("write", written)
        if written > size:
            raise Misbehaved(f"write says it wrote {written} bytes of {size}")
        if written != size:
            self._doubt(f"wrote {written} of {size} bytes")
        return kp.write_out(written)

    def _flush(self, node: int, op: int, buf: bytearray, n: int) -> bytes:
        fh, _, _, _ = kp.args(kp.FLUSH_IN, buf, n)
        self._call("flush", self._path(node), self._fh(fh))
        return b""

    def _fsync(self, node: int, op: int, buf: bytearray, n: int) -> bytes:
        fh, flags, _ = kp.args(kp.FSYNC_IN, buf, n)
        self._call("fsync", self._path(node), flags & 1, self._fh(fh))
        return b""

    def _release(self, node: int, op: int, buf: bytearray, n: int) -> bytes:
        fh, _, _, _ = kp.args(kp.RELEASE_IN, buf, n)
        try:
            self._call("release", self._path(node), self._fh(fh))
        finally:
            self._closed(fh)
        self._unhide(node)
        return b""

    def _opendir(self, node: int, op: int, buf: bytearray, n: int) -> bytes:
        path = self._path(node)
        fh = checked("opendir", self._call("opendir", path))
        return kp.open_out(self._handed(node, 0, fh, directory=True))

    def _readdir(self, node: int, op: int, buf: bytearray, n: int) -> bytes:
        fh, offset, size, _, _, _, _ = kp.args(kp.READ_IN, buf, n)
        listing = self.listings.get(fh) if offset else None
        if listing is None:
            listing = []
            entries = checked("readdir", self._call("readdir", self._path(node),
                                                          self._fh(fh)))
            for entry in entries:
                name, attrs = (entry, None) if isinstance(entry, str) else entry[:2]
                mode = attrs if isinstance(attrs, int) else \
                    attrs.get("st_mode", 0) if attrs else 0
                listing.append((os.fsencode(name), (mode >> 12) & 0xF))
            self.listings[fh] = listing
        out = bytearray()
        for i in range(offset, len(listing)):
            name, kind = listing[i]
            d = kp.dirent(UNKNOWN_INO, i + 1, name, kind)
            if len(out) + len(d) > size:
                break
            out += d
        return bytes(out)

    def _releasedir(self, node: int, op: int, buf: bytearray, n: int) -> bytes:
        fh, _, _, _ = kp.args(kp.RELEASE_IN, buf, n)
        self.listings.pop(fh, None)
        try:
            self._call("releasedir", self._path(node), self._fh(fh))
        finally:
            self._closed(fh)
        return b""

    def _statfs(self, node: int, op: int, buf: bytearray, n: int) -> bytes:
        if "statfs" not in self._bound:  # (libfuse's high level answers so)
            return kp.statfs_out(blocks=0, bfree=0, bavail=0, files=0, ffree=0, bsize=512,
                                 namelen=255, frsize=0)
        st = checked("statfs", self._call("statfs", self._path(node)))
        return kp.statfs_out(blocks=int(st.get("f_blocks", 0)), bfree=int(st.get("f_bfree", 0)),
                             bavail=int(st.get("f_bavail", 0)),
                             files=int(st.get("f_files", 0)), ffree=int(st.get("f_ffree", 0)),
                             bsize=int(st.get("f_bsize", 0)),
                             namelen=int(st.get("f_namemax", 255)),
                             frsize=int(st.get("f_frsize", 0)))

    def _access(self, node: int, op: int, buf: bytearray, n: int) -> bytes:
        mask, _ = kp.args(kp.ACCESS_IN, buf, n)
        path = self._path(node)
        try:
            self._call("access", path, mask)
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EPERM) and self.ctx[0] == 0:
                # root may read and write anything, and search any directory or run
                # any file with an execute bit: a refusal of those is the driver's
                mode = checked("getattr", self._call("getattr", path)).get("st_mode", 0) \
                    if mask & os.X_OK else 0
                if not mask & os.X_OK or stat.S_ISDIR(mode) or mode & 0o111:
                    self._doubt(f"root was refused access ({mask:o}) to {path}")
            raise
        return b""

    def _getxattr(self, node: int, op: int, buf: bytearray, n: int) -> bytes:
        size, _ = kp.args(kp.GETXATTR_IN, buf, n)
        name = self._name(buf, n, kp.IN_HEADER.size + kp.GETXATTR_IN.size)
        value = checked("getxattr", self._call("getxattr", self._path(node),
                                                os.fsdecode(name)))
        return _sized(value, size)

    def _listxattr(self, node: int, op: int, buf: bytearray, n: int) -> bytes:
        size, _ = kp.args(kp.GETXATTR_IN, buf, n)
        names = checked("listxattr", self._call("listxattr", self._path(node)))
        return _sized(b"".join(os.fsencode(x) + b"\0" for x in names), size)

    def _setxattr(self, node: int, op: int, buf: bytearray, n: int) -> bytes:
        size, flags = kp.args(kp.SETXATTR_IN, buf, n)
        at = kp.IN_HEADER.size + kp.SETXATTR_IN.size
        name = kp.names(buf, n, 1, at)[0]
        at += len(name) + 1
        if n - at < size:
            raise kp.Malformed("an xattr value shorter than it says")
        self._call("setxattr", self._path(node), os.fsdecode(name),
                   bytes(buf[at:at + size]), flags)
        return b""

    def _removexattr(self, node: int, op: int, buf: bytearray, n: int) -> bytes:
        self._call("removexattr", self._path(node), os.fsdecode(self._name(buf, n)))
        return b""

    def _fsyncdir(self, node: int, op: int, buf: bytearray, n: int) -> bytes:
        fh, flags, _ = kp.args(kp.FSYNC_IN, buf, n)
        self._call("fsyncdir", self._path(node), flags & 1, self._fh(fh))
        return b""

    def _create(self, node: int, op: int, buf: bytearray, n: int) -> bytes:
        flags, mode, _, _ = kp.args(kp.CREATE_IN, buf, n)
        if self.resent:  # (the first try may have made the file: O_EXCL would refuse it)
            flags &= ~os.O_EXCL
        name = self._name(buf, n, kp.IN_HEADER.size + kp.CREATE_IN.size)
        path = self._path(node, name)
        # (as mfusepy: a create that takes the open flags is given them)
        fh = checked("create", self._call("create", path, mode, flags))
        entry = self._entry(node, name)
        return entry + kp.open_out(self._handed(kp.ENTRY_OUT.unpack_from(entry)[0], flags, fh),
                                   self.open_flags)
