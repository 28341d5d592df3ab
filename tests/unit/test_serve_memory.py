"""What a direct-mode server keeps for the next drivers' servers (the exceptions a
driver raised, the errors a fresh driver confirmed): read back by a successor, and
compacted, not lost, when the log fills."""

from __future__ import annotations

from typing import Any

from nooks.fs import kernelproto as kp
from nooks.fs.nodes import Nodes
from nooks.fs.serve import Server
from tests.conftest import anonymous_log


class NoDriver:
    def implemented(self) -> list[str]:
        return []

    def uses_ns(self) -> bool:
        return False

    def stores_per_request(self) -> bool:
        return False

    def request_done(self) -> None:
        pass


def server(nodes: Any, raised: Any) -> Server:
    s = Server(-1, NoDriver(), Nodes(nodes))
    s.lenient_after(raised)
    return s


def test_a_successor_knows_what_its_predecessors_learnt_even_past_a_full_log() -> None:
    with anonymous_log(4096) as nodes, anonymous_log(2048) as raised:
        first = server(nodes, raised)
        for i in range(400):  # far more than 2 KiB of records: compacted on the way
            first._trust(kp.Op.READ, 5 if i % 2 else 28)
        first._raised(("getxattr", "KeyError"))  # (after: into a log that filled)
        second = server(nodes, raised)
        assert ("getxattr", "KeyError") in second.lenient
        assert second._trusted(kp.Op.READ, 5) and second._trusted(kp.Op.READ, 28)
        assert not second._trusted(kp.Op.WRITE, 5)
