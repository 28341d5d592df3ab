"""The machines a network driver connects: network namespaces, the wire, addresses.

A network host needs three places (each a network namespace):

* **this machine**, where the host's TAP device is the network interface that
  programs use (``ip netns exec NS ping ...``); its name can be given
  (``netns``) or one is made;
* **the wire**, where the simulated NIC's port is one end of a veth pair
  (``WIRE_IF``), up and without addresses: frames the card sends leave there,
  frames arriving there are the card's to receive; always made, never shared;
* **the other machine**, where the veth's other end (``PEER_IF``) has the peer
  address; given (``peer_netns``) or made.

Rules:

* What nooks makes, nooks removes (``close``): namespaces it made, and the veth
  (removed with the wire's namespace). Namespaces given to it are left as they
  were, but for the interfaces it put there.
* Each namespace made is recorded beside the host's control socket
  (``<run dir>/netns-<name>.owner``, holding the owner's pid), so that one left
  by a host that died is removed by the next ``sweep`` (every new topology
  sweeps first).
* The far end has checksum and segmentation offloads turned off: a veth hands
  AF_PACKET frames with partial checksums and 64 KiB segments otherwise, which
  a card without offloads would pass on as they are. For a card with offloads
  (``offloads=True``) they stay on: its port takes the segments with their
  virtio-net headers.
* Names are checked: namespace names as ``ip netns`` takes them, interface names
  at most 15 bytes, addresses as CIDR.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

from pyroute2 import NetNS, netns

from nooks.control import run_dir
from nooks.domain.cgroup import process_alive

log = logging.getLogger(__name__)

WIRE_IF = "wire0"  # the card's port, in the wire's namespace
PEER_IF = "eth0"  # the other machine's end of the wire
_NS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_IF_NAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")


@dataclass(frozen=True)
class Plan:
    """What to make: namespaces (None: made, named after ``name``), the TAP's name,
    the addresses on either side."""

    name: str
    netns: str | None = None
    ifname: str = "nooks0"
    address: str = "10.77.0.1/24"
    peer_netns: str | None = None
    peer_address: str = "10.77.0.2/24"

    def __post_init__(self) -> None:
        for ns in (self.netns, self.peer_netns):
            if ns is not None and not _NS_NAME.fullmatch(ns):
                raise ValueError(f"{ns!r} is not a network namespace name")
        if not _IF_NAME.fullmatch(self.ifname) or self.ifname in (".", ".."):
            raise ValueError(f"{self.ifname!r} is not an interface name (at most 15 bytes)")
        mine = ipaddress.ip_interface(self.address)
        peer = ipaddress.ip_interface(self.peer_address)
        if mine.network != peer.network or mine.ip == peer.ip:
            raise ValueError(f"{self.address} and {self.peer_address} must be two addresses "
                             "of one network")
        if self.netns is not None and self.netns == self.peer_netns:
            raise ValueError("this machine and the other machine need namespaces of their own")


def _owner_path(ns: str) -> str:
    return os.path.join(run_dir(), f"netns-{ns}.owner")


def sweep() -> list[str]:
    """Remove the namespaces made by hosts that died; their names."""
    gone = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.listdir(run_dir()):
            if not (entry.startswith("netns-") and entry.endswith(".owner")):
                continue
            ns = entry.removeprefix("netns-").removesuffix(".owner")
            path = os.path.join(run_dir(), entry)
            try:
                with open(path) as f:
                    pid = int(f.read().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if process_alive(pid):
                continue
            with contextlib.suppress(OSError):
                if ns in netns.listnetns():
                    netns.remove(ns)
                gone.append(ns)
            with contextlib.suppress(OSError):
                os.unlink(path)
    if gone:
        log.warning("removed network namespaces left by hosts that died: %s", ", ".join(gone))
    return gone


class Topology:
    """The three namespaces and the wire between two of them (see the module's rules)."""

    def __init__(self, plan: Plan, offloads: bool = False) -> None:
        self.plan = plan
        self.offloads = offloads
        base = _short(plan.name)
        self.this = plan.netns or f"nooks-{base}"
        self.wire = f"nooks-{base}-wire"
        self.peer = plan.peer_netns or f"nooks-{base}-peer"
        self.made: list[str] = []
        sweep()
        try:
            self._make()
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return (f"<Topology this={self.this} wire={self.wire} peer={self.peer} "
                f"made={self.made}>")

    def _namespace(self, ns: str, given: bool) -> None:
        existing = netns.listnetns()
        if given:
            if ns not in existing:
                raise ValueError(f"no network namespace {ns!r} (ip netns add {ns})")
            return
        if ns in existing:
            raise ValueError(f"network namespace {ns!r} exists already (another host?)")
        os.makedirs(run_dir(), exist_ok=True)
        with open(_owner_path(ns), "w") as f:
            f.write(str(os.getpid()))
        netns.create(ns)
        self.made.append(ns)

    def _make(self) -> None:
        self._namespace(self.this, self.plan.netns is not None)
        self._namespace(self.wire, False)
        self._namespace(self.peer, self.plan.peer_netns is not None)
        with NetNS(self.peer) as b:
            if b.link_lookup(ifname=PEER_IF):
                raise ValueError(f"{PEER_IF} exists already in {self.peer}")
        with NetNS(self.wire) as w:
            w.link("add", ifname=WIRE_IF, kind="veth",
                   peer={"ifname": PEER_IF, "net_ns_fd": self.peer})
            w.link("set", index=w.link_lookup(ifname=WIRE_IF)[0], state="up")
        peer = ipaddress.ip_interface(self.plan.peer_address)
        with NetNS(self.peer) as b:
            index = b.link_lookup(ifname=PEER_IF)[0]
            b.addr("add", index=index, address=str(peer.ip), prefixlen=peer.network.prefixlen)
            b.link("set", index=index, state="up")
            b.link("set", index=b.link_lookup(ifname="lo")[0], state="up")
        if not self.offloads:
            self._no_offloads(self.peer, PEER_IF)
        if not self.plan.netns:
            with NetNS(self.this) as a:
                a.link("set", index=a.link_lookup(ifname="lo")[0], state="up")

    @staticmethod
    def _no_offloads(ns: str, ifname: str) -> None:
        subprocess.run(["ip", "netns", "exec", ns, "ethtool", "-K", ifname, "tx", "off",
                        "tso", "off", "gso", "off", "gro", "off"], capture_output=True,
                       check=True, timeout=10)

    def configure_tap(self, ifname: str, mtu: int) -> None:
        """Address and bring up the TAP made in this machine's namespace."""
        mine = ipaddress.ip_interface(self.plan.address)
        with NetNS(self.this) as a:
            index = a.link_lookup(ifname=ifname)[0]
            a.link("set", index=index, mtu=mtu)
            a.addr("add", index=index, address=str(mine.ip), prefixlen=mine.network.prefixlen)
            a.link("set", index=index, state="up")

    @contextlib.contextmanager
    def inside(self, ns: str) -> Iterator[None]:
        """Run the block with this thread in network namespace ``ns`` (sockets and
        devices made inside belong to it)."""
        netns.pushns(ns)
        try:
            yield
        finally:
            netns.popns()

    def close(self) -> None:
        """Remove what was made, in reverse; interfaces put into given namespaces go
        with the wire (the veth) or with the TAP's last descriptor."""
        for ns in reversed(self.made):
            with contextlib.suppress(OSError):
                if ns in netns.listnetns():
                    netns.remove(ns)
            with contextlib.suppress(OSError):
                os.unlink(_owner_path(ns))
        self.made = []


def _short(name: str) -> str:
    """A namespace-safe form of a host name."""
    out = re.sub(r"[^A-Za-z0-9_.-]", "-", name).strip("-.") or "net"
    return out[:40]
