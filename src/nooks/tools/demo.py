"""``nooks demo``: a FAT filesystem survives its driver failing twice a second.

A FAT image is mounted through nooks; a tree of real files (Python's standard
library) is copied into it and every file read back and checked, while the
driver is made to fail about every half second with a random fault. Then the
same copy runs with ``--native``, where the first fault takes the mount down.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from nooks.control import request, socket_path
from nooks.fs.mkfs import mkfs_vfat
from nooks.tools.fsprocess import start_mount, stop_mount

FAULTS = ("segv", "abort", "exception", "hang", "sigkill")
SEED = 1


@dataclass
class Run:
    files: int = 0
    verified: int = 0
    errors: list[str] = field(default_factory=list)
    injected: int = 0
    recoveries: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    fsck: str = ""


def source_files(limit: int | None) -> list[str]:
    root = os.path.dirname(os.__file__)
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames
                             if d not in ("__pycache__", "site-packages", "dist-packages",
                                          "test", "idlelib", "tkinter", "lib2to3"))
        out += [os.path.relpath(os.path.join(dirpath, f), root) for f in sorted(filenames)
                if not f.endswith((".pyc", ".so"))]
    return out[:limit] if limit else out


def _mount(image: str, mnt: str, name: str, native: bool) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "nooks", "mount", "vfat", image, mnt, "--name", name,
           "--deadline", "1"]
    return start_mount([*cmd, "--native"] if native else cmd, mnt)


class Chaos:
    """Fails the driver about every ``interval`` seconds with a random fault."""

    def __init__(self, name: str, interval: float, native: bool) -> None:
        self.path = socket_path(name)
        self.interval = interval
        self.native = native
        self.rng = random.Random(SEED)
        self.injected = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval * self.rng.uniform(0.5, 1.5)):
            fault = self.rng.choice(FAULTS)
            try:
                if fault == "sigkill":
                    if self.native:
                        continue  # native mode has no domain to kill; inject the others
                    st = request(self.path, {"cmd": "status"})
                    if st.get("domain_pid"):
                        os.kill(st["domain_pid"], signal.SIGKILL)
                elif "error" in request(self.path, {"cmd": "inject", "fault": fault},
                                        timeout=60.0):
                    continue  # not taken (the driver was busy): nothing happened
                self.injected += 1
            except OSError:
                if self.native:
                    return  # the host died: that is what native mode shows
                continue

    def __enter__(self) -> Chaos:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def copy_and_verify(src_root: str, files: list[str], mnt: str, name: str, *, native: bool,
                    progress: Progress, label: str) -> Run:
    run = Run(files=len(files))
    task = progress.add_task(label, total=2 * len(files))
    t0 = time.monotonic()
    with Chaos(name, 0.5, native) as chaos:
        sums: dict[str, str] = {}
        for rel in files:
            src, dst = os.path.join(src_root, rel), os.path.join(mnt, "stdlib", rel)
            try:
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                shutil.copyfile(src, dst)
                with open(src, "rb") as f:
                    sums[rel] = hashlib.sha256(f.read()).hexdigest()
            except OSError as e:
                run.errors.append(f"copy {rel}: {e.strerror or e}")
                if len(run.errors) >= 20:
                    break
            progress.advance(task)
            if not native:
                progress.update(task, description=f"{label} [dim]faults {chaos.injected}[/dim]")
        for rel, digest in sums.items():
            try:
                with open(os.path.join(mnt, "stdlib", rel), "rb") as f:
                    if hashlib.sha256(f.read()).hexdigest() == digest:
                        run.verified += 1
                    else:
                        run.errors.append(f"verify {rel}: content differs")
            except OSError as e:
                run.errors.append(f"verify {rel}: {e.strerror or e}")
                if len(run.errors) >= 40:
                    break
            progress.advance(task)
        run.injected = chaos.injected
    run.seconds = time.monotonic() - t0
    try:
        run.recoveries = request(socket_path(name), {"cmd": "status"})["recoveries"]
    except OSError:
        run.recoveries = []
    return run


def _percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))] if s else 0.0


def main(console: Console, limit: int | None = None) -> int:
    files = source_files(limit)
    src_root = os.path.dirname(os.__file__)
    size = sum(os.path.getsize(os.path.join(src_root, f)) for f in files)
    console.rule("nooks demo: a FAT filesystem whose driver keeps failing")
    console.print(f"copying {len(files):,} files ({size / 1e6:.1f} MB) of Python's standard "
                  "library into a FAT image, then reading every one back and checking it, "
                  "while the driver is made to fail about every 0.5 s "
                  f"({', '.join(FAULTS)}).")
    results: dict[str, Run] = {}
    with tempfile.TemporaryDirectory(prefix="nooks-demo-") as tmp:
        for mode in ("nooks", "native"):
            image = os.path.join(tmp, f"{mode}.img")
            mnt = os.path.join(tmp, f"mnt-{mode}")
            os.mkdir(mnt)
            mkfs_vfat(image, max(256 << 20, 3 * size))
            name = f"demo-{os.getpid()}-{mode}"
            proc = _mount(image, mnt, name, native=mode == "native")
            try:
                with Progress(TextColumn("{task.description}"), BarColumn(),
                              MofNCompleteColumn(), TimeElapsedColumn(),
                              console=console) as progress:
                    results[mode] = copy_and_verify(src_root, files, mnt, name,
                                                    native=mode == "native", progress=progress,
                                                    label=f"{mode}: copy, then verify")
            finally:
                stop_mount(mnt, proc)
            fsck = subprocess.run(["fsck.fat", "-n", image], capture_output=True, text=True,
                                  check=False)
            results[mode].fsck = "clean" if fsck.returncode == 0 else \
                f"exit {fsck.returncode}"
            r = results[mode]
            if mode == "nooks":
                for rec in r.recoveries[-3:]:
                    console.print(f"  recovered from [bold]{rec['kind']}[/bold] "
                                  f"({rec['detail']}) during {rec['call']} in "
                                  f"{rec['duration_ms']:.1f} ms")
            elif r.errors:
                console.print(f"  [red]without nooks:[/red] {r.errors[0]}")
    t = Table(title="nooks demo: what the application saw")
    for col in ("", "with nooks", "native (no isolation)"):
        t.add_column(col, justify="right")
    a, b = results["nooks"], results["native"]
    durations_a = [x["duration_ms"] for x in a.recoveries]
    t.add_row("files copied and verified", f"{a.verified:,} / {a.files:,}",
              f"{b.verified:,} / {b.files:,}")
    t.add_row("faults injected", str(a.injected), str(b.injected))
    t.add_row("application-visible errors", str(len(a.errors)), str(len(b.errors)))
    t.add_row("recoveries", str(len(a.recoveries)), "-")
    t.add_row("recovery time p50 / p99",
              f"{_percentile(durations_a, 0.5):.1f} / {_percentile(durations_a, 0.99):.1f} ms",
              "-")
    t.add_row("fsck.fat -n afterwards", a.fsck, b.fsck)
    t.add_row("time", f"{a.seconds:.1f} s", f"{b.seconds:.1f} s")
    console.print(t)
    ok = a.verified == a.files and not a.errors and a.fsck == "clean"
    if not ok:
        for e in a.errors[:10]:
            console.print(f"[red]{e}[/red]")
    return 0 if ok else 1
