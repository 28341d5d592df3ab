"""The class's checks on a card: a frame goes on the wire only if the system gave
it, once; a burst in flight when the driver failed may go once more (the old
driver may have sent part of it before it died)."""

from __future__ import annotations

import pytest

from nooks.net.card import Card, Refused

FRAME = bytes.fromhex("525400abcdef525400000001") + b"\x08\x00" + bytes(28)  # a runt


def test_a_frame_goes_once_and_once_more_only_if_it_was_in_flight() -> None:
    wire: list[bytes] = []
    card = Card("rtl8139", bytes.fromhex("525400000001"), wire.append, lambda: None)
    try:
        card.gave(FRAME)
        card._send(FRAME + bytes(60 - len(FRAME)))  # padded to 60 bytes, as drivers do
        with pytest.raises(Refused):
            card._send(FRAME)  # not given again
        card.regive([FRAME])  # a fresh driver sends the burst that was in flight
        card.regive([FRAME])  # (at most once more, however often it is said)
        card._send(FRAME)
        with pytest.raises(Refused):
            card._send(FRAME)
        assert len(wire) == 2 and card.counts["tx_refused"] == 2
    finally:
        card.close()
