"""The campaign on the web class, through the real command: eleven faults (one of each
type) in the static server and in the Flask shop, each run natively and under nooks
with curl as the client; every native failure is prevented, and the ledger check
finds what a broken application did to it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nooks.eval.webload import Ledger, check_ledger

pytestmark = pytest.mark.timeout(900)


def test_eleven_faults_each_in_static_and_flask(tmp_path: Path) -> None:
    out = tmp_path / "campaign"
    r = subprocess.run([sys.executable, "-m", "nooks", "eval", "reliability", "--driver",
                        "static", "--driver", "flask", "--faults", "11", "--jobs", "2",
                        "--seed", "3", "--out", str(out)], capture_output=True, text=True,
                       check=False, timeout=800)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(lines) == 44
    summary = json.loads((out / "summary.json").read_text())
    for driver in ("static", "flask"):
        runs = {(x["index"], x["mode"]): x for x in lines if x["driver"] == driver}
        kinds = {runs[(i, "native")]["kind"] for i in range(11)}
        assert {"panic", "hang"} <= kinds
        failed = [i for i in range(11) if runs[(i, "native")]["outcome"] == "system failure"]
        assert failed, f"{driver}: no fault brought the native server down"
        assert all(runs[(i, "nooks")]["outcome"] != "system failure" for i in failed)
        assert summary[driver]["prevented"] == summary[driver]["native_failures"] == len(failed)
        assert any(runs[(i, "nooks")]["outcome"] == "recovered" for i in range(11))


def _line(kind: str, key: str, **extra: object) -> str:
    return json.dumps({"kind": kind, "key": key, **extra})


def test_the_ledger_check_finds_what_ran_twice_or_not_at_all(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    order = {"key": "k1", "item": "fig", "qty": 2, "total": 22}
    book = Ledger(orders={"k1": order, "k2": {**order, "key": "k2"}}, noted={"n1", "n2"},
                  notes_sent={"n1", "n2", "n3"})
    path.write_text("\n".join([_line("order", "k1", order=order), _line("note", "n1"),
                               _line("note", "n1"), _line("note", "n3"),
                               _line("note", "n9")]) + "\n")
    assert check_ledger(str(path), book) == [
        "data: ledger: note n1 ran 2 times",
        "data: ledger: order k2 answered as placed is not in it",
        "data: ledger: note n2 answered 201 is not in it",
        "data: ledger: note n9 was never sent",
    ]
    path.write_text(_line("order", "k1", order=order) + "\n")
    assert check_ledger(str(path), Ledger(orders={"k1": order})) == []
    path.write_text(_line("order", "k1", order={**order, "total": 21}) + "\n")
    assert check_ledger(str(path), Ledger(orders={"k1": order})) == [
        "data: ledger: order k1 differs from its answer"]
