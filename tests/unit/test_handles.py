"""The kernel's file handles: handed out at open, given back at release, and the
same table rebuilt from the log (without the dead driver's own handles)."""

from __future__ import annotations

import os

from nooks.fs.handles import Handles
from tests.conftest import anonymous_log


def test_handles_are_rebuilt_without_the_drivers_own() -> None:
    with anonymous_log(1024) as log:
        table = Handles(log)
        a = table.opened(5, os.O_RDWR, driver=17)
        b = table.opened(6, 0, driver=18, directory=True)
        for i in range(200):  # (the log fills and is compacted on the way)
            table.closed(table.opened(7, os.O_RDONLY, driver=100 + i))
        assert table.handles[a].driver == 17
        again = Handles(log)
        assert set(again.handles) == {a, b}
        assert (again.handles[a].node, again.handles[a].flags) == (5, os.O_RDWR)
        assert again.handles[b].directory and again.handles[a].driver is None
        assert again.opened(8, 0, driver=1) not in (a, b)  # (never one still held)
