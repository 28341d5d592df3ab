"""The filesystem drivers nooks knows by name, and how to run any other."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nooks.domain.config import FaultPlan
from nooks.domain.spec import Descriptor, DriverSpec, Limits, Region
from nooks.fs.blockdev import BlockDeviceInterface, ImageDevice, UndoLog
from nooks.fs.checkpointed import CheckedImageInterface, CheckedImagePort, Pause
from nooks.fs.interface import FsInterface, ServedInterface
from nooks.fs.journal import Journal, JournalInterface
from nooks.wrappers import Interface


@dataclass(frozen=True)
class Served:
    """Direct mode's part of a domain spec: the connection and the memory the domain
    serves the mount with (``nooks.fs.direct.Session``), and how long the kernel
    may cache attributes and names."""

    regions: tuple[Region, ...]
    descriptors: tuple[Descriptor, ...]
    serving: Callable[[], str | None]  # the request in flight (for failure reports)
    attr_timeout: float
    entry_timeout: float
    direct_io: bool
    hard_remove: bool = False
    journal: Journal | None = None  # a volatile driver's (kernel calls: fs_journal)
    # a checked image's: the journal is the one since the checkpoint, and the server
    # pauses for checkpoints (nooks.fs.checkpointed)
    pause: Pause | None = None


@dataclass(frozen=True)
class FsDriver:
    """A filesystem driver to mount: the class, its arguments, what it needs."""

    target: str
    args: tuple[Any, ...] = ()
    native_args: tuple[Any, ...] | None = None  # arguments when run without nooks
    image: str | None = None  # block device image the host owns
    volatile: bool = False  # its whole state lives in its memory
    preload: tuple[str, ...] = ()
    label: str = ""
    # a program that checks the image's consistency (exit 0: consistent), given the
    # image path as its last argument; see nooks.fs.consistency
    checker: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def module(self) -> str:
        return self.target.partition(":")[0]

    def spec(self, *, name: str, deadline: float, limits: Limits,
             fault: FaultPlan | None = None, undo: UndoLog | None = None,
             hide: tuple[str, ...] = (), served: Served | None = None) -> DriverSpec:
        """The domain spec: the adapter runs the driver inside the domain; ``undo``
        saves what each committed write of the image overwrites; ``hide`` as in
        DriverSpec (the mountpoint); ``served``: the domain serves the mount itself
        (direct mode)."""
        kernel: type[Interface] | None = None
        kernel_impl: Callable[[Any], Any] | None = None
        if self.image is not None and served is not None and served.pause is not None:
            image, journal, pause = self.image, served.journal, served.pause
            assert journal is not None
            kernel = CheckedImageInterface
            kernel_impl = lambda _ctx: CheckedImagePort(  # noqa: E731
                ImageDevice(image, undo), journal.port(), pause)
        elif self.image is not None:
            image = self.image
            kernel = BlockDeviceInterface
            kernel_impl = lambda _ctx: ImageDevice(image, undo)  # noqa: E731
        elif served is not None and served.journal is not None:
            journal = served.journal
            kernel = JournalInterface
            kernel_impl = lambda _ctx: journal.port()  # noqa: E731
        return DriverSpec(
            target="nooks.fs.served:ServedFs" if served else "nooks.fs.adapter:FsAdapter",
            args=(self.target, list(self.args), {}),
            kwargs={"attr_timeout": served.attr_timeout, "entry_timeout": served.entry_timeout,
                    "direct_io": served.direct_io,
                    "hard_remove": served.hard_remove,
                    "journaled": served.journal is not None,
                    "checkpointed": served.pause is not None} if served else {},
            regions=served.regions if served else (),
            descriptors=served.descriptors if served else (),
            runs="serve" if served else None, serving=served.serving if served else None,
            interface=ServedInterface if served else FsInterface, name=name, kernel=kernel,
            kernel_impl=kernel_impl,
            # loading and building a driver is held to the request deadline too (but
            # at least 10 s): a driver that hangs while starting is restarted in time
            deadline=deadline, start_deadline=max(deadline, 10.0), limits=limits,
            preload=self.preload or (self.module,), fault=fault, hide=hide,
            # no polling: with nobody spinning, the scheduler keeps the application,
            # the FUSE host and its domain on one CPU, switching in microseconds;
            # polling kept a CPU busy and spread them over two, which halved the
            # throughput of every workload with two CPUs (docs/PERFORMANCE.md)
            spin_us=0.0,
        )

    def native_spec(self, *, name: str) -> DriverSpec:
        args = self.native_args if self.native_args is not None else self.args
        return DriverSpec(target="nooks.fs.adapter:FsAdapter",
                          args=(self.target, list(args), {}), interface=FsInterface, name=name)


SHIPPED = ("vfat", "passthrough")


def resolve(driver: str, args: list[str], state: str | None = None, *,
            image: str | None = None, checker: tuple[str, ...] | None = None) -> FsDriver:
    """A shipped driver by name (``vfat IMAGE``, ``passthrough DIR``) or ``module:Class``.

    A ``module:Class`` driver needs ``state``: "volatile" if its files live in its
    own memory (then the shadow journals every change to replay it after a
    crash), "persistent" if they live in storage it reaches. Guessing wrong
    would lose files silently, so there is no default. Or it works on a disk
    ``image`` the host owns: its first constructor argument is then the host's
    block device (a file object; natively, the image's path), and ``checker``
    is a command that checks the image (``nooks.fs.consistency``).
    """
    if image is not None and (driver in SHIPPED or ":" not in driver):
        raise ValueError("--image is for module:Class drivers (vfat takes its image as "
                         "an argument)")
    if checker is not None and driver != "vfat" and image is None:
        raise ValueError("--checker needs a driver on a disk image (vfat, or --image)")
    if driver == "vfat":
        if len(args) != 1:
            raise ValueError("vfat takes one argument: the image file")
        image = os.path.realpath(args[0])
        if not os.path.isfile(image):
            raise ValueError(f"{args[0]}: no such image file")
        return FsDriver("nooks.drivers.vfat:Vfat", ({"$kernel": "blockdev"},),
                        native_args=(image,), image=image, label=f"vfat {image}",
                        checker=("fsck.fat", "-n") if checker is None else checker)
    if driver == "passthrough":
        if len(args) != 1:
            raise ValueError("passthrough takes one argument: the directory to mirror")
        root = os.path.realpath(args[0])
        if not os.path.isdir(root):
            raise ValueError(f"{args[0]}: not a directory")
        return FsDriver("nooks.drivers.passthrough:Passthrough", (root,),
                        label=f"passthrough {root}")
    if ":" not in driver:
        raise ValueError(f"unknown driver {driver!r}: give one of {', '.join(SHIPPED)} "
                         "or module:Class")
    if image is not None:
        if state == "volatile":
            raise ValueError("a driver on a disk image keeps its files there: not volatile")
        path = os.path.realpath(image)
        if not os.path.isfile(path):
            raise ValueError(f"{image}: no such image file")
        return FsDriver(driver, ({"$kernel": "blockdev"}, *args), native_args=(path, *args),
                        image=path, label=f"{driver} {path}", checker=checker or ())
    if state not in ("volatile", "persistent"):
        raise ValueError(f"{driver}: say where its files live with --state volatile (in its "
                         "own memory) or --state persistent (in storage it reaches)")
    return FsDriver(driver, tuple(args), label=driver, volatile=state == "volatile")
