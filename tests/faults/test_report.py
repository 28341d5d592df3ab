"""The campaign's report: with matplotlib it has a chart; without it (matplotlib is
the optional 'plot' extra) the chart is skipped with a one-line note, in the report
and on the console, instead of failing; a partial campaign's report says so."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nooks.eval import report
from nooks.eval.results import RunResult

PNG = b"\x89PNG\r\n\x1a\n"


def _results() -> list[RunResult]:
    out = []
    for index, (native, nooks) in enumerate([("system failure", "recovered"),
                                             ("app-visible error", "no effect")]):
        for mode, outcome in (("native", native), ("nooks", nooks)):
            out.append(RunResult(driver="passthrough", index=index, mode=mode, kind="panic",
                                 seed=index, site=None, outcome=outcome, data_ok=True,
                                 detail="", recoveries=int(outcome == "recovered"),
                                 seconds=0.1))
    return out


def test_chart_with_matplotlib(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    w = report.write(_results(), str(tmp_path), "nooks eval reliability", 1)
    assert w.chart_note is None
    assert (tmp_path / "chart.png").read_bytes()[:8] == PNG
    assert str(tmp_path / "chart.png") in w.paths
    assert "no chart" not in (tmp_path / "report.md").read_text()


def test_no_matplotlib_no_chart_and_a_note(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "chart.png").write_bytes(PNG)  # from an earlier report: would mislead
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib: ImportError
    w = report.write(_results(), str(tmp_path), "nooks eval reliability", 1)
    assert w.chart_note == report.NO_MATPLOTLIB
    assert not (tmp_path / "chart.png").exists()
    assert w.paths == [str(tmp_path / "report.md"), str(tmp_path / "summary.json")]
    text = (tmp_path / "report.md").read_text()
    assert text.count(report.NO_MATPLOTLIB) == 1
    assert "| passthrough | 2 | 1 | 1 (100.0%) | 1 |" in text


def test_partial_report_says_so(tmp_path: Path) -> None:
    progress = report.Progress(done=4, planned=10, stopped_by="SIGTERM")
    report.write(_results(), str(tmp_path), "nooks eval reliability", 1, progress)
    text = (tmp_path / "report.md").read_text()
    assert "**Partial report**: the campaign was interrupted by SIGTERM after 4 of 10 runs" \
        in text
    report.write(_results(), str(tmp_path), "nooks eval reliability", 1,
                 report.Progress(done=10, planned=10))
    assert "Partial" not in (tmp_path / "report.md").read_text()


@pytest.mark.timeout(120)
@pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")
def test_campaign_without_matplotlib(tmp_path: Path) -> None:
    # a matplotlib that cannot be imported, first on the path: as if not installed
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "matplotlib.py").write_text("raise ImportError('no matplotlib here')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(shadow), *filter(None, [os.environ.get("PYTHONPATH")])]),
        TMPDIR=str(tmp_path), NOOKS_RUN_DIR=str(tmp_path / "run"))
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "nooks", "eval", "reliability", "--driver",
                        "passthrough", "--faults", "1", "--jobs", "1", "--seed", "3",
                        "--out", str(out)], env=env, capture_output=True, text=True,
                       check=False, timeout=100)
    assert r.returncode == 0, r.stdout + r.stderr
    assert report.NO_MATPLOTLIB in r.stdout
    assert not (out / "chart.png").exists()
    assert report.NO_MATPLOTLIB in (out / "report.md").read_text()
    assert "| passthrough | 1 |" in (out / "report.md").read_text()


def test_worse_than_native_counts_only_what_native_mode_got_right() -> None:
    pairs = [("no effect", "app-visible error", True), ("app-visible error", "app-visible error",
             True), ("no effect", "no effect", False), ("system failure", "app-visible error",
             True), ("no effect", "recovered", True)]
    results = []
    for index, (native, nooks, ok) in enumerate(pairs):
        results += [RunResult(driver="flask", index=index, mode="native", kind="source",
                              seed=index, site=None, outcome=native, data_ok=True, detail="",
                              recoveries=0, seconds=0.1),
                    RunResult(driver="flask", index=index, mode="nooks", kind="source",
                              seed=index, site=None, outcome=nooks, data_ok=ok, detail="",
                              recoveries=0, seconds=0.1)]
    s = report.summarize(results)["flask"]
    assert s["worse_than_native"] == 2  # the first (an error) and the third (bad data)
    assert s["app_visible_errors"] == 3 and s["data_check_failures"] == 1
    text = report.markdown(report.summarize(results), "c", 1, "out")
    assert "| flask | 5 | 1 | 1 (100.0%) | 1 | 3 (60.0%) | 1 | 1 | 2 |" in text
