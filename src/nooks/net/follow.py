"""What the system sets on its interface, followed into the driver.

Programs configure the TAP as they would any interface — ``ip link set nooks0
promisc on``, ``mtu 1400``, ``address ...``, ``ip maddr add ...`` — and a
card must be told: its address filter, its receive mode, its multicast groups.
``Follower`` looks at the TAP every ``PERIOD`` seconds from a thread that lives
in this machine's namespace (netlink for the link, ``/proc/thread-self/net/dev_mcast``
for the link-layer groups) and hands each change to the host, which passes it to
the driver through the shadow (so that it is logged, and replayed into every
fresh driver).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

from pyroute2 import IPRoute, netns

_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def _enter(ns: str) -> None:
    """Move the calling thread into network namespace ``ns`` (pyroute2's push/pop keep
    one stack for the whole process, and save the main thread's namespace)."""
    fd = os.open(os.path.join(netns.NETNS_RUN_DIR, ns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {ns}: {os.strerror(err)}")
    finally:
        os.close(fd)

log = logging.getLogger(__name__)

PERIOD = 0.2
IFF_PROMISC, IFF_ALLMULTI = 0x100, 0x200


@dataclass(frozen=True)
class LinkConfig:
    mac: bytes
    mtu: int
    promisc: bool
    allmulti: bool
    groups: tuple[bytes, ...]


def groups_of(dev_mcast: str, ifname: str) -> tuple[bytes, ...]:
    """The link-layer multicast groups ``/proc/net/dev_mcast`` lists for ``ifname``."""
    out = []
    for line in dev_mcast.splitlines():
        parts = line.split()
        if len(parts) == 5 and parts[1] == ifname:
            with contextlib.suppress(ValueError):
                mac = bytes.fromhex(parts[4])
                if len(mac) == 6:
                    out.append(mac)
    return tuple(sorted(set(out)))


class Follower:
    def __init__(self, ns: str, ifname: str, changed: Callable[[LinkConfig], None]) -> None:
        self.ns = ns
        self.ifname = ifname
        self._changed = changed
        self._stop = threading.Event()
        self._ready = threading.Event()
        self.last: LinkConfig | None = None
        self.errors = 0
        self._thread = threading.Thread(target=self._run, name="nooks-net-follow",
                                        daemon=True)

    def start(self, initial: LinkConfig | None = None) -> None:
        self.last = initial
        self._thread.start()

    def _run(self) -> None:
        _enter(self.ns)  # this thread (only) moves into the namespace, for good
        with IPRoute() as ipr:
            while not self._stop.is_set():
                try:
                    now = self._read(ipr)
                except (OSError, IndexError, ValueError) as e:
                    self.errors += 1
                    log.debug("%s: cannot read the interface: %s", self.ifname, e)
                    now = None
                if now is not None and now != self.last:
                    self.last = now
                    self._changed(now)
                self._ready.set()
                self._stop.wait(PERIOD)

    def _read(self, ipr: IPRoute) -> LinkConfig:
        index = ipr.link_lookup(ifname=self.ifname)[0]
        link = ipr.link("get", index=index)[0]
        flags = int(link["flags"])
        mac = bytes.fromhex(str(link.get_attr("IFLA_ADDRESS")).replace(":", ""))
        with open("/proc/thread-self/net/dev_mcast") as f:
            groups = groups_of(f.read(), self.ifname)
        return LinkConfig(mac=mac, mtu=int(link.get_attr("IFLA_MTU")),
                          promisc=bool(flags & IFF_PROMISC),
                          allmulti=bool(flags & IFF_ALLMULTI), groups=groups)

    def seen(self, timeout: float = 5.0) -> bool:
        """Wait for the first look (tests)."""
        return self._ready.wait(timeout)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
