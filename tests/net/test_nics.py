"""Each card and its driver under nooks, with real programs on real namespaces: ping
goes through it, tcpdump keeps capturing while it is made to fail, and what the
system set on its interface is set again in every fresh driver (transfers under
repeated failures: test_faults)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyroute2 import netns

from nooks.net.host import NetHost
from nooks.net.topology import Plan

pytestmark = [pytest.mark.timeout(180),
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces)")]


@pytest.fixture(params=["ne2000", "rtl8139", "e1000", "virtio-net"])
def host(request: pytest.FixtureRequest) -> Iterator[NetHost]:
    name = f"t{request.param}-{os.getpid()}"
    h = NetHost(request.param, Plan(name=name), deadline=2.0)
    try:
        h.start()
        yield h
    finally:
        h.close()
    assert not [n for n in netns.listnetns() if n.startswith(f"nooks-{name}")]


def _in(ns: str, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_ping_goes_through_the_driver(host: NetHost) -> None:
    r = _in(host.topology.this, "ping", "-c", "10", "-i", "0.02", "-W", "2", "10.77.0.2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert " 10 received" in r.stdout
    st = host.status()
    assert st["tx_frames"] >= 10 and st["rx_frames"] >= 10 and st["card"]["tx"] >= 10


def _until(check: object, limit: float = 10) -> bool:
    import time

    end = time.monotonic() + limit
    while time.monotonic() < end:
        if callable(check) and check():
            return True
        time.sleep(0.02)
    return False


def test_what_the_system_sets_is_set_again_in_every_fresh_driver(host: NetHost) -> None:
    ns = host.topology.this
    group = "01:00:5e:01:02:03"
    for cmd in (["ip", "link", "set", "nooks0", "promisc", "on"],
                ["ip", "maddr", "add", group, "dev", "nooks0"],
                ["ip", "link", "set", "nooks0", "mtu", "1400"]):
        assert _in(ns, *cmd).returncode == 0
    assert _until(lambda: host.status()["promisc"] and host.status()["mtu"] == 1400
                  and group in host.status()["groups"])
    assert host.card is not None and host.sup is not None

    def programmed() -> bool:
        return _promiscuous(host)

    assert programmed()
    for fault in ("segv", "exception", "hang"):
        host.sup.inject(fault)
        assert programmed(), f"promiscuous mode lost after {fault}"
        assert host.status()["mtu"] == 1400
    _in(ns, "ip", "link", "set", "nooks0", "promisc", "off")
    assert _until(lambda: not host.status()["promisc"])
    host.sup.inject("segv")
    assert _in_filter(host, bytes.fromhex(group.replace(":", "")))
    assert " 5 received" in _in(ns, "ping", "-c", "5", "-i", "0.05", "-W", "2",
                                "10.77.0.2").stdout


def _promiscuous(host: NetHost) -> bool:
    """What the card says: every frame is taken."""
    assert host.card is not None
    driver, regs = host.driver, host.card.model.regs
    if driver == "virtio-net":
        from nooks.hw.virtio import VirtioNet

        assert isinstance(host.card.model, VirtioNet)
        return host.card.model.promisc
    if driver == "ne2000":
        from nooks.hw import ne2000 as n

        return bool(regs[n.PAGE2 + n.RCR] & n.RCR_PRO) \
            and regs[n.PAGE1 + n.MAR:n.PAGE1 + n.MAR + 8] == b"\xff" * 8
    if driver == "rtl8139":
        from nooks.hw import rtl8139 as r

        rcr = int.from_bytes(regs[r.RCR:r.RCR + 4], "little")
        return bool(rcr & r.RCR_AAP) and regs[r.MAR:r.MAR + 8] == b"\xff" * 8
    from nooks.hw import e1000 as e

    rctl = int.from_bytes(regs[e.RCTL:e.RCTL + 4], "little")
    return bool(rctl & e.RCTL_UPE) and bool(rctl & e.RCTL_MPE)


def _in_filter(host: NetHost, group: bytes) -> bool:
    """Whether the card's multicast filter takes ``group`` (and is not promiscuous)."""
    assert host.card is not None
    driver, regs = host.driver, host.card.model.regs
    if _promiscuous(host):
        return False
    if driver == "virtio-net":
        from nooks.hw.virtio import VirtioNet

        assert isinstance(host.card.model, VirtioNet)
        return group in host.card.model.multicast
    if driver == "ne2000":
        from nooks.hw import ne2000 as n

        bit = n.mc_hash(group)
        return bool(regs[n.PAGE1 + n.MAR + (bit >> 3)] >> (bit & 7) & 1)
    if driver == "rtl8139":
        from nooks.hw import rtl8139 as r
        from nooks.hw.netdev import ether_crc

        mar = int.from_bytes(regs[r.MAR:r.MAR + 8], "little")
        return bool(mar >> (ether_crc(group) >> 26) & 1)
    from nooks.hw import e1000 as e

    bit = e.mta_index(group)
    word = int.from_bytes(regs[e.MTA + 4 * (bit >> 5):e.MTA + 4 * (bit >> 5) + 4], "little")
    return bool(word >> (bit & 31) & 1)


def test_tcpdump_on_the_tap_keeps_capturing_across_recoveries(host: NetHost,
                                                              tmp_path: Path) -> None:
    ns = host.topology.this
    pcap = tmp_path / "cap.pcap"
    dump = subprocess.Popen(["ip", "netns", "exec", ns, "tcpdump", "-i", "nooks0", "-n", "-U",
                             "--immediate-mode", "-w", str(pcap), "icmp"],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert dump.stderr is not None
        assert "listening on" in dump.stderr.readline()  # tcpdump is capturing
        assert host.sup is not None
        for fault in ("segv", "hang"):
            assert " 5 received" in _in(ns, "ping", "-c", "5", "-i", "0.05", "-W", "2",
                                        "10.77.0.2").stdout
            host.sup.inject(fault)
        assert " 5 received" in _in(ns, "ping", "-c", "5", "-i", "0.05", "-W", "2",
                                    "10.77.0.2").stdout
    finally:
        dump.terminate()
        dump.wait(10)
    read = _in(ns, "tcpdump", "-n", "-r", str(pcap))
    replies = [line for line in read.stdout.splitlines() if "echo reply" in line]
    ids = sorted({line.split("id ")[1].split(",")[0] for line in replies})
    assert len(replies) == 15, f"{len(replies)} replies, ids {ids}"
