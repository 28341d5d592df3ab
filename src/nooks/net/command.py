"""The network class's command: ``nooks net DRIVER``.

It makes this machine (the namespace where the host's TAP device is the network
interface), the wire and the other machine (unless given existing namespaces),
starts the card and its driver, and serves until SIGINT or SIGTERM (with
``--daemon``, detached, once it serves); then the namespaces and links it made
are removed. A host that died leaves namespaces the
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
from nooks.daemon import daemonize
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
    p.add_argument("--daemon", action="store_true",
                   help="detach once it serves (`nooks status NAME`; SIGTERM stops it)")
    p.add_argument("--log", metavar="PATH", help="with --daemon: append messages to PATH "
                   "(default: none are kept)")
    p.add_argument("--deadline", type=argcheck.seconds(0.05, 3600), default=2.0,
                   metavar="SECONDS", help="seconds a call may take before the driver "
                   "counts as hung (default: %(default)s)")
    limitflags.add(p)
    p.add_argument("--fault-plan", help=argparse.SUPPRESS)
    p.add_argument("--record-lines", help=argparse.SUPPRESS)
    p.set_defaults(func=lambda args: _net(args, error, say))


def _net(args: argparse.Namespace, error: Report, say: Report) -> int:
    from nooks.net.topology import Plan

    try:
        plan = Plan(name=args.name, netns=args.netns, ifname=args.ifname,
                    address=args.address, peer_netns=args.peer_netns,
                    peer_address=args.peer_address)
        fault = msgspec.json.decode(args.fault_plan, type=FaultPlan) if args.fault_plan \
            else None
    except (ValueError, msgspec.DecodeError) as e:
        error(f"nooks net: {e}")
        return 2
    if args.log and not args.daemon:
        error("nooks net: --log goes with --daemon (in the foreground, messages go to stderr)")
        return 2
    if args.daemon:
        return daemonize(lambda ready: _serve(args, plan, fault, ready), log=args.log,
                         command="nooks net",
                         announce=lambda pid: f"serving {args.driver} (host pid {pid})",
                         error=error, say=say)

    def foreground(ok: bool, line: str) -> None:
        if ok:
            say(line)
        else:
            error(f"nooks net: {line}")

    return _serve(args, plan, fault, foreground)


def _serve(args: argparse.Namespace, plan: Any, fault: FaultPlan | None,
           ready: Callable[[bool, str], None]) -> int:
    """Build the host and serve until SIGINT or SIGTERM; ``ready(True, line)`` once it
    serves (the line says where), ``ready(False, why)`` if it cannot."""
    from nooks.net.host import NetHost

    def serving() -> None:
        # one plain line, first on stdout: tools read the namespaces from it
        ready(True, f"serving {args.driver} as {plan.ifname} in {host.topology.this} "
              f"({plan.address}); the other machine is {host.topology.peer} "
              f"({plan.peer_address})")

    try:
        host = NetHost(args.driver, plan, native=args.native, deadline=args.deadline,
                       limits=limitflags.limits(args), fault=fault, on_ready=serving,
                       record_lines=args.record_lines)
    except (ValueError, OSError) as e:
        ready(False, str(e))
        return 1
    except Exception as e:
        ready(False, f"the driver did not start: {e}")
        return 1
    try:
        host.run()
    except RuntimeError as e:  # e.g. another host has this name
        ready(False, str(e))
        return 1
    return 0
