"""Every shipped class's spec through the spec test kit's whole matrix (nooks.testing)."""

from __future__ import annotations

import pytest

from nooks.fs import kit as fs_kit
from nooks.testing import SpecKit, check
from nooks.web import kit as web_kit

KITS = [*fs_kit.KITS, *web_kit.KITS]


@pytest.mark.parametrize("kit", KITS, ids=[k.name for k in KITS])
def test_every_case_of_the_matrix(kit: SpecKit) -> None:
    result = check(kit)
    assert not result.failed, "\n" + "\n".join(str(c) for c in result.failed)
    # every phase the class's recovery goes through was reached
    assert kit.phases <= result.reached, kit.phases - result.reached


def test_what_holds_state_says_so_in_its_repr() -> None:
    from typing import cast

    from nooks.domain.host import Domain
    from nooks.fs.spec import ROOT_CTX, FsShadow
    from nooks.shadow.engine import Shadow
    from nooks.testing import FakeDomain
    from nooks.web.pool import Worker, WorkerPool

    fs = FsShadow()
    shadow = Shadow(cast(Domain, FakeDomain(fs_kit.MemoryFs, fs_kit.Disk())), fs)
    shadow.call("init", ROOT_CTX, "/")
    fh = shadow.call("create", ROOT_CTX, "/a", 0o644, 0o101)
    assert fh == 1
    assert "passive" in repr(shadow) and "gen=0" in repr(shadow)
    assert "open_handles=1" in repr(fs) and "1 open, 0 lost" in repr(fs.handles)
    pool = WorkerPool([Worker(0, lambda *a: None)], queue_timeout=1, max_queue=2, name="w")
    assert "idle=1" in repr(pool) and "usable=1" in repr(pool)
