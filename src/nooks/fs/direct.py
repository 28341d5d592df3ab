"""Direct mode, the host's side: the host holds the FUSE connection and the
memory the domain's FUSE layer keeps its state in; the domain serves
``/dev/fuse`` itself (``nooks.fs.served``).

What the host does here:

* it mounts ``/dev/fuse`` itself and answers FUSE_INIT (``Connection``), so the
  mount outlives every domain that serves it;
* it owns the node and handle logs and the in-flight record (memfds mapped
  into each domain), so a fresh domain takes over the kernel's node ids and
  open handles;
* on a failure, before the fresh driver is built (``DirectSpec.prepare_restart``):
  it waits until the dead domain has let go of the connection, answers EIO
  itself to a request that has now failed ``max_tries`` drivers (a poison
  request), and writes ``FUSE_NOTIFY_RESEND``, so that the kernel queues again
  every request the dead domain had read: the fresh driver serves them;
* it watches the in-flight record: a request older than the deadline makes the
  driver *hung* (``Watch``).

A kernel without ``FUSE_NOTIFY_RESEND`` (before Linux 6.9) cannot give requests
back: there the request the record shows is answered EIO, and any other the
dead domain had read waits until the mount is unmounted.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import mmap
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from nooks.domain.host import Domain
from nooks.domain.incarnation import Incarnation
from nooks.domain.spec import Descriptor, Region
from nooks.errors import FailureKind
from nooks.fs import kernelproto as kp
from nooks.fs.checkpointed import Pause
from nooks.fs.devfuse import Connection
from nooks.fs.handles import Handles
from nooks.fs.inflight import InFlight
from nooks.fs.inflight import size_for as inflight_size
from nooks.fs.interface import ServedInterface
from nooks.fs.journal import Journal
from nooks.fs.kernelproto import ROOT_ID
from nooks.fs.nodes import Nodes
from nooks.fs.serve import BUFFER, RESEND
from nooks.fs.served import FUSE, HANDLES, INFLIGHT, NODES, RAISED
from nooks.fs.spec import ROOT_CTX
from nooks.fs.statelog import StateLog, size_for
from nooks.shadow.engine import Shadow
from nooks.shadow.spec import ClassSpec

log = logging.getLogger(__name__)

NODES_BUFFER = 8 << 20  # bytes per buffer of the node log (~170,000 nodes, compacted)
HANDLES_BUFFER = 1 << 20  # and of the handle log (~40,000 open handles)
RAISED_BUFFER = 64 << 10  # and of the record of the exceptions drivers raised
DEAD_WAIT = 5.0  # seconds a killed domain may take to let go of the connection
# the mount options that direct mode takes (libfuse's high level takes more)
CACHE_OPTIONS = ("attr_timeout", "entry_timeout", "negative_timeout", "direct_io",
                 "hard_remove")
MOUNT_OPTIONS = ("allow_other", "default_permissions")


@dataclass
class Tables:
    nodes: Nodes
    handles: Handles


class Session:
    """What the host holds for a direct mount: the connection and the shared memory."""

    def __init__(self, mountpoint: str, fsname: str, options: dict[str, Any]) -> None:
        unknown = sorted(set(options) - set(CACHE_OPTIONS) - set(MOUNT_OPTIONS) - {"fsname"})
        if unknown:
            raise ValueError(f"direct mode does not take the FUSE option(s) "
                             f"{', '.join(unknown)}")
        self.attr_timeout = _seconds(options, "attr_timeout")
        self.entry_timeout = _seconds(options, "entry_timeout")
        if _seconds(options, "negative_timeout", 0.0) != 0:
            raise ValueError("direct mode does not cache failed lookups yet: "
                             "negative_timeout must be 0")
        self.direct_io = bool(options.get("direct_io"))
        self.hard_remove = bool(options.get("hard_remove"))
        self.memfds: dict[str, tuple[int, int]] = {}
        self.conn: Connection | None = None
        self._nodes_map: mmap.mmap | None = None
        self._handles_map: mmap.mmap | None = None
        self._tables: Tables | None = None
        try:
            for name, size in ((NODES, size_for(NODES_BUFFER)),
                               (HANDLES, size_for(HANDLES_BUFFER)),
                               (INFLIGHT, inflight_size(1)),
                               (RAISED, size_for(RAISED_BUFFER))):
                fd = os.memfd_create(f"nooks-{name}", os.MFD_CLOEXEC)
                self.memfds[name] = (fd, size)
                os.ftruncate(fd, size)
            fd, size = self.memfds[INFLIGHT]
            self._map = mmap.mmap(fd, size)
            fd, size = self.memfds[NODES]
            self._nodes_map = mmap.mmap(fd, size)  # (what invalidate reads)
            self.inflight = InFlight(memoryview(self._map))
            self.conn = Connection(mountpoint, fsname=str(options.get("fsname", fsname)),
                                   subtype="", allow_other=bool(options.get("allow_other")),
                                   default_permissions=bool(
                                       options.get("default_permissions")), mount=False)
        except BaseException:
            self.close()
            raise

    def start(self) -> None:
        """Mount and answer FUSE_INIT (until the host's word, ``DirectSpec.go``, the
        domain waits: it must not read the kernel's INIT itself)."""
        assert self.conn is not None
        self.conn.mount()
        self.conn.init(kp.ASYNC_READ | kp.BIG_WRITES)

    def regions(self) -> tuple[Region, ...]:
        return tuple(Region(name, fd, size) for name, (fd, size) in self.memfds.items())

    def descriptors(self) -> tuple[Descriptor, ...]:
        assert self.conn is not None
        return (Descriptor(FUSE, self.conn.fd),)

    def tables(self) -> Tables:
        """The node and handle tables, from their logs, for the host to write while no
        domain serves (``StandIn``): one writer at a time."""
        if self._tables is None:
            fd, size = self.memfds[HANDLES]
            self._handles_map = mmap.mmap(fd, size)
            assert self._nodes_map is not None
            self._tables = Tables(Nodes(StateLog(memoryview(self._nodes_map))),
                                  Handles(StateLog(memoryview(self._handles_map))))
        return self._tables

    def forget_tables(self) -> None:
        """A domain serves again: what it writes, the host does not know."""
        self._tables = None

    def serving(self) -> str | None:
        """The request the domain is serving, as the in-flight record has it."""
        taken = self.inflight.taken() if hasattr(self, "inflight") else []
        ops = [kp.Op(t.opcode).name.lower() if t.opcode in kp.Op._value2member_map_
               else f"opcode {t.opcode}" for t in taken]
        return ", ".join(ops) if ops else None

    def wait_unmounted(self, stop: threading.Event) -> None:
        """Until the mount goes away (``umount``, ``fusermount3 -u``) or ``stop`` is set."""
        assert self.conn is not None
        import select

        p = select.poll()
        p.register(self.conn.fd, 0)  # (only its error: the connection has ended)
        while not stop.is_set():
            if p.poll(200):
                return

    def invalidate(self, paths: list[str]) -> int:
        """Drop what the kernel caches of ``paths`` (their nodes, as the node log has
        them now; those it does not know are skipped); how many it knew."""
        mem = self._nodes_map
        if mem is None or self.conn is None:
            return 0
        try:
            nodes = Nodes(StateLog(memoryview(mem)))  # (read only: the domain writes it)
        except ValueError:  # (closed meanwhile: unmounted)
            return 0
        known = 0
        for path in paths:
            node: int | None = ROOT_ID
            for name in os.fsencode(path).split(b"/"):
                if name and node is not None:
                    node = nodes.by_name.get((node, name))
            if node is not None and self.conn is not None:
                with contextlib.suppress(OSError):
                    known += self.conn.invalidate(node)
        return known

    def unmount(self) -> None:
        """Take the mount away (lazily: what is inside it leaves in its own time); the
        connection stays, so the driver can still be ended in order."""
        if self.conn is not None:
            self.conn.unmount()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        for fd, _ in self.memfds.values():
            os.close(fd)
        self.memfds = {}
        if hasattr(self, "_map"):
            self.inflight.mem.release()
            self._map.close()
        if self._nodes_map is not None:
            with contextlib.suppress(BufferError):  # (a table read from it still refers)
                self._nodes_map.close()
            self._nodes_map = None


def _seconds(options: dict[str, Any], key: str, default: float = 1.0) -> float:
    raw = options.get(key, default)
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ValueError(f"{key}={raw}: not a number of seconds") from None
    if not 0 <= value <= 86400:
        raise ValueError(f"{key}={raw}: give 0 to 86400 seconds")
    return value


class DirectSpec(ClassSpec):
    """The shadow's part in direct mode: the domain serves requests, the host's
    engine restarts it; between a failure and the fresh driver, this gives the dead
    one's requests back to the kernel."""

    interface = ServedInterface

    def __init__(self, session: Session, *, max_tries: int,
                 journal: Journal | None = None, pause: Pause | None = None) -> None:
        """``journal``: a volatile driver's (redone in each fresh driver), or, with
        ``pause``, that of a driver whose image is checked (redone in the fresh
        driver of a rollback: ``nooks.fs.checkpointed``)."""
        self.session = session
        self.max_tries = max_tries
        self.journal = journal
        self.pause = pause
        self._rolling_back = False  # the recovery under way is a checkpoint's rollback
        self._this_rollback = False  # (as the recovery under way read it)
        self._rewind: Callable[[], object] | None = None
        self.stand_in = StandIn(session)  # (while no driver could be brought back)
        self.domain: Domain | None = None
        self.shadow: Shadow[DirectSpec] | None = None
        self.resent = 0  # requests given back to the kernel (as far as the record shows)
        self._going = threading.RLock()  # (go_first against a recovery's go)
        self._restarting = False
        self.poisoned = 0
        self._tries: dict[int, int] = {}  # a request's id: drivers it was in flight with

    def prepare_restart(self) -> None:
        self.stand_in.stop()  # (the fresh driver serves what comes from here)
        with self._going:
            self._restarting = True  # (from here, the recovery says go: go_first won't)
        self._dead_gone()
        self._this_rollback = self._rolling_back  # (read once: replay redoes if so)
        if self._this_rollback and self._rewind is not None:
            self._rewind()  # (the image as at the checkpoint; the dead domain wrote last)
        report = self.domain.report if self.domain is not None else None
        if report is not None and report.detail.startswith("Suspect:") \
                and self.shadow is not None:
            self.shadow.second_opinions_asked += 1  # (its answer was doubted)
        conn = self.session.conn
        assert conn is not None
        record = self.session.inflight
        taken = record.taken()
        if taken:  # (none: this driver failed before it read one; counts stand)
            # a request counts the drivers that failed with it in flight, in a row
            tries = {t.unique & ~RESEND: self._tries.get(t.unique & ~RESEND, 0) + 1
                     for t in taken}
            self._tries = tries
        for t in taken:
            key = t.unique & ~RESEND
            if self._tries.get(key, 0) >= self.max_tries or not conn.can_resend:
                self._answer_eio(t.unique, t.opcode, f"failed {self.max_tries} drivers"
                                 if conn.can_resend else "cannot be sent again")
                self._tries.pop(key, None)
            else:
                self.resent += 1
            # given back (or answered): a fresh driver's own record starts empty, and
            # what it takes again is counted again (a stale entry would look hung)
            record.done(t.slot)
        if conn.can_resend:
            conn.resend()

    def reinit(self, domain: Domain) -> None:
        domain.call("init", ROOT_CTX, "/")  # (as mfusepy, when it mounts)

    def replay(self, domain: Domain) -> int:
        """A volatile driver's journal (or, in a rollback, the journal since the
        checkpoint), redone; then the fresh domain may serve."""
        redo = self.journal is not None and (not self.journal.since_checkpoint
                                             or self._this_rollback)
        handles = self.journal.redo(domain.call) if redo and self.journal is not None else {}
        self.go(domain, handles)
        return len(self.journal) if redo and self.journal is not None else 0

    def rewinds_with(self, rewind: Callable[[], object]) -> None:
        """How a rollback puts the image back as it was at the checkpoint."""
        self._rewind = rewind

    @contextlib.contextmanager
    def rolling_back(self) -> Iterator[None]:
        """The recovery made inside is a rollback to the last checkpoint: each fresh
        driver starts from the checkpoint's image and redoes the journal since."""
        self._rolling_back = True
        try:
            yield
        finally:
            self._rolling_back = False

    def go(self, domain: Domain, handles: dict[int, int] | None = None) -> None:
        """Let the current domain serve (its driver's ``init`` has been called)."""
        assert self.session.conn is not None
        journaled, written = self.journal.handed() if self.journal is not None else ([], [])
        domain.call("served_go", bool(self.session.conn.can_resend), handles or {},
                    journaled, written)
        with self._going:
            self._restarting = False

    def go_first(self, domain: Domain, first: Incarnation | None) -> None:
        """Let the first domain serve, unless a recovery has begun since its ``init``
        (``first``: the incarnation it was called in): the fresh domain is then the
        recovery's to start, once its driver is given ``init`` and the journal."""
        with self._going:
            if not self._restarting and first is not None and domain.current is first:
                self.go(domain)

    def _answer_eio(self, unique: int, opcode: int, why: str) -> None:
        assert self.session.conn is not None
        log.error("request %d (opcode %d) %s: answered EIO", unique & ~RESEND, opcode, why)
        self.poisoned += 1
        if self.shadow is not None:
            self.shadow.poisoned += 1
        with contextlib.suppress(OSError):  # (its caller was interrupted: gone)
            os.write(self.session.conn.fd, kp.reply(unique, error=errno.EIO))

    def _dead_gone(self) -> None:
        """Wait until the failed domain's process has exited: until then it may still
        read a request the kernel is about to be told to send again."""
        inc = self.domain.current if self.domain is not None else None
        if inc is None or inc.proc is None:
            return
        inc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            inc.proc.wait(DEAD_WAIT)

    def close(self) -> None:
        self.stand_in.stop()
        if self.journal is not None:
            self.journal.close()

    def status(self) -> dict[str, Any]:
        journal = self.journal.status() if self.journal is not None else {}
        return {**journal, "direct": {"resent": self.resent,
                                      "answered_eio_while_down": self.stand_in.answered,
                                      "in_flight": [
            {"unique": t.unique & ~RESEND, "opcode": t.opcode}
            for t in self.session.inflight.taken()]}}


class StandIn:
    """Answers the kernel while no driver can be brought back (the engine's recovery
    failed; it tries again after a pause): every request gets EIO at once, as in host
    mode, instead of waiting in the kernel, uninterruptibly, for a server that may
    never come. Stopped before each fresh driver is built."""

    POLL_MS = 50  # how soon a stop is seen

    def __init__(self, session: Session) -> None:
        self.session = session
        self.answered = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._stop.clear()
                self._thread = threading.Thread(target=self._run, name="nooks-direct-stand-in",
                                                daemon=True)
                self._thread.start()

    def stop(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is not None:
                self._stop.set()
                thread.join()
                self.session.forget_tables()

    def _run(self) -> None:
        import select

        conn = self.session.conn
        if conn is None:
            return
        buf = bytearray(BUFFER)
        p = select.poll()
        p.register(conn.fd, select.POLLIN)
        while not self._stop.is_set():
            try:
                if not p.poll(self.POLL_MS) or self._stop.is_set():
                    continue
                n = os.readv(conn.fd, [buf])
            except OSError as e:
                if e.errno in (errno.EINTR, errno.ENOENT, errno.EAGAIN):
                    continue
                return  # (ENODEV: unmounted)
            try:
                op, unique, node = kp.header(buf, n)[:3]
            except kp.Malformed:
                continue
            if op in NO_REPLY:
                with contextlib.suppress(kp.Malformed):
                    self._forgotten(op, node, buf, n)
                continue
            error = errno.EIO
            if op in (kp.Op.RELEASE, kp.Op.RELEASEDIR):
                # (the kernel has closed it: the next driver must not think it open)
                with contextlib.suppress(kp.Malformed):
                    self.session.tables().handles.closed(kp.args(kp.RELEASE_IN, buf, n)[0])
                error = 0
            body = kp.reply(unique, error=error)
            with contextlib.suppress(OSError):  # (its caller was interrupted: gone)
                os.write(conn.fd, body)
                self.answered += 1

    def _forgotten(self, op: int, node: int, buf: bytearray, n: int) -> None:
        if op != kp.Op.INTERRUPT:
            nodes = self.session.tables().nodes
            for nodeid, nlookup in kp.forgets(op, node, buf, n):
                nodes.forget(nodeid, nlookup)


def _guard(shadow: Shadow[Any]) -> contextlib.AbstractContextManager[Any]:
    """What a recovery holds while it runs (a checkpoint's lock: a fresh driver must not
    start serving while the image is checked, nor in the middle of a rollback)."""
    return shadow.idle_guard if shadow.idle_guard is not None else contextlib.nullcontext()


# requests the kernel wants no answer to
NO_REPLY = frozenset({kp.Op.FORGET, kp.Op.BATCH_FORGET, kp.Op.INTERRUPT})


class Watch:
    """Sees a hung driver from the in-flight record: a request older than
    ``deadline`` condemns it (*hung*), and the engine recovers it."""

    def __init__(self, spec: DirectSpec, deadline: float) -> None:
        self.spec = spec
        self.deadline_ms = int(deadline * 1000)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nooks-direct-watch",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        interval = min(max(self.deadline_ms / 10_000, 0.01), 0.5)
        excused_for: int | None = None  # the oldest request in flight, and how long of
        excused_ms = 0.0  # its time the host spent on its kernel calls (about)
        while not self._stop.wait(interval):
            domain, shadow = self.spec.domain, self.spec.shadow
            if domain is None or shadow is None:
                continue
            if shadow.dead is not None:  # (no request comes through the engine to try)
                self.spec.stand_in.start()  # (meanwhile, requests are answered EIO)
                shadow.revive(domain.failures[-1] if domain.failures else None)
                continue
            inc, generation = domain.current, shadow.generation
            if inc is None:
                continue  # (being replaced)
            if not inc.alive and inc.report is not None and shadow.mode == "passive":
                # it failed and nobody is recovering it (a failure seen while the last
                # recovery was ending): recover it now -- not during a checkpoint
                with _guard(shadow):
                    shadow.recover_now(inc.report, generation)
                continue
            record = self.spec.session.inflight
            taken = record.taken()
            oldest = min((t.unique for t in taken), default=None)
            if oldest != excused_for:
                excused_for, excused_ms = oldest, 0.0
            if inc.pending_kernel_calls or (self.spec.pause is not None
                                            and self.spec.pause.held):
                # the host is serving the driver's kernel call (a slow fsync of the
                # image), or a checkpoint holds it: that time is not the driver's, as host
                # mode extends a deadline
                excused_ms += interval * 1000
                continue
            age = record.oldest_age_ms(int(time.monotonic() * 1000))
            if age is None or age - excused_ms <= self.deadline_ms \
                    or domain.current is not inc:
                continue
            what = kp.Op(taken[0].opcode).name.lower() if taken and \
                taken[0].opcode in kp.Op._value2member_map_ else "a request"
            try:
                if domain.current is not inc:
                    continue  # (replaced meanwhile: the record was the old one's)
                report = domain.condemn(f"no answer within the deadline "
                                        f"({self.deadline_ms / 1000:g} s)", what,
                                        FailureKind.HUNG)
            except Exception:  # (being replaced or closed: whoever does so knows)
                continue
            with _guard(shadow):
                shadow.recover_now(report, generation)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(5.0)
