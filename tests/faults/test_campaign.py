"""A 20-fault campaign through the real command: the table is produced, its numbers
agree with the JSON lines, and running it again resumes instead of repeating."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.timeout(900),
              pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")]


def run_campaign(out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nooks", "eval", "reliability", "--driver",
                           "passthrough", "--faults", "20", "--jobs", "2", "--seed", "7",
                           "--out", str(out)], capture_output=True, text=True, check=False,
                          timeout=800)


def test_twenty_fault_campaign(tmp_path: Path) -> None:
    out = tmp_path / "campaign"
    r = run_campaign(out)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(lines) == 40
    assert {(x["index"], x["mode"]) for x in lines} == {
        (i, m) for i in range(20) for m in ("native", "nooks")}
    outcomes = {"system failure", "app-visible error", "recovered", "no effect"}
    assert all(x["outcome"] in outcomes for x in lines)
    assert all(x["mode"] == "nooks" or x["outcome"] != "recovered" for x in lines)

    # the summary, recomputed here from the JSON lines
    by = {(x["index"], x["mode"]): x for x in lines}
    native = [by[(i, "native")] for i in range(20)]
    nooks = [by[(i, "nooks")] for i in range(20)]
    failures = [i for i in range(20) if native[i]["outcome"] == "system failure"]
    want = {
        "faults": 20,
        "native_failures": len(failures),
        "prevented": sum(1 for i in failures if nooks[i]["outcome"] != "system failure"),
        "app_visible_errors": sum(1 for x in nooks if x["outcome"] == "app-visible error"),
        "data_check_failures": sum(1 for x in nooks if not x["data_ok"]),
    }
    summary = json.loads((out / "summary.json").read_text())["passthrough"]
    assert {k: summary[k] for k in want} == want
    # the injected faults did fail the native driver sometimes, and nooks recovered
    assert any(x["outcome"] != "no effect" for x in native)
    assert any(x["outcome"] == "recovered" for x in nooks)

    report = (out / "report.md").read_text()
    row = (f"| passthrough | 20 | {want['native_failures']} | {want['prevented']} ")
    assert row in report
    assert (out / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Reliability: faults injected into drivers" in r.stdout

    # running it again resumes: nothing is run twice, the summary stays
    again = run_campaign(out)
    assert again.returncode == 0, again.stdout + again.stderr
    assert len((out / "results.jsonl").read_text().splitlines()) == 40
    assert json.loads((out / "summary.json").read_text())["passthrough"] == summary
