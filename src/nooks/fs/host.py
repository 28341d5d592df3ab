"""A running filesystem host: driver domain, shadow, FUSE mount, control socket.

``FsHost.run`` mounts and serves until the mount is unmounted (or SIGINT /
SIGTERM unmount it), then tears everything down. In native mode the driver is
constructed in this process and called directly: no domain, no shadow, so its
failures are this process's failures, which is what native mode shows.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import logging
import os
import threading
import time
from typing import Any

from nooks.control import ControlServer
from nooks.domain import harden
from nooks.domain.config import FAULTS, FaultPlan
from nooks.domain.host import Domain
from nooks.domain.native import NativeDomain
from nooks.domain.spec import Limits
from nooks.errors import DomainFailed, FailureReport
from nooks.faults import Fault, LineRecorder, loader
from nooks.fs import bridge
from nooks.fs.beneath import Beneath
from nooks.fs.blockdev import UndoLog
from nooks.fs.consistency import Checkpoints, preflight
from nooks.fs.drivers import FsDriver
from nooks.shadow.engine import Recovery, Shadow
from nooks.shadow.fs import ROOT_CTX, FsShadow

log = logging.getLogger(__name__)


class FsHost:
    def __init__(self, driver: FsDriver, mountpoint: str, *, name: str | None = None,
                 native: bool = False, threads: bool = False, deadline: float = 10.0,
                 block_timeout: float = 60.0, max_tries: int = 3, volatile: bool | None = None,
                 limits: Limits | None = None, options: dict[str, Any] | None = None,
                 on_ready: Any = None, fault: FaultPlan | None = None,
                 record_lines: str | None = None, check_interval: float = 1.0) -> None:
        self.driver = driver
        self.mountpoint = os.path.realpath(mountpoint)
        self.name = name or self.mountpoint
        self.native = native
        self.threads = threads
        self.options = options or {}
        self.on_ready = on_ready
        self.started = time.time()
        self._pending_fault: str | None = None
        self.domain: Domain | None = None
        self.nat: NativeDomain | None = None
        self.shadow: Shadow | None = None
        self.checkpoints: Checkpoints | None = None
        self.unchecked: str | None = None  # why a checkable image is not checked
        self.kernel_cache = bridge.KernelCache()
        self._undo: UndoLog | None = None
        self.fault_site: str | None = None
        self.start_failures: list[FailureReport] = []
        self._recorder: LineRecorder | None = None
        self._record_lines = record_lines
        self.beneath: Beneath | None = None
        self._lock_fd = _lock_image(driver.image) if driver.image is not None else -1
        try:
            self._start(driver, native=native, deadline=deadline, block_timeout=block_timeout,
                        max_tries=max_tries, volatile=volatile, limits=limits, fault=fault,
                        record_lines=record_lines, check_interval=check_interval)
        except BaseException:
            self.close()
            raise

    def _start(self, driver: FsDriver, *, native: bool, deadline: float,
               block_timeout: float, max_tries: int, volatile: bool | None,
               limits: Limits | None, fault: FaultPlan | None, record_lines: str | None,
               check_interval: float) -> None:
        label = driver.target.rpartition(":")[2].lower()
        if native:
            if fault is not None:
                loader.install(fault.module, Fault(fault.kind, fault.seed),
                               set(fault.lines) if fault.lines is not None else None)
            if record_lines is not None:
                source = importlib.util.find_spec(driver.module)
                if source is None or source.origin is None:
                    raise ValueError(f"cannot find the source of {driver.module}")
                self._recorder = LineRecorder(source.origin)
            self.nat = NativeDomain(driver.native_spec(name=label))
            if fault is not None:
                site = loader.last_site()
                self.fault_site = (f"{site.kind} at line {site.line} in {site.function}: "
                                   f"{site.what}") if site else "the faulty module was not loaded"
            self._call = self._native_call
        else:
            checked = driver.image is not None and bool(driver.checker) and check_interval > 0
            if checked:
                assert driver.image is not None
                self.unchecked = preflight(driver.checker, driver.image)
                if self.unchecked is not None:
                    log.warning("%s: not checking consistency: %s", self.name, self.unchecked)
                    checked = False
            if checked:
                assert driver.image is not None
                self._undo = UndoLog(driver.image)
            spec = driver.spec(name=label, deadline=deadline, limits=limits or Limits(),
                               fault=fault, undo=self._undo, hide=(self.mountpoint,))
            self.domain = Domain(spec, start=False)
            self._start_domain(max_tries)
            fs = FsShadow(volatile=driver.volatile if volatile is None else volatile,
                          journaled=checked)
            self.shadow = Shadow(self.domain, fs, max_tries=max_tries,
                                 block_timeout=block_timeout, on_recovery=self._recovered)
            self.domain.on_idle_failure = self._idle_failure
            self.fault_site = self.domain.fault_site
            self._call = self.shadow.call
            if self._undo is not None:
                assert driver.image is not None
                self.checkpoints = Checkpoints(
                    image=driver.image, command=driver.checker, shadow=self.shadow, fs=fs,
                    domain=self.domain, undo=self._undo, name=self.name,
                    interval=check_interval, invalidate=self.kernel_cache.invalidate)
                self._call = self.checkpoints.call
        # asked of the driver itself: one that answers wrongly has not started
        ask = self.domain.call if self.domain is not None else self._call
        self.implemented: list[str] = ask("implemented")
        self.use_ns: bool = ask("uses_ns")
        if self.shadow is not None and isinstance(self.shadow.spec, FsShadow):
            # what the mount will cover, for a recovering driver that looks at it
            self.beneath = Beneath(self.mountpoint, self.use_ns)
            self.shadow.spec.beneath = self.beneath.answer

    def _start_domain(self, tries: int) -> None:
        """Start the driver; one that fails while loading is started again (from its
        code on disk), as the shadow would restart it later, up to ``tries`` times."""
        assert self.domain is not None
        for attempt in range(tries):
            try:
                self.domain.start()
                return
            except DomainFailed as e:
                self.start_failures.append(e.report)
                log.warning("%s: driver failed while starting (%s)", self.name, e.report)
                if attempt == tries - 1:
                    raise

    # -- requests ------------------------------------------------------------------------

    def _native_call(self, op: str, *args: Any) -> Any:
        fault, self._pending_fault = self._pending_fault, None
        if fault is not None:
            from nooks.domain.child import inject

            inject(fault)
        assert self.nat is not None
        return self.nat.call(op, *args)

    def _recovered(self, rec: Recovery) -> None:
        if rec.ok:
            log.warning("%s: driver %s (%s) during %s; recovered in %.1f ms, %d replayed",
                        self.name, rec.kind, rec.detail, rec.call, rec.duration_ms,
                        rec.replayed)
        else:
            log.error("%s: driver %s (%s) during %s; NOT recovered: requests fail with EIO "
                      "until a later attempt brings it back", self.name, rec.kind, rec.detail,
                      rec.call)

    def _idle_failure(self, report: FailureReport) -> None:
        # the driver died with nothing in flight: recover now, not at the next request
        if self.shadow is not None:
            threading.Thread(target=self._recover_idle, args=(report, self.shadow.generation),
                             daemon=True).start()

    def _recover_idle(self, report: FailureReport, generation: int) -> None:
        assert self.shadow is not None
        if self.checkpoints is None:
            self.shadow.recover_now(report, generation)
            return
        with self.checkpoints.lock:  # not in the middle of a checkpoint's rollback
            self.shadow.recover_now(report, generation)

    # -- control -------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name, "mountpoint": self.mountpoint, "driver": self.driver.label,
            "class": "fs", "native": self.native, "host_pid": os.getpid(),
            "started": self.started, "fault_site": self.fault_site,
        }
        if self.nat is not None:
            out.update(state="live", mode="native", domain_pid=None, calls=self.nat.calls,
                       recoveries=[], poisoned=0)
            return out
        assert self.domain is not None and self.shadow is not None
        inc = self.domain.current
        out.update(
            in_flight=inc.channel.in_flight() if inc is not None else [],
            state=self.domain.state, mode=self.shadow.mode, domain_pid=self.domain.pid,
            calls=self.domain.calls, poisoned=self.shadow.poisoned,
            second_opinions=self.shadow.second_opinions_asked,
            generation=self.shadow.generation,
            open_handles=len(self.shadow.spec.handles),  # type: ignore[attr-defined]
            start_failures=[{"kind": r.kind.value, "detail": r.detail}
                            for r in self.start_failures],
            recoveries=[{"kind": r.kind, "detail": r.detail, "call": r.call, "at": r.at,
                         "duration_ms": r.duration_ms, "restart_ms": r.restart_ms,
                         "replayed": r.replayed, "ok": r.ok}
                        for r in self.shadow.recoveries],
            consistency=self.checkpoints.status() if self.checkpoints is not None
            else {"checker": " ".join(self.driver.checker), "state": f"off: {self.unchecked}"}
            if self.unchecked is not None else None,
        )
        return out

    def inject(self, fault: str, wait: bool = True) -> dict[str, Any]:
        """Make the driver fail now; what happened (the failure and its recovery), or
        NotTaken if nothing did. Natively, the fault is armed for the next request.
        Without ``wait``, the fault is sent and meets whatever request comes next."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")
        if self.native:
            self._pending_fault = fault
            return {"injected": fault, "armed": True}
        assert self.shadow is not None
        return {"injected": fault,
                **self.shadow.inject(fault, wait=wait, recover=self._recover_idle)}

    def _control(self, req: dict[str, Any]) -> Any:
        cmd = req["cmd"]
        if cmd == "status":
            return self.status()
        if cmd == "settle":
            # wait until the warm spare is up, so that the next recovery is a warm one
            if self.domain is not None:
                self.domain.wait_spare()
            return {"settled": True}
        if cmd == "checkpoint":
            # check the image now (as before an unmount); a rollback shows in status
            if self.checkpoints is None or self.checkpoints.off is not None:
                return {"checked": False}
            return {"checked": True, "consistent": self.checkpoints.checkpoint()}
        if cmd == "inject":
            fault = req.get("fault")
            if not isinstance(fault, str):
                raise ValueError("inject needs a string 'fault'")
            return self.inject(fault, wait=req.get("wait", True) is not False)
        raise ValueError(f"unknown command {cmd!r}")

    # -- running -------------------------------------------------------------------------

    def _destroying(self) -> None:
        self.kernel_cache.forget()
        if self.checkpoints is not None:
            self.checkpoints.unmounting()

    def _closed(self, op: str, ctx: Any, path: str, fh: int) -> int:
        """The kernel released a handle the driver does not release itself."""
        assert self.shadow is not None and isinstance(self.shadow.spec, FsShadow)
        self.shadow.spec.forget_handle(fh)
        return 0

    def _init(self) -> None:
        self.kernel_cache.capture()
        self._call("init", ROOT_CTX, "/")
        if self.on_ready is not None:
            self.on_ready()

    def run(self) -> None:
        """Mount and serve until unmounted."""
        harden.protect_host()
        control = ControlServer(self.name, self._control,
                                info={"class": "fs", "mountpoint": self.mountpoint,
                                      "driver": self.driver.label})
        try:
            ops = bridge.make_operations(
                self._call, self.implemented, self.use_ns, on_init=self._init,
                on_destroy=self._destroying,
                on_close=self._closed if self.shadow is not None else None)
            fsname = f"nooks-{self.driver.target.rpartition(':')[2].lower()}"
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
            control.close()
            self.close()

    def close(self) -> None:
        if self.checkpoints is not None:
            self.checkpoints.close()
        if self.beneath is not None:
            self.beneath.close()
        if self.domain is not None:
            self.domain.close()
        if self._undo is not None:
            self._undo.close()
        if self.shadow is not None and isinstance(self.shadow.spec, FsShadow):
            self.shadow.spec.close()
        if self.nat is not None:
            self.nat.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # the image is free for another mount
            self._lock_fd = -1


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
