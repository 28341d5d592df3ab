"""A running filesystem host: driver domain, shadow, FUSE mount, control socket.

``FsHost.run`` mounts and serves until the mount is unmounted (or SIGINT /
SIGTERM unmount it), then tears everything down. In native mode the driver is
constructed in this process and called directly: no domain, no shadow, so its
failures are this process's failures, which is what native mode shows.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import logging
import os
import signal
import threading
from typing import Any

from nooks.domain import harden
from nooks.domain.config import FaultPlan
from nooks.domain.host import Domain
from nooks.domain.spec import Limits
from nooks.errors import DomainDown, DomainFailed, Unavailable
from nooks.faults import LineRecorder
from nooks.fs import bridge
from nooks.fs.beneath import Beneath
from nooks.fs.blockdev import UndoLog
from nooks.fs.checkpointed import DirectJournal, Pause
from nooks.fs.consistency import Checkpoints, preflight
from nooks.fs.direct import DirectSpec, Session, Watch
from nooks.fs.drivers import FsDriver, Served
from nooks.fs.journal import Journal
from nooks.fs.spec import ROOT_CTX, FsShadow
from nooks.shadow.engine import Shadow
from nooks.shadow.supervised import Supervised, SupervisedHost

log = logging.getLogger(__name__)


class FsHost(SupervisedHost):
    kind = "fs"

    def __init__(self, driver: FsDriver, mountpoint: str, *, name: str | None = None,
                 native: bool = False, threads: bool = False, deadline: float = 10.0,
                 block_timeout: float = 60.0, max_tries: int = 3, volatile: bool | None = None,
                 limits: Limits | None = None, options: dict[str, Any] | None = None,
                 on_ready: Any = None, fault: FaultPlan | None = None,
                 record_lines: str | None = None, check_interval: float = 1.0,
                 mode: str = "host") -> None:
        """``mode``: "host" (every request through the host, which checks each answer
        from outside the driver's process) or "direct" (the domain serves the mount
        itself: ``nooks.fs.direct``); native mode has neither."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}: give one of {', '.join(MODES)}")
        mountpoint = os.path.realpath(mountpoint)
        super().__init__(name or mountpoint)
        self.driver = driver
        self.mountpoint = mountpoint
        self.native = native
        self.threads = threads
        self.options = options or {}
        self.on_ready = on_ready
        self.sup: Supervised[Any] | None = None  # (FsShadow; direct mode: DirectSpec)
        self.checkpoints: Checkpoints | None = None
        self.unchecked: str | None = None  # why a checkable image is not checked
        self.kernel_cache = bridge.KernelCache()
        self._undo: UndoLog | None = None
        self._recorder: LineRecorder | None = None
        self._record_lines = record_lines
        self.beneath: Beneath | None = None
        self.mode = "native" if native else mode
        self.session: Session | None = None  # direct mode's connection and memory
        self.direct: DirectSpec | None = None
        self._watch: Watch | None = None
        self._stop = threading.Event()
        self._lock_fd = _lock_image(driver.image) if driver.image is not None else -1
        self.commands["checkpoint"] = self._checkpoint_now
        try:
            self._start(driver, native=native, deadline=deadline, block_timeout=block_timeout,
                        max_tries=max_tries, volatile=volatile, limits=limits, fault=fault,
                        record_lines=record_lines, check_interval=check_interval)
        except BaseException:
            self.close()
            raise

    @property
    def shadow(self) -> Shadow[Any] | None:
        return self.sup.shadow if self.sup is not None else None

    @property
    def domain(self) -> Domain | None:
        return self.sup.domain if self.sup is not None else None

    def _start(self, driver: FsDriver, *, native: bool, deadline: float,
               block_timeout: float, max_tries: int, volatile: bool | None,
               limits: Limits | None, fault: FaultPlan | None, record_lines: str | None,
               check_interval: float) -> None:
        label = driver.target.rpartition(":")[2].lower()
        if self.mode == "direct":
            self._start_direct(driver, label, deadline=deadline, max_tries=max_tries,
                               volatile=volatile, limits=limits, fault=fault,
                               block_timeout=block_timeout, check_interval=check_interval)
            return
        checked = not native and self._checkable(driver, check_interval)
        if native and record_lines is not None:
            source = importlib.util.find_spec(driver.module)
            if source is None or source.origin is None:
                raise ValueError(f"cannot find the source of {driver.module}")
            self._recorder = LineRecorder(source.origin)
        fs = FsShadow(volatile=driver.volatile if volatile is None else volatile,
                      journaled=checked)
        spec = driver.native_spec(name=label) if native else \
            driver.spec(name=label, deadline=deadline, limits=limits or Limits(), fault=fault,
                        undo=self._undo, hide=(self.mountpoint,))
        try:
            self.sup = Supervised(spec, fs, native=native, fault=fault if native else None,
                                  start_tries=max_tries, max_tries=max_tries,
                                  block_timeout=block_timeout, host=self.name)
        except BaseException:
            fs.close()
            raise
        self.supervised = [self.sup]
        self._call = self.sup.call
        if self.sup.shadow is not None and self._undo is not None:
            assert driver.image is not None and self.sup.domain is not None
            self.checkpoints = Checkpoints(
                image=driver.image, command=driver.checker, shadow=self.sup.shadow, fs=fs,
                domain=self.sup.domain, undo=self._undo, name=self.name,
                interval=check_interval, invalidate=self.kernel_cache.invalidate)
            # not in the middle of a checkpoint's rollback
            self.sup.shadow.idle_guard = self.checkpoints.lock
            self._call = self.checkpoints.call
        # asked of the driver itself: one that answers wrongly has not started
        self.implemented: list[str] = self.sup.ask("implemented")
        self.use_ns: bool = self.sup.ask("uses_ns")
        if self.sup.shadow is not None:
            # what the mount will cover, for a recovering driver that looks at it
            self.beneath = Beneath(self.mountpoint, self.use_ns)
            fs.beneath = self.beneath.answer

    def _start_direct(self, driver: FsDriver, label: str, *, deadline: float,
                      max_tries: int, volatile: bool | None, limits: Limits | None,
                      fault: FaultPlan | None, block_timeout: float,
                      check_interval: float) -> None:
        volatile = driver.volatile if volatile is None else volatile
        checked = not volatile and self._checkable(driver, check_interval)
        self.session = Session(self.mountpoint, _fsname(driver), self.options)
        pause = Pause() if checked else None
        journal = Journal() if volatile else Journal(since_checkpoint=True) if checked \
            else None
        served = Served(self.session.regions(), self.session.descriptors(),
                        self.session.serving, self.session.attr_timeout, self.session.entry_timeout,
                        self.session.direct_io, self.session.hard_remove, journal, pause)
        spec = driver.spec(name=label, deadline=deadline, limits=limits or Limits(),
                           fault=fault, undo=self._undo, hide=(self.mountpoint,),
                           served=served)
        self.direct = DirectSpec(self.session, max_tries=max_tries, journal=journal,
                                 pause=pause)
        self.sup = Supervised(spec, self.direct, start_tries=max_tries, max_tries=max_tries,
                              block_timeout=block_timeout, host=self.name)
        self.supervised = [self.sup]
        self._call = self.sup.call
        self.direct.domain, self.direct.shadow = self.sup.domain, self.sup.shadow
        if pause is not None and journal is not None and self.sup.shadow is not None:
            assert driver.image is not None and self._undo is not None
            assert self.sup.domain is not None
            pause.domain = self.sup.domain
            self.checkpoints = checkpoints = Checkpoints(
                image=driver.image, command=driver.checker, shadow=self.sup.shadow,
                fs=DirectJournal(journal, pause, self.direct), domain=self.sup.domain,
                undo=self._undo, name=self.name, interval=check_interval,
                invalidate=self.session.invalidate, hold=pause.hold,
                let_go=pause.let_go_waiting)
            pause.wake = lambda: checkpoints.wake("re-open")
            journal.wake = lambda: checkpoints.wake("journal size")
            # a recovery of a driver that failed while idle waits for a checkpoint
            # under way (and is not in the middle of a rollback's)
            self.sup.shadow.idle_guard = checkpoints.lock
        self._watch = Watch(self.direct, deadline)

    def _checkable(self, driver: FsDriver, check_interval: float) -> bool:
        """Whether the image is checked at checkpoints (then the undo log is made)."""
        if driver.image is None or not driver.checker or check_interval <= 0:
            return False
        self.unchecked = preflight(driver.checker, driver.image)
        if self.unchecked is not None:
            log.warning("%s: not checking consistency: %s", self.name, self.unchecked)
            return False
        self._undo = UndoLog(driver.image)
        return True

    # -- control -------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        return {"mountpoint": self.mountpoint, "driver": self.driver.label}

    def status(self) -> dict[str, Any]:
        out = {**self.base_status(), "mountpoint": self.mountpoint,
               "driver": self.driver.label, "serving": self.mode}
        if self.sup is not None and self.sup.shadow is not None:
            out["consistency"] = self.checkpoints.status() if self.checkpoints is not None \
                else {"checker": " ".join(self.driver.checker),
                      "state": f"off: {self.unchecked}"} if self.unchecked is not None \
                else None
        return out

    def _checkpoint_now(self, req: dict[str, Any]) -> dict[str, Any]:
        """Check the image now (as before an unmount); a rollback shows in status."""
        if self.checkpoints is None or self.checkpoints.off is not None:
            return {"checked": False}
        return {"checked": True, "consistent": self.checkpoints.checkpoint()}

    # -- running -------------------------------------------------------------------------

    def _destroying(self) -> None:
        self.kernel_cache.forget()
        if self.checkpoints is not None:
            self.checkpoints.unmounting()

    def _closed(self, op: str, ctx: Any, path: str, fh: int) -> int:
        """The kernel released a handle the driver does not release itself."""
        assert self.sup is not None
        self.sup.spec.forget_handle(fh)
        return 0

    def _init(self) -> None:
        self.kernel_cache.capture()
        self._call("init", ROOT_CTX, "/")
        if self.on_ready is not None:
            self.on_ready()

    def run(self) -> None:
        """Mount and serve until unmounted."""
        harden.protect_host()
        if self.session is not None:
            self._run_direct()
            return
        try:
            self.open_control()
            ops = bridge.make_operations(
                self._call, self.implemented, self.use_ns, on_init=self._init,
                on_destroy=self._destroying,
                on_close=self._closed if self.shadow is not None else None)
            fsname = _fsname(self.driver)
            if self._recorder is not None:
                self._recorder.start()
            if self.checkpoints is not None:
                self.checkpoints.start()
            try:
                bridge.mount(ops, self.mountpoint, threads=self.threads, fsname=fsname,
                             options=self.options)
            finally:
                if self._recorder is not None:
                    self._recorder.stop()
                    with open(self._record_lines or os.devnull, "w") as f:
                        json.dump(sorted(self._recorder.lines), f)
        finally:
            self.close()

    def _run_direct(self) -> None:
        """Direct mode: the domain serves; the host waits for the unmount (or SIGINT,
        SIGTERM, SIGHUP: then it unmounts), then lets the driver end as mfusepy would
        (its ``destroy``)."""
        assert self.session is not None and self.sup is not None
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, lambda *_: self._stop.set())
        try:
            self.open_control()
            self.session.start()  # (the driver is built: the mount appears now)
            assert self.direct is not None and self.sup.domain is not None
            first = self.sup.domain.current
            # as mfusepy, once it has mounted; a driver that fails here is recovered,
            # and its recovery gives the fresh one init and says go
            with contextlib.suppress(DomainFailed, DomainDown, Unavailable, OSError):
                self.sup.domain.call("init", ROOT_CTX, "/")
            with contextlib.suppress(DomainFailed, DomainDown, Unavailable):
                self.direct.go_first(self.sup.domain, first)
            if self.checkpoints is not None:
                self.checkpoints.start()
            if self.on_ready is not None:
                self.on_ready()
            self.session.wait_unmounted(self._stop)
            self.session.unmount()  # (stopped by a signal: no new request, then destroy)
            if self.checkpoints is not None:
                self.checkpoints.unmounting()
                self.checkpoints.close()
            if self._watch is not None:
                self._watch.close()
            if self.sup.usable and "destroy" in self.sup.ask("implemented"):
                self._call("destroy", ROOT_CTX, "/")
        finally:
            self.close()

    def stop(self) -> None:
        """Unmount (direct mode: ``run`` returns)."""
        self._stop.set()

    def close(self) -> None:
        if self._watch is not None:
            self._watch.close()
        if self.checkpoints is not None:
            self.checkpoints.close()
        if self.beneath is not None:
            self.beneath.close()
        self.close_supervised()
        if self.session is not None:
            self.session.close()  # (unmounts, if the mount is still there)
        if self._undo is not None:
            self._undo.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # the image is free for another mount
            self._lock_fd = -1


MODES = ("host", "direct")


def _fsname(driver: FsDriver) -> str:
    return f"nooks-{driver.target.rpartition(':')[2].lower()}"


class ImageBusy(RuntimeError):
    """The image is mounted already (by another host)."""


def _lock_image(image: str) -> int:
    """An exclusive lock on ``image`` for as long as the returned fd is open; ImageBusy
    if another mount holds it (two drivers writing one image corrupt it)."""
    fd = os.open(image, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ImageBusy(f"{image} is in use by another mount") from None
    return fd
