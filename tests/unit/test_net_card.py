"""The class's checks on a card: a frame goes on the wire only if the system gave
it, once; a burst in flight when the driver failed may go once more (the old
driver may have sent part of it before it died)."""

from __future__ import annotations

import struct
import time

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


def test_frames_for_this_machine_filtered_out_are_a_stall() -> None:
    from nooks.hw import rtl8139 as r

    own = bytes.fromhex("525400000001")
    card = Card("rtl8139", own, lambda f: None, lambda: None)
    mine = own + bytes(6) + b"\x08\x00" + bytes(46)
    try:
        card.own = (own,)
        regs = card.model.regs
        struct.pack_into("<I", regs, r.RBSTART, 0x8000)
        struct.pack_into("<I", regs, r.RCR, r.RCR_AB)  # broadcasts only: the driver forgot
        card.model.write(r.CR, r.CR_RE | r.CR_TE)
        card.arrived(b"\xff" * 6 + bytes(6) + b"\x08\x06" + bytes(46))  # taken
        card.arrived(bytes.fromhex("02aabbccddee") + bytes(6) + b"\x08\x00" + bytes(46))
        assert card.stalled(1e9, 0.0) is None  # another machine's: filtering it is right
        for n in range(2):  # ours, filtered out: one may be a change of address going on
            assert card.stalled(1e9, 0.0) is None, n
            card.arrived(mine)
        assert "took no frame for this machine" in (card.stalled(1e9, 0.0) or "")
        struct.pack_into("<I", regs, r.RCR, r.RCR_AB | r.RCR_APM)  # set right: taken
        card.arrived(mine)
        assert card.stalled(1e9, 0.0) is None
    finally:
        card.close()


def test_a_frame_passed_up_by_its_place_is_the_wires() -> None:
    """rtl8139's ring: each frame goes in after the last; the driver passes them up by
    place. What it does to its buffer meanwhile does not reach the system; a place,
    a length or a frame passed up already is refused."""
    from nooks.hw import rtl8139 as r

    own = bytes.fromhex("525400000001")
    card = Card("rtl8139", own, lambda f: None, lambda: None)
    first = b"\xff" * 6 + bytes(6) + b"\x08\x06" + bytes(range(46))
    second = b"\xff" * 6 + bytes(6) + b"\x08\x06" + bytes(range(1, 47))
    try:
        regs = card.model.regs
        struct.pack_into("<I", regs, r.RBSTART, 0x8000)
        struct.pack_into("<I", regs, r.RCR, r.RCR_AB)
        card.model.write(r.CR, r.CR_RE | r.CR_TE)
        card.arrived(first)
        card.arrived(second)
        at_first, at_second = 0x8000 + 4, 0x8000 + 4 + (4 + len(first) + 4 + 3 & ~3)
        assert bytes(card.model.dma[at_second:at_second + len(second)]) == second
        card.model.dma[at_first:at_first + 6] = bytes(6)  # the driver scribbles there
        with pytest.raises(Refused):
            card.passed_up_at(at_first, len(first) + 1)  # not the length put there
        with pytest.raises(Refused):
            card.passed_up_at(at_first + 2, len(first))  # nothing begins there
        assert card.passed_up_at(at_first, len(first)) == first  # (as the wire gave it)
        with pytest.raises(Refused):
            card.passed_up_at(at_first, len(first))  # not twice
        assert card.passed_up_at(at_second, len(second)) == second
        assert card.counts["passed_up"] == 2 and card.counts["rx_refused"] == 3
    finally:
        card.close()


def test_frames_put_at_one_place_are_passed_up_oldest_first() -> None:
    """A driver gives a buffer back before the host has run its pass-up (posted): the
    card may put the next frame there first; each pass-up takes the oldest."""
    card = Card("e1000", bytes.fromhex("525400000001"), lambda f: None, lambda: None)
    try:
        def receive(frame: bytes) -> bool:  # a card that puts every frame in one buffer
            card.model.placed(0x4000, frame)
            return True

        card.model.receive = receive  # type: ignore[method-assign]
        one, two = FRAME + b"\x01", FRAME + b"\x02"
        card.arrived(one)
        card.arrived(two)
        assert card.passed_up_at(0x4000, len(one)) is one
        assert card.passed_up_at(0x4000, len(two)) is two
        with pytest.raises(Refused):
            card.passed_up_at(0x4000, len(one))
    finally:
        card.close()


def test_frames_the_driver_took_and_the_card_never_sent_are_a_stall() -> None:
    """A card sends at the doorbell, before the driver's ``xmit`` returns: a frame it
    took that is not on the wire a moment later was lost in the driver, even while
    the frames after it go out."""
    card = Card("rtl8139", bytes.fromhex("525400000001"), lambda f: None, lambda: None)
    try:
        one, two, three = FRAME + b"\x01", FRAME + b"\x02", FRAME + b"\x03"
        for frame in (one, two, three):
            card.gave(frame)
        epoch = card.epoch
        card._send(one)  # sent at the doorbell, during the call
        card.took([one], epoch)  # then its reply
        assert card.stalled(1e9, 1e9, 0.0) is None
        assert not card.reclaimable()  # (no handler has seen its ring since)
        card.polled(time.monotonic() + 1, epoch)
        assert card.reclaimable()  # (a full queue now is a ring never reclaimed)
        card.took([two, three], epoch)  # two lost; three sent a moment later
        card._send(three)
        assert "took 1 frames to send" in (card.stalled(1e9, 1e9, 0.0) or "")
        assert not card.reclaimable()
        card.restart_clocks()  # a fresh driver: what the old one took is not its
        assert card.stalled(1e9, 1e9, 0.0) is None
        card.took([two], epoch)  # the old driver's reply, counted after the recovery
        assert card.stalled(1e9, 1e9, 0.0) is None
    finally:
        card.close()


def test_places_are_kept_for_every_frame_delivered_and_no_more() -> None:
    """Frames past the card's bound of frames delivered and not passed up are
    forgotten oldest first; each of the others may still be passed up by place."""
    from nooks.net.card import MAX_DELIVERED

    card = Card("e1000", bytes.fromhex("525400000001"), lambda f: None, lambda: None)
    try:
        at = iter(range(0, 1 << 30, 64))

        def receive(frame: bytes) -> bool:
            card.model.placed(next(at), frame)
            return True

        card.model.receive = receive  # type: ignore[method-assign]
        frames = [FRAME + i.to_bytes(2, "big") for i in range(MAX_DELIVERED + 1)]
        for frame in frames:
            card.arrived(frame)
        assert len(card._arrived_at) == MAX_DELIVERED  # (the oldest's time went with it)
        with pytest.raises(Refused):
            card.passed_up_at(0, len(frames[0]))  # the oldest: forgotten
        for i, frame in enumerate(frames[1:], 1):
            assert card.passed_up_at(64 * i, len(frame)) is frame
        assert not card._at and not card._place and not card._arrived_at
    finally:
        card.close()


def test_a_frame_an_interrupt_handler_left_in_the_ring_is_a_stall() -> None:
    """A handler that began after a frame came polls the ring it is in: a driver whose
    poll stops short of the card's write pointer (one frame behind) leaves it there
    while later frames go up."""
    from nooks.hw import rtl8139 as r

    card = Card("rtl8139", bytes.fromhex("525400000001"), lambda f: None, lambda: None)
    frame = b"\xff" * 6 + bytes(6) + b"\x08\x06" + bytes(46)
    try:
        struct.pack_into("<I", card.model.regs, r.RBSTART, 0x8000)
        struct.pack_into("<I", card.model.regs, r.RCR, r.RCR_AB)
        card.model.write(r.CR, r.CR_RE | r.CR_TE)
        epoch = card.epoch
        before = time.monotonic() - 1
        card.arrived(frame)
        card.polled(before, epoch)  # a handler that began before it came
        assert card.stalled(1e9, 1e9, 1e9, 0.0) is None
        card.polled(time.monotonic() + 1, epoch + 1)  # a replaced driver's handler
        assert card.stalled(1e9, 1e9, 1e9, 0.0) is None
        card.polled(time.monotonic() + 1, epoch)  # one that began after and left it
        assert "left 1 frames received" in (card.stalled(1e9, 1e9, 1e9, 0.0) or "")
        assert card.stalled(1e9, 1e9, 1e9, 1e9) is None  # (not for long yet)
        card.passed_up_at(0x8000 + 4, len(frame))
        assert card.stalled(1e9, 1e9, 1e9, 0.0) is None and not card._arrived_at
        card.arrived(frame)  # again, and the card powered off: nothing is left of it
        assert card.reset() == [frame] and not card._arrived_at
    finally:
        card.close()
