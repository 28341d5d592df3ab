"""The network class's command: ``nooks net DRIVER``.

It makes this machine (the namespace where the host's TAP device is the network
interface), the wire and the other machine (unless given existing namespaces),
starts the card and its driver, and serves until SIGINT or SIGTERM; then the
namespaces and links it made are removed. A host that died leaves namespaces the
next ``nooks net`` removes. Every error is one line on stderr; exit status 2 for
a bad command line, 1 for a refusal or a failure.
"""

from __future__ import annotations

import argparse
import ipaddress
from collections.abc import Callable
from typing import Any

import msgspec

from nooks import argcheck, limitflags
from nooks.domain.config import FaultPlan

Report = Callable[[str], None]

EPILOG = """\
Programs reach the network through either machine:
  ip netns exec NETNS ping 10.77.0.2           (this machine: through the driver)
  ip netns exec PEER_NETNS iperf3 -s            (the other machine)
NETNS defaults to nooks-NAME and PEER_NETNS to nooks-NAME-peer; `nooks status NAME`
shows them, with the driver's recoveries; `nooks inject NAME --fault segv` makes
the driver fail."""


def _cidr(text: str) -> str:
    try:
        iface = ipaddress.ip_interface(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an address/prefix") from None
    if "/" not in text:
        raise argparse.ArgumentTypeError(f"{text!r} needs a prefix length (e.g. /24)")
    return str(iface)


def add_parser(sub: Any, formatter: type[argparse.HelpFormatter], error: Report,
               say: Report) -> None:
    from nooks.net.host import DRIVERS

    p = sub.add_parser("net", help="run a network driver through nooks, behind a TAP device",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
                       description="nooks net DRIVER: a simulated network card and its "
                       "driver; the host's TAP device is this machine's interface")
    p.add_argument("driver", choices=sorted(DRIVERS), help="the card and its driver")
    p.add_argument("--name", default="net", help="name for status and inject, and of the "
                   "namespaces made (default: net)")
    p.add_argument("--netns", help="this machine: an existing network namespace "
                   "(default: nooks-NAME, made and removed)")
    p.add_argument("--ifname", default="nooks0", help="the TAP device's name (default nooks0)")
    p.add_argument("--address", type=_cidr, default="10.77.0.1/24",
                   help="this machine's address (default 10.77.0.1/24)")
    p.add_argument("--peer-netns", help="the other machine: an existing network namespace "
                   "(default: nooks-NAME-peer, made and removed)")
    p.add_argument("--peer-address", type=_cidr, default="10.77.0.2/24",
                   help="the other machine's address (default 10.77.0.2/24)")
    p.add_argument("--native", action="store_true",
                   help="run the driver in-process, unprotected (the baseline)")
    p.add_argument("--deadline", type=argcheck.seconds(0.05, 3600), default=2.0,
                   metavar="SECONDS", help="seconds a call may take before the driver "
                   "counts as hung (default: %(default)s)")
    limitflags.add(p)
    p.add_argument("--fault-plan", help=argparse.SUPPRESS)
    p.add_argument("--record-lines", help=argparse.SUPPRESS)
    p.set_defaults(func=lambda args: _net(args, error, say))


def _net(args: argparse.Namespace, error: Report, say: Report) -> int:
    from nooks.net.host import NetHost
    from nooks.net.topology import Plan

    try:
        plan = Plan(name=args.name, netns=args.netns, ifname=args.ifname,
                    address=args.address, peer_netns=args.peer_netns,
                    peer_address=args.peer_address)
    except ValueError as e:
        error(f"nooks net: {e}")
        return 2
    fault = msgspec.json.decode(args.fault_plan, type=FaultPlan) if args.fault_plan else None

    def ready() -> None:
        # one plain line, first on stdout: tools read the namespaces from it
        say(f"serving {args.driver} as {plan.ifname} in {host.topology.this} "
            f"({plan.address}); the other machine is {host.topology.peer} "
            f"({plan.peer_address})")

    try:
        host = NetHost(args.driver, plan, native=args.native, deadline=args.deadline,
                       limits=limitflags.limits(args), fault=fault, on_ready=ready,
                       record_lines=args.record_lines)
    except (ValueError, OSError) as e:
        error(f"nooks net: {e}")
        return 1
    except Exception as e:
        error(f"nooks net: the driver did not start: {e}")
        return 1
    try:
        host.run()
    except RuntimeError as e:  # e.g. another host has this name
        error(f"nooks net: {e}")
        return 1
    return 0
