"""A running network host: the machines, the TAP, the card and its driver.

The host makes the three machines (``nooks.net.topology``), holds the TAP device
in this machine's namespace and the card's port on the wire, and runs the
driver in a domain (or, natively, in this process). Three threads move frames:

* **transmit**: the frames the kernel sends out of the TAP (a burst: as many as
  are queued, at most ``MAX_BURST``) are given to the card's checks, then to the
  driver (``xmit``), as many at a time as the card last took (a four-slot card
  is not sent sixty-four frames to take four); when the card has no room the thread
  waits for ``tx_wake`` — at most ``WATCHDOG`` seconds (``UNRECLAIMED`` if the
  card has sent every frame the driver took: its ring is free), then the driver counts
  as hung (Linux's ``tx_timeout``) and is recovered;
* **receive**: a frame arriving on the wire goes into the card's ring (the card
  raises its line);
* **interrupt**: each time the line rises, the driver's ``interrupt`` is called,
  again while the line stays up (NAPI-style: one call does all the work
  pending; what it writes to the card's doorbells is posted with its reply).

The TAP's address is the card's (what ``probe`` read). Carrier stays up while a
driver recovers: the system sees a link that paused, not one that went away;
frames the kernel sends meanwhile wait in its queue and in the shadow's.
"""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import json
import logging
import os
import select
import signal
import threading
import time
from typing import Any

from pyroute2 import NetNS

from nooks.domain.config import FaultPlan
from nooks.domain.spec import DriverSpec, Limits
from nooks.errors import Closed, FailureKind, NooksError
from nooks.faults import LineRecorder
from nooks.hw.netdev import Info
from nooks.hw.wire import Wire
from nooks.net.card import FAMILIES, Card, Refused
from nooks.net.follow import Follower, LinkConfig
from nooks.net.interface import NetInterface, NetKernelInterface
from nooks.net.kernel import NetKernel
from nooks.net.spec import FramePoisoned, NetShadow
from nooks.net.tap import Tap
from nooks.net.topology import WIRE_IF, Plan, Topology
from nooks.shadow.supervised import Supervised, SupervisedHost

log = logging.getLogger(__name__)

# each driver and the card it drives
DRIVERS = {"ne2000": ("nooks.drivers.ne2000:Ne2000", "ne2000"),
           "rtl8139": ("nooks.drivers.rtl8139:Rtl8139", "rtl8139"),
           "e1000": ("nooks.drivers.e1000:E1000", "e1000"),
           "virtio-net": ("nooks.drivers.virtio_net:VirtioNet", "virtio")}
MAX_BURST = 64  # frames read from the TAP and given to the driver in one call
MAX_RECALLS = 64  # handler calls in a row while the line stays up
# runs of MAX_RECALLS calls in a row, the line up throughout and the card idle, after
# which the driver is hung: it does not acknowledge its interrupts (Linux's "nobody
# cared"); a working handler acknowledges them or moves the card
STORMS = 2
MAX_TAKEN = 1024  # frames the driver took remembered, for a recovery
# seconds a card may take no frame for this machine's own address or broadcasts
# (a working card takes some: a short wait spares the system's neighbour
# resolution, which gives up after three tries a second apart)
MISFILTERED = 0.5
WATCHDOG = 2.0  # seconds the transmit queue may stay full before the driver is hung
# seconds a frame the driver took may stay unsent (a card sends at the doorbell: a
# driver that took a frame and rang no bell, or set up its ring wrong, lost it; the
# system's neighbour resolution and a ping's deadline do not wait two seconds)
UNSENT = 0.2
# seconds the transmit queue may stay full while the card has sent every frame the
# driver took and an interrupt handler has run since (a working driver reclaims
# its ring in the handler, or in its next ``xmit``)
UNRECLAIMED = 0.1
# seconds a received frame may stay in the ring after an interrupt handler that
# began after it came has returned (a working driver's poll takes all there is)
PASSED_OVER = 0.2
POLL = 0.1  # seconds the threads wait before looking whether the host is stopping
BLOCK_TIMEOUT = 10.0  # seconds a call may wait for a recovering driver
DEFAULT_MAC = bytes.fromhex("525400000001")
# microseconds the domain polls for the next call while calls stream (a frame every
# few hundred microseconds would otherwise wake its sleeping CPU each time)
BUSY_SPIN_US = 2000.0


class _Stop(Exception):
    pass


class NetHost(SupervisedHost):
    kind = "net"

    def __init__(self, driver: str, plan: Plan, *, native: bool = False,
                 deadline: float = 2.0, mac: bytes = DEFAULT_MAC,
                 limits: Limits | None = None, fault: FaultPlan | None = None,
                 max_tries: int = 3, on_ready: Any = None,
                 record_lines: str | None = None) -> None:
        if driver not in DRIVERS:
            raise ValueError(f"no network driver {driver!r} (known: {', '.join(DRIVERS)})")
        if record_lines is not None and not native:
            raise ValueError("lines are recorded natively only (the driver in this process)")
        super().__init__(plan.name)
        self._record_lines = record_lines
        self._recorder: LineRecorder | None = None
        if record_lines is not None:  # (the campaign's dry run: which lines the driver runs)
            self._recorder = LineRecorder(_source(DRIVERS[driver][0].partition(":")[0]))
            self._recorder.start()
        self.driver = driver
        self.native = native
        self.on_ready = on_ready
        self._stopping = threading.Event()
        self._irq = threading.Event()
        self._tx_room = threading.Event()
        self._offer = MAX_BURST  # frames offered in one call: what the card last took
        self._serial = threading.Lock() if native else None
        self._in_flight: list[bytes] = []  # the burst the driver is being asked to send
        # frames the driver took (a failed one may have taken some and never sent them)
        self._taken: collections.deque[bytes] = collections.deque(maxlen=MAX_TAKEN)
        self._resend: collections.deque[bytes] = collections.deque()  # taken, lost
        self._threads: list[threading.Thread] = []
        self.counts = {"tx_frames": 0, "tx_dropped": 0, "rx_frames": 0, "rx_oversized": 0,
                       "watchdog": 0, "stalls": 0, "refused": 0, "rx_errors": 0,
                       "rx_undeliverable": 0}
        target, family = DRIVERS[driver]
        offloads = FAMILIES[family].offloads
        self.topology = Topology(plan, offloads=offloads)
        self.tap: Tap | None = None
        self.wire: Wire | None = None
        self.card: Card | None = None
        self.sup: Supervised[NetShadow] | None = None
        self.follower: Follower | None = None
        try:
            self.tap = Tap(self.topology.this, plan.ifname, offloads=offloads)
            self.wire = Wire(self.topology.wire, WIRE_IF, offloads=offloads)
            card = self.card = Card(family, mac, self.wire.send, self._irq.set)
            self._pending: list[bytes] = []
            self.spec = NetShadow(reset=self._reset_card)
            ds = DriverSpec(target=target, interface=NetInterface,
                            kernel=NetKernelInterface,
                            kernel_impl=lambda ctx: NetKernel(self, card, ctx),
                            name=driver, deadline=deadline, limits=limits or Limits(),
                            regions=self.card.regions(), fault=fault,
                            busy_spin_us=BUSY_SPIN_US)
            self.sup = Supervised(ds, self.spec, native=native,
                                  fault=fault if native else None, start_tries=max_tries,
                                  max_tries=max_tries, block_timeout=BLOCK_TIMEOUT,
                                  host=self.name,
                                  on_recovery=self._recovered)
            self.supervised = [self.sup]
            info: Info = self._drive("probe")
            self._address(info.mac)
            self.topology.configure_tap(self.tap.ifname, self.tap.mtu)
            self._drive("open")
            self.card.restart_clocks()  # (what came while it was opened is not counted)
            # from now on what the system sets on its interface reaches the driver; the
            # first look (address, MTU, receive mode, groups) before anything is served
            self.follower = Follower(self.topology.this, plan.ifname, self._config)
            self.follower.start()
            if not self.follower.seen():
                raise RuntimeError("the interface's configuration could not be read")
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return (f"<NetHost {self.name} {self.driver} {'native' if self.native else 'nooks'} "
                f"{self.counts} {self.card!r}>")

    def _address(self, mac: bytes) -> None:
        assert self.tap is not None and self.card is not None
        self.card.own = (mac,)
        with NetNS(self.topology.this) as ns:
            ns.link("set", index=ns.link_lookup(ifname=self.tap.ifname)[0],
                    address=mac.hex(":"))

    def _drive(self, op: str, *args: Any) -> Any:
        """Call the driver. Its calls reach it one at a time, as in its domain; natively
        too (the threads here would otherwise race in a driver written for that)."""
        assert self.sup is not None
        if self._serial is None:
            return self.sup.call(op, *args)
        with self._serial:
            return self.sup.call(op, *args)

    # -- what the driver's kernel calls reach --------------------------------------------

    def pass_up(self, frame: bytes) -> None:
        tap = self.tap
        if tap is None:
            return
        if len(frame) > tap.max_frame:  # the wire's (a VLAN tag): not the driver's fault
            self.counts["rx_oversized"] += 1
            return
        try:
            tap.write(frame)
        except (OSError, ValueError):  # e.g. EIO: the interface is down; not the driver's
            self.counts["rx_undeliverable"] += 1
            return
        self.counts["rx_frames"] += 1

    def wake_tx(self) -> None:
        self._tx_room.set()

    def set_carrier(self, on: bool) -> None:
        if self.tap is not None:
            self.tap.carrier(on)

    def _config(self, cfg: LinkConfig) -> None:
        """The system changed its interface: tell the driver (through the shadow, which
        logs it for every fresh driver)."""
        spec, sup, tap, wire = self.spec, self.sup, self.tap, self.wire
        if sup is None or tap is None or wire is None:
            return
        try:
            mac = spec.mac or (spec.info.mac if spec.info is not None else None)
            if cfg.mac != mac:
                card = self.card
                if card is not None:  # both are this machine's while the change goes on
                    card.own = (*card.own, cfg.mac)
                self._drive("set_mac", cfg.mac)
                if card is not None:
                    card.own = (cfg.mac,)
            if cfg.mtu != (spec.mtu or tap.mtu):
                try:
                    self._drive("change_mtu", cfg.mtu)
                except OSError as e:
                    log.warning("%s: the driver refused MTU %d (%s); it stays %d", self.name,
                                cfg.mtu, e, tap.mtu)
                    with NetNS(self.topology.this) as ns:
                        ns.link("set", index=ns.link_lookup(ifname=tap.ifname)[0],
                                mtu=tap.mtu)
                else:
                    tap.mtu = cfg.mtu
                    wire.max_frame = cfg.mtu + 18
            mode = (cfg.promisc, cfg.allmulti, list(cfg.groups))
            if spec.rx_mode != mode:
                self._drive("set_rx_mode", *mode)
        except NooksError as e:
            log.warning("%s: a change of the interface did not reach the driver: %s",
                        self.name, e)

    # -- recovery ------------------------------------------------------------------------

    def _reset_card(self) -> None:
        """Before each fresh driver: the card powered off and on; what it had delivered
        and the old driver had not passed up is delivered again once it is open."""
        assert self.card is not None
        self._pending += self.card.reset()
        # the burst in flight is sent again by the fresh driver: the old one may have
        # put some of it on the wire already
        self.card.regive(self._in_flight)

    def _recovered(self, sup: Supervised[NetShadow], rec: Any) -> None:
        pending, self._pending = self._pending, []
        if rec.ok and self.card is not None:
            for frame in pending:
                self.card.arrived(frame)
            # frames the failed driver took and never sent go to the fresh one (those
            # not taken yet are the transmit thread's, offered to it anyway)
            unsent = {id(f) for f in self.card.unsent()}
            queued = {id(f) for f in self._resend}
            taken, self._taken = self._taken, collections.deque(maxlen=MAX_TAKEN)
            self._resend.extend(f for f in taken if id(f) in unsent and id(f) not in queued)
            self.card.restart_clocks()  # (what the recovery took is not the fresh one's)
        self._tx_room.set()
        self._irq.set()  # look at the line again

    # -- the threads ---------------------------------------------------------------------

    def _transmit(self) -> None:
        assert self.tap is not None and self.card is not None and self.sup is not None
        while not self._stopping.is_set():
            if self._resend:
                again = [self._resend.popleft() for _ in range(min(len(self._resend),
                                                                   MAX_BURST))]
                self._send(again)
                continue
            ready, _, _ = select.select([self.tap.fileno()], [], [], POLL)
            if not ready:
                continue
            try:
                burst = self.tap.read_burst(MAX_BURST)
            except OSError:
                return
            if burst:
                for frame in burst:
                    self.card.gave(frame)
                self._send(burst)

    def _send(self, frames: list[bytes]) -> None:
        """Give ``frames`` to the driver, in order, waiting for room as the card says;
        a burst that failed every driver is tried frame by frame, so that only the
        frame at fault is dropped."""
        try:
            self._sending(frames)
        finally:
            self._in_flight = []

    def _sending(self, frames: list[bytes]) -> None:
        assert self.card is not None and self.sup is not None
        waited = 0.0
        while frames and not self._stopping.is_set():
            self._tx_room.clear()
            offered = frames[:self._offer]
            self._in_flight = offered
            try:
                taken = self._call_xmit(offered)
            except FramePoisoned:
                if len(offered) == 1:
                    self.counts["tx_dropped"] += 1
                    self.card.forget(offered)
                else:
                    for frame in offered:
                        self._send([frame])
                frames = frames[len(offered):]
                continue
            except (NooksError, OSError) as e:
                self.counts["tx_dropped"] += len(frames)
                self.card.forget(frames)
                log.debug("%s: %d frames dropped: %s", self.name, len(frames), e)
                return
            if taken is None:  # dropped while the driver recovered
                self.counts["tx_dropped"] += len(frames)
                self.card.forget(frames)
                self._offer = MAX_BURST
                return
            if taken:
                taken = min(taken, len(offered))
                self.counts["tx_frames"] += taken
                frames = frames[taken:]
                waited = 0.0
                # offer what the card takes: as many as it took, more once it takes all
                self._offer = (min(MAX_BURST, 2 * self._offer) if taken == len(offered)
                               else taken)
                continue
            # the card is full: wait for room, at most the watchdog's time -- or
            # ``UNRECLAIMED`` if the card has sent every frame the driver took and an
            # interrupt handler has run since: its ring is free, and a driver that
            # still takes nothing never reclaims it
            t0 = time.monotonic()
            self._tx_room.wait(POLL)
            waited += time.monotonic() - t0
            if waited >= WATCHDOG or (waited >= UNRECLAIMED and self.card.reclaimable()):
                self.counts["watchdog"] += 1
                self._hung(f"the transmit queue stayed full for {WATCHDOG:g} s"
                           if waited >= WATCHDOG else
                           f"the driver took no frame for {UNRECLAIMED:g} s though the card "
                           "had sent every frame it took (its transmit ring is not "
                           "reclaimed)")
                waited = 0.0

    def _call_xmit(self, offered: list[bytes]) -> Any:
        """``xmit``, with ``offered`` in flight while it runs (a recovery meanwhile lets
        its frames go once more), and what the driver took remembered."""
        epoch = self.card.epoch if self.card is not None else 0
        try:
            taken = self._drive("xmit", offered)
        finally:
            self._in_flight = []
        if isinstance(taken, int) and taken > 0:
            self._taken.extend(offered[:taken])
            if self.card is not None:
                self.card.took(offered[:taken], epoch)
        return taken

    def _check_stall(self) -> None:
        """A driver that is up but has left frames unsent or received ones in its ring
        for ``WATCHDOG`` seconds, frames it took unsent for ``UNSENT`` seconds or
        received ones its handler passed over for ``PASSED_OVER``, or whose card
        took no frame for this machine for ``MISFILTERED`` seconds, has stopped
        working: it is hung (its fresh successor gets what it left)."""
        if self.card is None or self.native or not self.spec.opened:
            return
        sup = self.sup
        if sup is None or sup.shadow is None or sup.shadow.mode != "passive":
            return  # (being recovered: the fresh driver's clocks start once it is back)
        stalled = self.card.stalled(WATCHDOG, MISFILTERED, UNSENT, PASSED_OVER)
        if stalled is not None:
            self.counts["stalls"] += 1
            self._hung(stalled)

    def _serving(self) -> int | None:
        """The generation of the driver that serves calls now; None while it is being
        recovered (or natively)."""
        sup = self.sup
        shadow = sup.shadow if sup is not None else None
        if shadow is None or shadow.mode != "passive":
            return None
        return shadow.generation

    def _hung(self, detail: str) -> None:
        if self.sup is None or self.sup.domain is None or self.sup.shadow is None:
            return
        shadow = self.sup.shadow
        gen = shadow.generation  # before the kill: an idle recovery may end first
        with contextlib.suppress(NooksError):
            report = self.sup.domain.condemn(detail, "xmit", FailureKind.HUNG)
            shadow.recover_now(report, gen)

    def _receive(self) -> None:
        assert self.wire is not None and self.card is not None
        while not self._stopping.is_set():
            ready, _, _ = select.select([self.wire.fileno()], [], [], POLL)
            if not ready:
                continue
            try:
                frame = self.wire.receive()
            except OSError:
                return
            if frame is not None:
                try:
                    self.card.arrived(frame)
                except Exception:  # the card model's own bug must not stop receiving
                    self.counts["rx_errors"] += 1
                    log.exception("%s: a frame from the wire could not be taken", self.name)

    def _interrupts(self) -> None:
        assert self.card is not None and self.sup is not None
        check = time.monotonic() + POLL
        storms = 0
        while not self._stopping.is_set():
            woken = self._irq.wait(POLL)
            if time.monotonic() >= check:  # (also under traffic: the line may never rest)
                check = time.monotonic() + POLL
                self._check_stall()
            if not woken and not self.card.model.pending():
                continue  # (a line left up is served at least every POLL seconds)
            self._irq.clear()
            # while the line stays up, a bounded number of times in a row; if the driver
            # made the card move meanwhile, at once again, else after POLL at the latest
            moved = self.card.moved()
            served = 0  # calls that reached a driver up and serving
            for _ in range(MAX_RECALLS):
                if self._stopping.is_set() or not self.card.model.pending():
                    break
                began, epoch = time.monotonic(), self.card.epoch
                reached = self._serving()  # (else the shadow drops it: no handler runs)
                try:
                    self._drive("interrupt")
                    if reached is not None and reached == self._serving():
                        self.card.polled(began, epoch)
                        served += 1
                except Refused:
                    self.counts["refused"] += 1
                except (NooksError, OSError) as e:
                    log.debug("%s: an interrupt was not handled: %s", self.name, e)
                    break
            else:
                if self.card.moved() != moved:
                    self._irq.set()
                    storms = 0
                    continue
                storms = storms + 1 if served == MAX_RECALLS else 0
                if storms >= STORMS:
                    storms = 0
                    self.counts["stalls"] += 1
                    self._hung(f"the interrupt line stayed up through {STORMS * MAX_RECALLS} "
                               "handler calls in a row while the card was idle (the driver "
                               "does not acknowledge it)")
                continue
            storms = 0

    # -- control -------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        return {"driver": self.driver, "netns": self.topology.this,
                "peer_netns": self.topology.peer}

    def status(self) -> dict[str, Any]:
        out = self.base_status()
        card = self.card
        return {**out, "driver": self.driver, "netns": self.topology.this,
                "wire_netns": self.topology.wire, "peer_netns": self.topology.peer,
                "ifname": self.topology.plan.ifname, **self.counts,
                "card": {**card.model.counts, **card.counts} if card is not None else {}}

    # -- running -------------------------------------------------------------------------

    def start(self) -> None:
        for name, target in (("tx", self._transmit), ("rx", self._receive),
                             ("irq", self._interrupts)):
            t = threading.Thread(target=target, name=f"nooks-net-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def run(self) -> None:
        """Serve until SIGINT or SIGTERM."""
        try:
            self.open_control()
            self.start()
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, _raise_stop)
                signal.signal(signal.SIGINT, _raise_stop)
            if self.on_ready is not None:
                self.on_ready()
            while True:
                time.sleep(3600)
        except _Stop:
            pass
        finally:
            self.close()

    def close(self) -> None:
        self._stopping.set()
        try:
            if self.follower is not None:
                self.follower.close()
            with contextlib.suppress(Closed):
                self.close_supervised()  # calls in flight end with the domain
            for t in self._threads:
                t.join(BLOCK_TIMEOUT + 2)
            self._threads = []
        finally:
            for part in (self.wire, self.tap, self.card):
                if part is not None:
                    with contextlib.suppress(Exception):
                        part.close()
            self.wire = self.tap = self.card = None
            self.topology.close()
            if self._recorder is not None:
                self._recorder.stop()
                with open(self._record_lines or os.devnull, "w") as f:
                    json.dump(sorted(self._recorder.lines), f)
                self._recorder = None


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop


def _source(module: str) -> str:
    found = importlib.util.find_spec(module)
    if found is None or found.origin is None:
        raise ValueError(f"cannot find the source of {module}")
    return found.origin
