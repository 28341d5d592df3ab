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
