"""The filesystem shadow: what the engine needs to know about filesystem drivers.

Rules:

* The kernel only ever sees *virtual* file handles (from 1), handed out here; each maps
  to the current driver's handle. A recovery re-opens every open handle by path
  and flags (without O_CREAT, O_EXCL, O_TRUNC) and updates the map, so open
  files and directories survive a driver restart. A rename moves the paths of
  the handles under it. A handle that cannot be re-opened (its file is gone) is
  *lost*: every use of it fails with EIO, and its release succeeds.
* While the driver recovers, callers block (bounded by the engine's
  ``block_timeout``, then EIO); they never see the failure. A statfs is
  answered from the log meanwhile: the driver's last answer to one.
* Re-issued requests are idempotent, or made so: writes and truncates at
  offsets are; a re-issued mkdir/mknod/symlink/link that meets EEXIST, an
  unlink/rmdir/rename that meets ENOENT, a release that meets EBADF, found
  their own earlier effect and count as done.
* A request that keeps failing the driver fails alone with EIO.
* Second opinions: EIO, EFAULT or ENOSPC from the driver; ENOENT from any
  request but a lookup (the kernel looked the path up first); EBADF or EINVAL
  for a handle the shadow holds open, EBADF for a request without one; ENOTDIR
  for what the driver's getattr calls a directory: each condemns the driver; a
  fresh one is asked again, and the application sees the error only if it
  says the same. Postconditions likewise (``doubt``): what mkdir, mknod,
  symlink or link made must be there (a directory after mkdir, a symbolic
  link after symlink), what unlink or rmdir removed must be gone.
* With ``volatile=True`` (a driver whose whole state lives in its memory) the
  shadow also keeps every state-changing request since the mount and replays
  them all into the new driver; without it, only open handles are replayed and
  the stored state is the driver's own business (a disk image, a directory).
* With ``journaled=True`` (a driver whose image the host checks at checkpoints,
  ``nooks.fs.consistency``) the shadow keeps every state-changing request since
  the last ``checkpoint()``. An ordinary recovery replays open handles only;
  one after the host has put the image back as it was at the checkpoint
  (``rolling_back``) re-opens the handles open then and replays the requests since.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import threading
from collections.abc import Callable, Iterator
from typing import Any

from nooks.domain.host import Domain
from nooks.errors import FailureReport
from nooks.fs.handles import REOPEN_STRIP
from nooks.fs.interface import FsInterface, os_error
from nooks.fs.journal import Spilled, compacted, named_paths
from nooks.fs.spill import Spill
from nooks.fs.writes import Written, WrittenFiles
from nooks.shadow.handles import Handle, HandleTable
from nooks.shadow.spec import NOT_IN_LOG, Answer, ClassSpec, Meanings, Strategy

log = logging.getLogger(__name__)

ROOT_CTX = (0, 0, 0)

# what each call means, as FsInterface declares it (nooks.wrappers.meaning): which
# argument is a handle, which calls open and close one, which change what is stored
# (the journal keeps those), which errors on a re-issue show its own earlier effect
MEANINGS = Meanings.read(FsInterface)
FH_AT = MEANINGS.handle_at
OPENERS = MEANINGS.openers
CLOSERS = MEANINGS.closers
LOGGED = MEANINGS.logged
# errors a driver gives when it is broken more often than when the world is: a
# fresh driver is asked again before the application sees one
SUSPECT = frozenset({errno.EIO, errno.EFAULT, errno.ENOSPC,
                     # the driver is out of descriptors or memory: its domain's own
                     # limits (the engine condemns it as a *resource* failure)
                     errno.EMFILE, errno.ENFILE, errno.ENOMEM})
LOOKUPS = frozenset({"getattr", "access", "statfs", "init", "destroy"})
# postconditions: what must be there, or gone, after a request succeeds
MADE = frozenset({"mkdir", "mknod", "symlink", "link"})
GONE = frozenset({"unlink", "rmdir"})
MADE_KIND = {"mkdir": (stat.S_IFDIR, "directory"), "symlink": (stat.S_IFLNK, "symbolic link")}


def _attrs(domain: Domain, ctx: Any, path: str) -> dict[str, Any] | None:
    """The driver's getattr of ``path``, or None if it says there is no such file."""
    try:
        return domain.call("getattr", ctx, path, None)  # type: ignore[no-any-return]
    except OSError:
        return None


def _mode(domain: Domain, ctx: Any, path: str) -> int | None:
    attrs = _attrs(domain, ctx, path)
    mode = attrs.get("st_mode") if attrs is not None else None
    return mode if isinstance(mode, int) else None


class FsShadow(ClassSpec):
    interface = FsInterface

    def __init__(self, *, volatile: bool = False, journaled: bool = False) -> None:
        self.volatile = volatile
        self.journaled = journaled and not volatile
        self._lock = threading.Lock()
        self.handles = HandleTable()
        self.journal: list[tuple[str, tuple[Any, ...], Any]] = []
        self.journal_bytes = 0  # data of the journaled writes
        self._rolling_back = False  # the recovery under way is a checkpoint's rollback
        # the handles open at the last checkpoint: (kind, path, flags) by virtual handle
        self._base: dict[int, tuple[str, str, int]] = {}
        self.written = WrittenFiles()  # journaled: what to read back at the checkpoint
        self._spill = Spill("nooks-journal") if self.journaled else None
        # journaled: puts the stored state back as it was at the checkpoint (given by
        # the host, ``rewinds_with``); called before each driver of a rollback is built
        self._rewind: Callable[[], object] | None = None
        self.replay_errors = 0  # journaled requests a fresh driver failed to redo
        self._unjournaled: set[int] = set()  # open handles whose open was not journaled
        # answers requests of a driver being recovered (see answer_own)
        self.beneath: Callable[[str, tuple[Any, ...]], Any] | None = None
        self._statfs: Any = None  # the driver's last statfs answer
        self._domain: Domain | None = None
        self._logs = volatile or self.journaled
        self._recorded = OPENERS | CLOSERS | {"rename", "unlink"} | (LOGGED if self._logs
                                                                     else set())

    strategies = {"statfs": Strategy.FROM_LOG}

    # -- passive mode --------------------------------------------------------------------

    def translate(self, op: str, args: tuple[Any, ...], reissue: bool) -> tuple[Any, ...] | Answer:
        if reissue and op == "create":
            # the first attempt may have created the file: O_EXCL would now refuse it
            return (*args[:3], args[3] & ~os.O_EXCL)
        at = FH_AT.get(op)
        if at is None or at >= len(args) or args[at] is None:
            return args
        h = self.handles.get(args[at])
        if h is None:
            # not one of ours: the driver does not implement the call that opens it
            # (mfusepy then hands the driver fh 0), so it has nothing to remap
            return args
        if h.lost:
            if op in CLOSERS:
                return Answer(0)
            raise os_error(errno.EIO)
        out = list(args)
        out[at] = h.real
        return tuple(out)

    def suspect(self, op: str, args: tuple[Any, ...], error: BaseException,
                domain: Domain) -> bool:
        if not isinstance(error, OSError):
            return False
        if error.errno in SUSPECT:
            return True
        if op == "access" and error.errno in (errno.EACCES, errno.EPERM) and args[0][0] == 0:
            # root may read and write anything, and search any directory or run any
            # file with an execute bit: a refusal of those is the driver's mistake
            if not args[2] & os.X_OK:
                return True
            mode = _mode(domain, args[0], args[1])
            return mode is not None and (stat.S_ISDIR(mode) or bool(mode & 0o111))
        if error.errno == errno.ENOENT:
            # the kernel looked the path up (getattr) before sending anything else
            return op not in LOOKUPS
        if error.errno in (errno.EBADF, errno.EINVAL):
            # the kernel only passes handles it was given: one we hold open is valid;
            # and a request that carries no handle cannot have a bad one
            at = FH_AT.get(op)
            if at is None or at >= len(args) or args[at] is None:
                return error.errno == errno.EBADF
            return args[at] in self.handles
        if error.errno == errno.ENOTDIR and op in ("opendir", "readdir", "rmdir"):
            # "not a directory" for what the driver itself says is one
            mode = _mode(domain, args[0], args[1])
            return mode is not None and stat.S_ISDIR(mode)
        return False

    def doubt(self, op: str, args: tuple[Any, ...], result: Any, domain: Domain) -> str | None:
        """Postconditions, checked with the driver's own getattr. They assume the mount
        is the only writer of what it serves (a change from elsewhere between the
        request and the check costs a needless restart, no more)."""
        if op == "read":
            size, offset = args[2], args[3]
            if len(result) >= size:
                return None
            attrs = _attrs(domain, args[0], args[1])
            end = attrs.get("st_size") if attrs is not None else None
            if isinstance(end, int) and offset + len(result) < end:
                return f"read {len(result)} of {size} bytes at {offset} of a {end}-byte file"
            return None
        if op == "getattr":
            h = self.handles.get(args[2]) if len(args) > 2 and args[2] is not None else None
            mode = result.get("st_mode") if isinstance(result, dict) else None
            if h is not None and h.kind == "file" and isinstance(mode, int) \
                    and (stat.S_ISDIR(mode) or stat.S_ISSOCK(mode)
                         or (h.flags & os.O_CREAT and not stat.S_ISREG(mode))):
                # an open file cannot be a directory or a socket (open() refuses both),
                # and one that create made is a regular file
                return f"the open file {h.path} is described as mode {mode:o}"
            return None
        if op == "write":
            if isinstance(result, int) and result != len(args[2]):
                return f"wrote {result} of {len(args[2])} bytes"
            return None
        if op in MADE:
            attrs = _attrs(domain, args[0], args[1])
            if attrs is None:
                return f"{args[1]} is not there after {op}"
            mode = attrs.get("st_mode")
            kind, what = MADE_KIND.get(op, (None, ""))
            if kind is not None and isinstance(mode, int) and stat.S_IFMT(mode) != kind:
                return f"{args[1]} is not a {what} after {op} (mode {mode:o})"
            return None
        if op in GONE:
            if _attrs(domain, args[0], args[1]) is not None:
                return f"{args[1]} is still there after {op}"
            return None
        if op == "rename" and _attrs(domain, args[0], args[2]) is None:
            return f"{args[2]} is not there after rename"
        return None

    # every filesystem request may be re-issued: each is idempotent, or made so (see
    # translate); ``reissuable`` keeps its default

    def record(self, op: str, args: tuple[Any, ...], result: Any) -> Any:
        if op not in self._recorded:
            if op == "statfs":
                self._statfs = result  # what answers a statfs while the driver recovers
            return result  # getattr, read, write...: nothing to remember
        with self._lock:
            # a read-only open changes nothing: it is not journaled (a recovery re-opens
            # it if it is still open), nor its release -- a journal of reads stays empty
            quiet = (op in OPENERS and _reads_only(op, args)) or \
                (op in CLOSERS and args[2] in self._unjournaled)
            if self._logs and op in LOGGED and not quiet:
                if op == "write":
                    self.journal_bytes += len(args[2])
                    if self._spill is not None:
                        kept = Spilled(self._spill.put(args[2]), len(args[2]))
                        self.journal.append((op, (*args[:2], kept, *args[3:]), result))
                    else:
                        self.journal.append((op, args, result))
                else:
                    self.journal.append((op, args, result))
                if self.journaled:
                    self._note_written(op, args)
            if op in OPENERS:
                flags = args[2] if op == "open" else args[3] if op == "create" else 0
                vfh = self.handles.open(MEANINGS.of[op].opens or "file", args[1], flags,
                                        int(result))
                if quiet:
                    self._unjournaled.add(vfh)
                elif self._logs:
                    self.journal[-1] = (op, args, vfh)
                return vfh
            if op in CLOSERS:
                self.handles.pop(args[2])
                self._unjournaled.discard(args[2])
            elif op == "rename":
                self._moved(args[1], args[2])
            elif op == "unlink" and self.volatile:
                self._compact(args[1])
            return result

    def _note_written(self, op: str, args: tuple[Any, ...]) -> None:
        path = args[1] if len(args) > 1 else None
        if op in ("write", "truncate"):
            at = FH_AT[op]
            h = self.handles.get(args[at]) if at < len(args) else None
            path = h.path if h is not None else args[1]
        self.written.note(op, args, path)

    def forget_handle(self, vfh: int) -> None:
        """The kernel released ``vfh`` and the driver has no release: it is closed."""
        with self._lock:
            self.handles.pop(vfh)
            self._unjournaled.discard(vfh)

    def stop_journal(self) -> None:
        """Journal no more (the host stopped checking): forget what was kept."""
        with self._lock:
            self.journaled = False
            self._logs = self.volatile
            self._recorded = OPENERS | CLOSERS | {"rename", "unlink"}
            self.journal.clear()
            self.journal_bytes = 0
            self.written.clear()
            if self._spill is not None:
                self._spill.reset()

    def close(self) -> None:
        if self._spill is not None:
            self._spill.close()

    def status(self) -> dict[str, Any]:
        return {"open_handles": len(self.handles), "lost_handles": self.handles.lost,
                "journal": len(self.journal), "journal_bytes": self.journal_bytes}

    def journal_paths(self) -> list[str]:
        """Every path the journal names, their parent directories, and the root."""
        with self._lock:
            return named_paths(self.journal)

    def written_files(self) -> list[tuple[str, Written]]:
        with self._lock:
            return list(self.written.files.items())

    def is_open(self, path: str) -> bool:
        with self._lock:
            return any(h.path == path for h in self.handles.values())

    def _moved(self, old: str, new: str) -> None:
        self.handles.moved(old, new)

    def _compact(self, path: str) -> None:
        """Drop logged requests that only concerned an unlinked file (no renames seen)."""
        rest = compacted(self.journal, path, set(self.handles))
        if rest is not None:
            self.journal = rest

    def violation(self, op: str, args: tuple[Any, ...], result: Any) -> str | None:
        if op == "read" and len(result) > args[2]:
            return f"read returned {len(result)} bytes where {args[2]} were asked"
        return None

    def requester(self, op: str, args: tuple[Any, ...]) -> int | None:
        ctx = args[0] if args else None
        return ctx[2] if isinstance(ctx, tuple) and len(ctx) == 3 else None

    def answer_own(self, op: str, args: tuple[Any, ...]) -> Any:
        """A request from the driver being recovered (its constructor looks at its own
        mountpoint): answered as it would be answered before the mount, from what lies
        beneath the mountpoint (``beneath``, set by the host)."""
        if self.beneath is None:
            return NOT_IN_LOG
        return self.beneath(op, args)

    def handle_result(self, op: str) -> bool:
        return op in OPENERS

    def checkpoint(self) -> None:
        """The stored state is known good as it is now: forget the journal, remember
        which handles are open (a rollback comes back to exactly this)."""
        with self._lock:
            self.journal.clear()
            self.journal_bytes = 0
            self.written.clear()
            if self._spill is not None:
                self._spill.reset()
            self._base = {vfh: (h.kind, h.path, h.flags & ~REOPEN_STRIP)
                          for vfh, h in self.handles.items() if not h.lost}

    # -- active mode ---------------------------------------------------------------------

    def answer(self, op: str, args: tuple[Any, ...]) -> Any:
        if op == "statfs" and self._statfs is not None:
            return self._statfs  # sizes move little in a recovery's milliseconds
        return NOT_IN_LOG

    def busy(self, op: str) -> BaseException:
        return os_error(errno.EIO)

    def poison(self, op: str, report: FailureReport) -> BaseException:
        return os_error(errno.EIO)

    def reissued(self, op: str, args: tuple[Any, ...], error: BaseException) -> tuple[bool, Any]:
        done, _ = super().reissued(op, args, error)  # an error its declaration lists
        if done:
            if op in self._recorded:
                self.record(op, args, 0)  # it was done: a journal must redo it too
            if op == "rename" and self._domain is not None:
                # done before the failure: the handles open on the file were re-opened
                # by its old name, in vain; they are open under the new one
                self._reopen_lost(self._domain, args[2])
            return True, 0
        return False, None

    def _reopen_lost(self, domain: Domain, path: str) -> None:
        with self._lock:
            for h in self.handles.values():
                if h.lost and (h.path == path or h.path.startswith(path + "/")):
                    self.handles.reopen(h, _opener(domain))

    # -- recovery ------------------------------------------------------------------------

    def reinit(self, domain: Domain) -> None:
        self._domain = domain  # the driver a re-issued request may need to ask again
        domain.call("init", ROOT_CTX, "/")

    def rewinds_with(self, rewind: Callable[[], object]) -> None:
        """How a rollback puts the stored state back as it was at the checkpoint."""
        self._rewind = rewind

    @contextlib.contextmanager
    def rolling_back(self) -> Iterator[None]:
        """The recovery made inside is a rollback to the last checkpoint: each new driver
        starts from the checkpoint's image and redoes everything since."""
        self._rolling_back = True
        try:
            yield
        finally:
            self._rolling_back = False

    def prepare_restart(self) -> None:
        """Before each new driver of a rollback is built (it reads the image when it
        starts): put the image back as it was at the checkpoint -- again, if an
        earlier attempt failed half-way through its replay."""
        if self._rolling_back and self._rewind is not None:
            self._rewind()

    def replay(self, domain: Domain) -> int:
        if self.volatile:
            return self._replay_journal(domain, {})
        if self._rolling_back:
            # the image is as it was at the checkpoint (prepare_restart): re-open what
            # was open then, redo everything since
            real: dict[int, int] = {}
            with self._lock:
                base = dict(self._base)
            for vfh, (kind, path, flags) in base.items():
                with contextlib.suppress(OSError):  # its file is gone: the handle is lost
                    real[vfh] = int(domain.call("opendir", ROOT_CTX, path) if kind == "dir"
                                    else domain.call("open", ROOT_CTX, path, flags))
            return len(base) + self._replay_journal(domain, real)
        with self._lock:
            return self.handles.reopen_all(_opener(domain))

    def _replay_journal(self, domain: Domain, real: dict[int, int]) -> int:
        with self._lock:
            for op, args, result in self.journal:
                call = list(args)
                if op == "write" and isinstance(call[2], Spilled) and self._spill is not None:
                    call[2] = self._spill.get(call[2].pos, call[2].length)
                at = FH_AT.get(op)
                if at is not None and at < len(call) and call[at] is not None:
                    if call[at] not in real:
                        continue  # its open failed on replay
                    call[at] = real[call[at]]
                try:
                    value = domain.call(op, *call)
                except OSError as e:
                    # it succeeded the first time (only successes are journaled); a
                    # volatile journal may also name a file gone since
                    self.replay_errors += 1
                    log.warning("replaying %s %s: %s", op, call[1] if len(call) > 1 else "",
                                e)
                    continue
                if op in OPENERS:
                    real[result] = int(value)
                elif op in CLOSERS:
                    real.pop(args[2], None)
            reopened = 0
            for vfh, h in self.handles.items():
                if vfh in real:
                    h.real = real[vfh]
                elif vfh in self._unjournaled and not h.lost:
                    reopened += 1
                    self.handles.reopen(h, _opener(domain))
                else:
                    h.lost = True
            return len(self.journal) + reopened


def _opener(domain: Domain) -> Callable[[Handle], int]:
    """How a fresh driver opens a handle again: by path and flags (without O_CREAT,
    O_EXCL, O_TRUNC: it exists, and its data stays)."""
    def reopen(h: Handle) -> int:
        if h.kind == "dir":
            return int(domain.call("opendir", ROOT_CTX, h.path))
        return int(domain.call("open", ROOT_CTX, h.path, h.flags & ~REOPEN_STRIP))
    return reopen


def _reads_only(op: str, args: tuple[Any, ...]) -> bool:
    """Whether an open changes nothing stored: a directory, or a file opened for
    reading without O_CREAT or O_TRUNC."""
    if op == "opendir":
        return True
    if op != "open":
        return False
    flags = args[2]
    return flags & os.O_ACCMODE == os.O_RDONLY and not flags & (os.O_TRUNC | os.O_CREAT)
