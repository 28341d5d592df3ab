"""The campaign's report: the seed's table per driver, as Markdown, JSON and a chart.

Definitions, per driver, over the faults run in both modes:

* ``native_failures``: runs whose native mode ended in a system failure;
* ``prevented``: of those, runs where nooks kept the system up (no system
  failure under nooks);
* ``non_fatal``: native runs with an application-visible error but no crash;
* ``app_visible_errors``: nooks runs where a program failed or saw wrong data;
* ``data_check_failures``: nooks runs whose data checks (checksums, sqlite,
  fsck, the ledger) failed;
* ``worse_than_native``: nooks runs that failed in any of these ways although
  the same fault had no effect natively (what isolation itself would have
  cost; a fault that makes an application compute a wrong answer shows in both
  modes, and is the application's).

Rules: a campaign that stopped before its last run (interrupted) gets a report
too, of the runs done, and the report says at its top that it is partial, with
the count of runs done of those planned. The chart needs matplotlib (the
``plot`` extra); without it the chart is skipped, and the report says so in one
line (so does the console); a chart.png left from an earlier report is removed
rather than left to contradict this one.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from nooks.eval.results import RunResult, pairs

NO_MATPLOTLIB = "no chart: matplotlib is not installed (pip install 'nooks[plot]')"


@dataclass(frozen=True)
class Progress:
    """How far the campaign got: runs with a result of those planned; what stopped
    it ("SIGINT", "SIGTERM"; None: nothing)."""
    done: int
    planned: int
    stopped_by: str | None = None

    @property
    def partial(self) -> bool:
        return self.stopped_by is not None or self.done < self.planned

    def line(self) -> str:
        why = f"interrupted by {self.stopped_by}" if self.stopped_by else "not finished"
        return (f"**Partial report**: the campaign was {why} after {self.done} of "
                f"{self.planned} runs; the tables count the faults run in both modes so "
                "far. Run the same command again to resume: it does only the runs not done.")


@dataclass(frozen=True)
class Written:
    """What ``write`` made: the summary, the files, and why there is no chart (None:
    there is one)."""
    summary: dict[str, dict[str, Any]]
    paths: list[str]
    chart_note: str | None


def summarize(results: list[RunResult]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for native, nooks in pairs(results):
        s = out.setdefault(native.driver, {
            "faults": 0, "native_failures": 0, "prevented": 0, "non_fatal": 0,
            "app_visible_errors": 0, "data_check_failures": 0, "recovered": 0,
            "nooks_system_failures": 0, "no_effect_either": 0, "worse_than_native": 0,
            "by_kind": {}, "missed": []})
        s["faults"] += 1
        k = s["by_kind"].setdefault(native.kind, {"faults": 0, "native_failures": 0,
                                                  "prevented": 0})
        k["faults"] += 1
        if native.outcome == "system failure":
            s["native_failures"] += 1
            k["native_failures"] += 1
            if nooks.outcome != "system failure":
                s["prevented"] += 1
                k["prevented"] += 1
        elif native.outcome == "app-visible error":
            s["non_fatal"] += 1
        if nooks.outcome == "app-visible error":
            s["app_visible_errors"] += 1
        if nooks.outcome == "system failure":
            s["nooks_system_failures"] += 1
        if nooks.outcome == "recovered":
            s["recovered"] += 1
        if not nooks.data_ok:
            s["data_check_failures"] += 1
        if native.outcome == nooks.outcome == "no effect":
            s["no_effect_either"] += 1
        fell_short = nooks.outcome in ("system failure", "app-visible error") \
            or not nooks.data_ok
        if fell_short and native.outcome == "no effect" and native.data_ok:
            s["worse_than_native"] += 1
        if fell_short:
            s["missed"].append({"index": nooks.index, "kind": nooks.kind, "seed": nooks.seed,
                                "site": nooks.site, "outcome": nooks.outcome,
                                "data_ok": nooks.data_ok, "detail": nooks.detail})
    return out


def _pct(a: int, b: int) -> str:
    return f"{100 * a / b:.1f}%" if b else "-"


def _cell(text: str, limit: int) -> str:
    return " ".join(text.split()).replace("|", "/")[:limit]


def markdown(summary: dict[str, dict[str, Any]], command: str, seed: int, out_dir: str, *,
             progress: Progress | None = None, chart_note: str | None = None) -> str:
    lines = ["# Reliability campaign", "", f"Command: `{command}`", ""]
    if progress is not None and progress.partial:
        lines += [progress.line(), ""]
    if chart_note is not None:
        lines += [f"({chart_note}.)", ""]
    lines += ["| driver | faults | native failures | prevented by nooks | non-fatal (native) "
              "| app-visible errors (nooks) | data-check failures (nooks) | recovered "
              "| worse than native (nooks) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for driver, s in sorted(summary.items()):
        lines.append(
            f"| {driver} | {s['faults']} | {s['native_failures']} | {s['prevented']} "
            f"({_pct(s['prevented'], s['native_failures'])}) | {s['non_fatal']} | "
            f"{s['app_visible_errors']} ({_pct(s['app_visible_errors'], s['faults'])}) | "
            f"{s['data_check_failures']} | {s['recovered']} | {s['worse_than_native']} |")
    for driver, s in sorted(summary.items()):
        lines += ["", f"## {driver}: by fault type", "",
                  "| fault type | faults | native failures | prevented |", "|---|---|---|---|"]
        for kind, k in sorted(s["by_kind"].items()):
            lines.append(f"| {kind} | {k['faults']} | {k['native_failures']} | "
                         f"{k['prevented']} |")
        if s["missed"]:
            lines += ["", f"Runs where nooks fell short ({driver}), each with the command "
                      "that replays it:", "",
                      "| fault | site | outcome | data ok | detail | replay |",
                      "|---|---|---|---|---|---|"]
            for m in s["missed"]:
                replay = (f"`nooks eval reliability --driver {driver} --seed {seed} "
                          f"--only {m['index']} --out {out_dir}-replay`")
                lines.append(f"| #{m['index']} {m['kind']} (fault seed {m['seed']}) | "
                             f"{_cell(m['site'] or '-', 80)} | {m['outcome']} | "
                             f"{m['data_ok']} | {_cell(m['detail'], 160)} | {replay} |")
    return "\n".join(lines) + "\n"


def chart(summary: dict[str, dict[str, Any]], path: str) -> str | None:
    """Bars per driver: faults, native failures, prevented, app-visible errors with nooks;
    None, or why there is no chart (a stale one at ``path`` is removed)."""
    if not summary:
        note = "no chart: no fault has been run in both modes yet"
    else:
        try:
            _plot(summary, path)
            return None
        except ImportError:
            note = NO_MATPLOTLIB
    if os.path.exists(path):
        os.unlink(path)
    return note


def _plot(summary: dict[str, dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drivers = sorted(summary)
    keys = [("native_failures", "native failures"), ("prevented", "prevented by nooks"),
            ("app_visible_errors", "app-visible errors (nooks)"),
            ("data_check_failures", "data-check failures (nooks)")]
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(keys)
    for i, (key, label) in enumerate(keys):
        ax.bar([d + i * width for d in range(len(drivers))],
               [summary[d][key] for d in drivers], width, label=label)
    ax.set_xticks([d + width * (len(keys) - 1) / 2 for d in range(len(drivers))])
    ax.set_xticklabels([f"{d}\n({summary[d]['faults']} faults)" for d in drivers])
    ax.set_ylabel("runs")
    ax.set_title("Faults injected into drivers: what nooks prevented")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(results: list[RunResult], out_dir: str, command: str, seed: int,
          progress: Progress | None = None) -> Written:
    """summary.json, report.md and (with matplotlib) chart.png in ``out_dir``."""
    summary = summarize(results)
    paths = [os.path.join(out_dir, n) for n in ("report.md", "summary.json", "chart.png")]
    with open(paths[1], "w") as f:
        json.dump(summary, f, indent=2)
    note = chart(summary, paths[2])
    with open(paths[0], "w") as f:
        f.write(markdown(summary, command, seed, out_dir, progress=progress,
                         chart_note=note))
    return Written(summary, paths if note is None else paths[:2], note)
