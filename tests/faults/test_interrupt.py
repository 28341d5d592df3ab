"""An interrupted campaign, through the real command: SIGINT or SIGTERM sent while a
run's mount is live stops it within seconds; it leaves no process, mount, temp dir
or control socket behind, writes a partial report and exits 130 / 143; the same
command then resumes it, doing only the runs not done.

Each campaign runs with its own TMPDIR and NOOKS_RUN_DIR (fresh directories, so
that "nothing left" can be asserted exactly) and a marker in its environment,
which every process it starts inherits (hosts, domains, programs): a process
still carrying the marker afterwards is one it left behind, wherever it was
reparented to.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

pytestmark = [pytest.mark.timeout(240),
              pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")]

MARK = "NOOKS_TEST_CAMPAIGN"
STOP_WITHIN = 10.0  # seconds from the signal to the campaign's exit

T = TypeVar("T")


def processes() -> Iterator[tuple[int, list[str], list[bytes]]]:
    """(pid, argv, environment) of every process that has them (zombies have not)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if argv:
            yield int(entry), argv, env


def mounts_under(path: Path) -> list[str]:
    """Mounts at or below ``path``, found without touching ``path`` itself (resolving
    a stuck mount would hang on its server): only its parent is resolved."""
    root = os.path.join(os.path.realpath(path.parent), path.name)
    with open("/proc/self/mounts") as f:
        mnts = [line.split()[1].replace("\\040", " ") for line in f]
    return [m for m in mnts if m == root or m.startswith(root + "/")]


def wait_for(what: str, probe: Callable[[], T | None], proc: subprocess.Popen[str],
             timeout: float = 90.0) -> T:
    """Poll ``probe`` until it answers; fails if the campaign exits first."""
    end = time.monotonic() + timeout
    while True:
        got = probe()
        if got is not None:
            return got
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the campaign exited ({proc.returncode}) before {what}:\n{out}{err}")
        if time.monotonic() > end:
            pytest.fail(f"no {what} within {timeout:g} s")
        time.sleep(0.005)


@dataclass
class Campaign:
    root: Path
    args: list[str]
    mark: str = ""

    def __post_init__(self) -> None:
        self.mark = uuid.uuid4().hex
        self.tmpdir = self.root / "tmp"
        self.rundir = self.root / "run"
        self.out = self.root / "out"
        self.tmpdir.mkdir()
        self.rundir.mkdir()

    def cmd(self) -> list[str]:
        return [sys.executable, "-m", "nooks", "eval", "reliability", *self.args,
                "--out", str(self.out)]

    def env(self) -> dict[str, str]:
        return dict(os.environ, TMPDIR=str(self.tmpdir), NOOKS_RUN_DIR=str(self.rundir),
                    **{MARK: self.mark})

    def start(self) -> subprocess.Popen[str]:
        # in a process group of its own, as a command run from a shell is
        return subprocess.Popen(self.cmd(), env=self.env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)

    def run(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.cmd(), env=self.env(), capture_output=True, text=True,
                              check=False, timeout=180)

    def marked(self) -> list[tuple[int, list[str]]]:
        tag = f"{MARK}={self.mark}".encode()
        return [(pid, argv) for pid, argv, env in processes() if tag in env]

    def host(self, name_end: str) -> tuple[int, str] | None:
        """(pid, mountpoint) of the campaign's host whose name ends with ``name_end``
        (runs: eval-PID-DRIVER-INDEX-MODE; the coverage dry run: cov-PID-DRIVER), once
        its mount is live."""
        for pid, argv in self.marked():
            if "mount" in argv and "--name" in argv:
                at = argv.index("--name")
                if argv[at + 1].endswith(name_end) and mounts_under(Path(argv[at - 1])):
                    return pid, argv[at - 1]
        return None

    def results(self) -> list[dict[str, object]]:
        path = self.out / "results.jsonl"
        if not path.exists():
            return []
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]

    def assert_clean(self) -> None:
        assert self.marked() == [], "processes left"
        named = [(pid, argv) for pid, argv, _ in processes()
                 if "nooks" in " ".join(argv[:3]) and "mount" in argv
                 and any(str(p) in " ".join(argv) for p in (self.tmpdir, self.out))]
        assert named == [], "nooks mount hosts left"
        assert mounts_under(self.root) == [], "mounts left"
        assert os.listdir(self.tmpdir) == [], "temp dirs left"
        assert [s for s in os.listdir(self.rundir) if s.endswith(".sock")] == [], \
            "control sockets left"


def interrupt(c: Campaign, proc: subprocess.Popen[str], sig: signal.Signals,
              planned: int) -> subprocess.CompletedProcess[str]:
    """Send ``sig`` now — SIGINT as Ctrl-C at a terminal does, to the campaign's whole
    process group; SIGTERM as kill does, to the campaign — and check how the
    campaign stopped and what it left."""
    assert [pid for pid, _ in c.marked() if pid != proc.pid], "nothing in flight"
    t0 = time.monotonic()
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"{sig.name} did not stop the campaign:\n{out}{err}")
    took = time.monotonic() - t0
    assert proc.returncode == 128 + sig, out + err
    assert took < STOP_WITHIN, f"{sig.name}: stopped after {took:.1f} s"
    assert "Traceback" not in err, err
    c.assert_clean()

    done = c.results()
    report = (c.out / "report.md").read_text()
    assert f"interrupted by {sig.name} after {len(done)} of {planned} runs" in report
    assert f"{len(done)} of {planned} runs done" in out
    assert len(done) < planned
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def resume(c: Campaign, planned: set[tuple[int, str]],
           before: list[dict[str, object]]) -> None:
    """The same command again: it does only the rest, and then the campaign is whole."""
    r = c.run()
    assert r.returncode == 0, r.stdout + r.stderr
    c.assert_clean()
    after = c.results()
    keys = [(x["index"], x["mode"]) for x in after]
    assert len(keys) == len(set(keys)) == len(planned)
    assert set(keys) == planned
    assert after[:len(before)] == before  # the runs done were kept, not run again
    report = (c.out / "report.md").read_text()
    assert "Partial report" not in report
    assert f"| passthrough | {len(planned) // 2} |" in report


def test_sigint_while_a_run_is_mounted(tmp_path: Path) -> None:
    c = Campaign(tmp_path, ["--driver", "passthrough", "--faults", "3", "--jobs", "1",
                            "--seed", "3"])
    proc = c.start()
    # the second fault's native run is live: the first fault is done, two more runs to go
    wait_for("the second fault's mount", lambda: c.host("-passthrough-1-native"), proc)
    interrupt(c, proc, signal.SIGINT, planned=6)
    before = c.results()
    assert {(x["index"], x["mode"]) for x in before} >= {(0, "native"), (0, "nooks")}
    resume(c, {(i, m) for i in range(3) for m in ("native", "nooks")}, before)


def test_sigterm_while_cp_hangs_on_a_stuck_driver(tmp_path: Path) -> None:
    # seed 1: fault 9 is a hang in Passthrough.write, so natively `cp -a` waits on the
    # stuck driver (for the 10 s a program may take) while the other runs go on
    c = Campaign(tmp_path, ["--driver", "passthrough", "--faults", "10", "--jobs", "2",
                            "--seed", "1"])
    proc = c.start()
    _, mnt = wait_for("the hanging fault's mount", lambda: c.host("-passthrough-9-native"), proc)

    def cp_on_it() -> int | None:
        return next((pid for pid, argv in c.marked()
                     if argv[:2] == ["cp", "-a"] and argv[-1].startswith(mnt)), None)

    cp = wait_for("cp -a on the stuck mount", cp_on_it, proc)
    interrupt(c, proc, signal.SIGTERM, planned=20)
    assert cp not in dict(c.marked())
    before = c.results()
    assert (9, "native") not in {(x["index"], x["mode"]) for x in before}
    resume(c, {(i, m) for i in range(10) for m in ("native", "nooks")}, before)


def test_sigint_during_the_coverage_dry_run(tmp_path: Path) -> None:
    c = Campaign(tmp_path, ["--driver", "passthrough", "--faults", "3", "--only", "1",
                            "--jobs", "1", "--seed", "3"])
    proc = c.start()
    wait_for("the coverage dry run's mount", lambda: c.host("-passthrough"), proc)
    interrupt(c, proc, signal.SIGINT, planned=2)
    assert c.results() == []
    assert not (c.out / "coverage-passthrough.json").exists()  # a dry run cut short
    resume(c, {(1, "native"), (1, "nooks")}, [])
