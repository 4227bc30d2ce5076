"""The box's uTP refusal: a SYN gets an ST_RESET on the SYN's connection id."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from swarm.utp import reset_for_syn

HEADER = struct.Struct(">BBHIIIHH")


def test_a_syn_is_answered_with_a_reset_on_its_connection_id() -> None:
    syn = HEADER.pack(0x41, 0, 0xE213, 1000, 0, 0, 0x8B55, 0)
    reset = reset_for_syn(syn, now_us=5000)
    assert reset is not None
    kind, ext, conn, ts, diff, _wnd, _seq, ack = HEADER.unpack(reset)
    assert (kind, ext, conn, ts, diff, ack) == (0x31, 0, 0xE213, 5000, 4000, 0x8B55)


@given(st.binary(max_size=64))
def test_anything_but_a_syn_gets_no_answer(data: bytes) -> None:
    if len(data) < 20 or data[0] != 0x41:
        assert reset_for_syn(data) is None
    else:
        assert reset_for_syn(data) is not None
