"""The filesystem class's commands: ``nooks mount``, ``nooks umount``, ``nooks mkfs``.

Rules of the mount lifecycle:

* a mountpoint with anything mounted on it is refused (a live nooks mount, a
  stale one a dead host left -- ``nooks umount`` clears it -- or another
  file system); an image is locked while mounted, so a second mount of it is
  refused too;
* ``--daemon`` returns once the mount is ready, or prints why the host could
  not start (the reason comes back through the pipe it waits on, whatever
  ``--log`` says);
* ``nooks umount`` unmounts only nooks mounts, and returns once the host has
  exited (its driver ended in order, the image released); a stale mount and
  the record of its dead host are cleared;
* every error is one line on stderr; exit status 2 for a bad command line, 1
  for a refusal or a failure.
"""

from __future__ import annotations

import argparse
import os
import select
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable
from typing import Any

import msgspec

from nooks import argcheck, limitflags
from nooks.control import forget, hosts, stale
from nooks.daemon import daemonize
from nooks.domain.config import FaultPlan
from nooks.fs import mounts

Report = Callable[[str], None]


def add_parsers(sub: Any, formatter: type[argparse.HelpFormatter], error: Report,
                say: Report) -> None:
    """Register the commands; they report through ``error`` and ``say``."""
    mt = sub.add_parser(
        "mount", help="mount a filesystem driver through nooks", formatter_class=formatter,
        description="nooks mount DRIVER [ARGS...] MOUNTPOINT [-- CTOR_ARGS]: DRIVER is vfat "
        "(IMAGE), passthrough (DIR) or module:Class (its constructor's arguments after --)")
    mt.add_argument("driver", help="vfat, passthrough or module:Class")
    mt.add_argument("rest", nargs="+", metavar="ARGS... MOUNTPOINT",
                    help="the driver's arguments, then the mountpoint")
    mt.add_argument("--native", action="store_true",
                    help="run the driver in-process, unprotected (the baseline)")
    mt.add_argument("-o", dest="options", metavar="OPTS", help="FUSE options, comma-separated")
    mt.add_argument("--name", help="name for status and inject (default: the mountpoint)")
    mt.add_argument("--daemon", action="store_true", help="detach once the mount is ready")
    mt.add_argument("--log", metavar="PATH", help="with --daemon: append messages to PATH "
                    "(default: none are kept)")
    mt.add_argument("--threads", action="store_true", help="multi-threaded FUSE loop")
    mt.add_argument("--mode", choices=["host", "direct"], default="host",
                    help="host: every request passes through the host, which checks each "
                    "answer from outside the driver's process; direct: the driver's domain "
                    "serves the mount itself, the host holds the connection and recovers it "
                    "(faster; see docs/DESIGN.md) (default: %(default)s)")
    mt.add_argument("--state", choices=["volatile", "persistent"],
                    help="where a module:Class driver keeps its files: in its own memory "
                    "(nooks journals every change and replays it into a restarted driver) "
                    "or in storage it reaches (only open files are re-opened)")
    mt.add_argument("--deadline", type=argcheck.seconds(0.1, 3600), default=10.0,
                    metavar="SECONDS",
                    help="seconds a request may take before the driver counts as hung "
                    "(default: %(default)s)")
    mt.add_argument("--image", metavar="PATH",
                    help="module:Class drivers: a disk image the host owns; the driver gets "
                    "it as its first constructor argument (a file object whose writes the "
                    "host commits per request; natively, the path)")
    mt.add_argument("--checker", metavar="'CMD ARGS'",
                    help="a command that checks the image (exit 0: consistent), run with the "
                    "image's path added (vfat: 'fsck.fat -n')")
    mt.add_argument("--check-interval", type=argcheck.seconds(0.01, 86400, zero=True),
                    default=1.0, metavar="SECONDS",
                    help="check the image this often while it changes, and before unmounting; "
                    "an inconsistent image is rolled back and redone by a fresh driver "
                    "(0: never; default: %(default)s)")
    limitflags.add(mt)
    # for the reliability campaign: a fault in the driver's code, and a coverage dry run
    mt.add_argument("--fault-plan", help=argparse.SUPPRESS)
    mt.add_argument("--record-lines", help=argparse.SUPPRESS)
    mt.set_defaults(func=lambda args: mount(args, error, say), ctor_args=[])

    um = sub.add_parser("umount", help="unmount a nooks mount and wait for its host to exit",
                        formatter_class=formatter)
    um.add_argument("mountpoint")
    um.add_argument("--timeout", type=argcheck.seconds(1, 3600), default=120.0,
                    metavar="SECONDS",
                    help="how long to wait for the host to exit (default: %(default)s)")
    um.set_defaults(func=lambda args: umount(args, error, say))

    mk = sub.add_parser("mkfs", help="make a filesystem image", formatter_class=formatter)
    mk.add_argument("fstype", choices=["vfat"], help="the file system to make")
    mk.add_argument("image", help="the image file to create")
    mk.add_argument("--size", type=argcheck.size(64 << 10, 16 << 40), default=64 << 20,
                    help="size of the image, e.g. 64M (default: 64M)")
    mk.add_argument("--force", action="store_true", help="overwrite an existing file")
    mk.set_defaults(func=lambda args: mkfs(args, error, say))


def _fuse_options(text: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for raw in (text or "").split(","):
        item = raw.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        out[key] = value if sep else True
    return out


def occupied(mountpoint: str) -> str | None:
    """Why nothing may be mounted at ``mountpoint`` now, or None."""
    found = mounts.entry(mountpoint)
    if found is None:
        return None
    if found.nooks:
        for _, st in hosts():
            if st.get("mountpoint") == found.target:
                return (f"{mountpoint} is mounted already by nooks host {st.get('name')!r} "
                        f"(pid {st.get('host_pid')})")
        return (f"{mountpoint} has a stale mount left by a nooks host that died: "
                f"`nooks umount {mountpoint}` clears it")
    return f"{mountpoint} has a {found.fstype} file system mounted on it ({found.source})"


def mount(args: argparse.Namespace, error: Report, say: Report) -> int:
    from nooks.fs.drivers import resolve

    if len(args.rest) < 1:
        error("nooks mount: give the driver's arguments and a mountpoint")
        return 2
    *driver_args, mountpoint = args.rest
    try:
        checker = tuple(shlex.split(args.checker)) if args.checker is not None else None
        if checker == ():
            raise ValueError("--checker needs a command")
        if checker and shutil.which(checker[0]) is None:
            raise ValueError(f"--checker: {checker[0]}: command not found")
        driver = resolve(args.driver, [*driver_args, *args.ctor_args], state=args.state,
                         image=args.image, checker=checker)
        fault = msgspec.json.decode(args.fault_plan, type=FaultPlan) if args.fault_plan \
            else None
    except (ValueError, msgspec.DecodeError) as e:
        error(f"nooks mount: {e}")
        return 2
    busy = occupied(mountpoint)
    if busy is not None:
        error(f"nooks mount: {busy}")
        return 1
    if not os.path.isdir(mountpoint):
        error(f"nooks mount: {mountpoint}: not a directory")
        return 2
    if args.daemon:
        return daemonize(lambda ready: _run(args, driver, mountpoint, fault, ready=ready),
                         log=args.log, command="nooks mount",
                         announce=lambda pid: f"mounted {mountpoint} (host pid {pid})",
                         error=error, say=say)
    return _run(args, driver, mountpoint, fault, error=error)


def _run(args: argparse.Namespace, driver: Any, mountpoint: str, fault: FaultPlan | None, *,
         ready: Callable[[bool, str], None] | None = None, error: Report | None = None) -> int:
    """Build the host, mount, serve until unmounted. Failures before the mount is
    ready go to ``ready(False, why)`` (daemon) or ``error`` (foreground)."""
    from nooks.fs.host import FsHost

    started = [False]

    def on_ready() -> None:
        started[0] = True
        if ready is not None:
            ready(True, "")

    def failed(why: str) -> int:
        if ready is not None:
            ready(False, why)
        elif error is not None:
            error(f"nooks mount: {why}")
        return 1

    try:
        limits = limitflags.limits(args)
    except ValueError as e:
        return failed(str(e))
    try:
        host = FsHost(driver, mountpoint, name=args.name, native=args.native,
                      threads=args.threads, deadline=args.deadline,
                      options=_fuse_options(args.options), on_ready=on_ready, fault=fault,
                      record_lines=args.record_lines, check_interval=args.check_interval,
                      limits=limits, mode=args.mode)
    except Exception as e:
        return failed(f"the driver did not start: {e}")
    try:
        host.run()
    except Exception as e:
        if not started[0]:
            return failed(f"could not mount {mountpoint}: {e}")
        raise
    return 0


def umount(args: argparse.Namespace, error: Report, say: Report) -> int:
    mnt = args.mountpoint
    found = mounts.entry(mnt)
    live = [(path, st) for path, st in hosts() if found is not None
            and st.get("mountpoint") == found.target and st.get("class") == "fs"]
    if found is None:
        error(f"nooks umount: {mnt} is not mounted")
        return 1
    if not found.nooks:
        error(f"nooks umount: {mnt} is a {found.fstype} mount ({found.source}), not a nooks "
              "mount; not unmounting it")
        return 1
    if not live:
        dead = [path for path, rec in stale() if rec.get("mountpoint") == found.target]
        if not dead:
            # no host answers for it, and none is known to have died: it may be alive
            # under another NOOKS_RUN_DIR, or too busy to answer; never cut it off
            error(f"nooks umount: no nooks host answers for {mnt} (another NOOKS_RUN_DIR?); "
                  f"not unmounting a mount that may be alive: `fusermount3 -u {mnt}` "
                  "unmounts it anyway")
            return 1
        r = subprocess.run(["fusermount3", "-uz", found.target], capture_output=True, text=True,
                           check=False)
        if r.returncode != 0 and mounts.is_mounted(found.target):
            error(f"nooks umount: {mnt}: {r.stderr.strip() or 'fusermount3 failed'}")
            return 1
        for path in dead:
            forget(path)
        say(f"cleared the stale mount {found.target} (its host had died)")
        return 0
    _, st = live[0]
    pid = int(st["host_pid"])
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        pidfd = -1
    r = subprocess.run(["fusermount3", "-u", found.target], capture_output=True, text=True,
                       check=False)
    if r.returncode != 0:
        if pidfd >= 0:
            os.close(pidfd)
        error(f"nooks umount: {mnt}: {r.stderr.strip().removeprefix('fusermount3: ')}")
        return 1
    if pidfd >= 0:
        try:
            exited = _wait_exit(pidfd, args.timeout)
        finally:
            os.close(pidfd)
        if not exited:
            error(f"nooks umount: {mnt} is unmounted, but its host (pid {pid}) has not exited "
                  f"after {args.timeout:g} s")
            return 1
    say(f"unmounted {found.target} (host pid {pid} has exited)")
    return 0


def _wait_exit(pidfd: int, timeout: float) -> bool:
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    end = time.monotonic() + timeout
    while (left := end - time.monotonic()) > 0:
        if poller.poll(left * 1000):
            return True
    return False


def mkfs(args: argparse.Namespace, error: Report, say: Report) -> int:
    from nooks.fs.mkfs import mkfs_vfat

    try:
        mkfs_vfat(args.image, args.size, overwrite=args.force)
    except (ValueError, RuntimeError, OSError) as e:
        error(f"nooks mkfs: {e}")
        return 1
    say(f"made a FAT filesystem of {args.size:,} bytes in {args.image}")
    return 0
