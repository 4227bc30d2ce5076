"""Strict bencode: concrete vectors for every rejection, plus property tests (round trip,
agreement with bencodepy, hostile bytes never escape as anything but BencodeError)."""

from __future__ import annotations

import enum

import bencodepy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarm.bencode import (
    BencodeError,
    BValue,
    bdecode,
    bdecode_prefix,
    bencode,
    value_span,
)
from swarm.errors import LocalProtocolError, RemoteProtocolError

# Within the default max_int_digits of 32.
_INT_BOUND = 10**32 - 1
values: st.SearchStrategy[BValue] = st.recursive(
    st.integers(-_INT_BOUND, _INT_BOUND) | st.binary(max_size=40),
    lambda children: (
        st.lists(children, max_size=6)
        | st.dictionaries(st.binary(max_size=8), children, max_size=6)
    ),
    max_leaves=40,
)


# --- concrete vectors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"i0e", 0),
        (b"i-7e", -7),
        (b"i123456789012345678901234567890e", 123456789012345678901234567890),
        (b"0:", b""),
        (b"4:spam", b"spam"),
        (b"le", []),
        (b"de", {}),
        (b"l4:spami42ee", [b"spam", 42]),
        (b"d3:bar4:spam3:fooi42ee", {b"bar": b"spam", b"foo": 42}),
        (b"d1:ald1:bi1eeee", {b"a": [{b"b": 1}]}),
        (b"d0:i1e1:ai2ee", {b"": 1, b"a": 2}),
    ],
)
def test_decodes_valid_vectors(data: bytes, expected: BValue) -> None:
    assert bdecode(data) == expected
    assert bencode(expected) == data


@pytest.mark.parametrize(
    ("data", "message", "offset"),
    [
        (b"i03e", "leading zero", 0),
        (b"i-0e", "negative zero", 0),
        (b"i-03e", "leading zero", 0),
        (b"ie", "empty integer", 0),
        (b"i-e", "empty integer", 0),
        (b"i1x2e", "non-digit", 0),
        (b"i+1e", "non-digit", 0),
        (b"i 1e", "non-digit", 0),
        (b"i1_0e", "non-digit", 0),
        (b"i--1e", "non-digit", 0),
        (b"li1ei" + b"9" * 33 + b"ee", "longer than 32 digits", 4),
        (b"i" + b"9" * 5000, "longer than 32 digits", 0),
        (b"03:abc", "leading zero", 0),
        (b"l00:e", "leading zero", 1),
        (b"5:ab", "exceeds the 2 bytes", 0),
        (b"99999999999:x", "more than 3 digits exceeds the input", 0),
        (b"100:" + b"x" * 99, "100 exceeds the 99 bytes", 0),
        (b"9" * 40 + b":x", "more than 3 digits exceeds the input", 0),
        (b"1x:a", "non-digit", 0),
        (b"d1:bi1e1:ai2ee", "not sorted", 9),
        (b"d1:ai1e1:ai2ee", "duplicate dict key b'a'", 9),
        (b"di1ei2ee", "dict key must be a byte string", 1),
        (b"dli1eei2ee", "dict key must be a byte string", 1),
        (b"dd1:aeei2ee", "dict key must be a byte string", 1),
        (b"d1:ae", "has no value", 4),
        (b"l" * 65 + b"e" * 65, "nesting deeper than 64", 64),
        (b"i1ei2e", "3 trailing bytes", 3),
        (b"4:spamX", "1 trailing bytes", 6),
        (b"", "input ended", 0),
        (b"i12", "input ended", 3),
        (b"i", "input ended", 1),
        (b"12", "input ended", 2),
        (b"l4:spam", "input ended", 7),
        (b"d1:a", "input ended", 4),
        (b"x", "unknown type byte 'x'", 0),
        (b"l\xffe", "unknown type byte", 1),
        (b"e", "'e' outside", 0),
    ],
)
def test_rejects_with_message_and_offset(data: bytes, message: str, offset: int) -> None:
    with pytest.raises(BencodeError) as info:
        bdecode(data)
    assert message in str(info.value)
    assert info.value.offset == offset
    assert str(info.value).startswith("bencode: ")
    assert f"at offset {offset}" in str(info.value)
    assert info.value.truncated == ("input ended" in message or "exceeds" in message)


def test_error_is_a_remote_protocol_error_and_value_error() -> None:
    with pytest.raises(RemoteProtocolError):
        bdecode(b"i03e")
    with pytest.raises(ValueError, match="leading zero"):
        bdecode(b"i03e")


def test_limits() -> None:
    with pytest.raises(BencodeError, match="larger than max_size 10"):
        bdecode(b"11:hello world", max_size=10)
    assert bdecode(b"10:helloworld", max_size=13) == b"helloworld"
    assert bdecode(b"l" * 3 + b"e" * 3, max_depth=3) == [[[]]]
    with pytest.raises(BencodeError, match="nesting deeper than 2"):
        bdecode(b"l" * 3 + b"e" * 3, max_depth=2)
    assert bdecode(b"i-12345e", max_int_digits=5) == -12345
    with pytest.raises(BencodeError, match="longer than 5 digits"):
        bdecode(b"i123456e", max_int_digits=5)
    assert bdecode(b"li1ei2ei3ee", max_items=4) == [1, 2, 3]
    with pytest.raises(BencodeError, match="more than 4 items"):
        bdecode(b"li1ei2ei3ei4ee", max_items=4)
    with pytest.raises(BencodeError, match="more than 3 items"):
        bdecode(b"lllleeee", max_items=3)


def test_deep_nesting_is_bounded_without_recursion() -> None:
    # A million nested lists: rejected at the limit, no RecursionError, no memory blow-up.
    hostile = b"l" * 1_000_000 + b"e" * 1_000_000
    with pytest.raises(BencodeError, match="nesting deeper than 64 at offset 64"):
        bdecode(hostile, max_size=len(hostile))
    # Even with the depth limit lifted the decoder does not recurse.
    assert bdecode(b"l" * 5000 + b"e" * 5000, max_depth=10_000) is not None


def test_huge_claimed_string_length_does_not_allocate() -> None:
    with pytest.raises(BencodeError, match="exceeds"):
        bdecode(b"99999999999999:abc")


def test_strict_order_can_be_relaxed_but_duplicates_never() -> None:
    assert bdecode(b"d1:bi1e1:ai2ee", strict_order=False) == {b"a": 2, b"b": 1}
    with pytest.raises(BencodeError, match="duplicate dict key b'b'"):
        bdecode(b"d1:bi1e1:ai2e1:bi3ee", strict_order=False)
    with pytest.raises(BencodeError, match="duplicate"):
        bdecode(b"d1:ai1e1:ai2ee", strict_order=False)


def test_accepts_bytearray_and_memoryview() -> None:
    assert bdecode(bytearray(b"l1:ae")) == [b"a"]
    assert bdecode(memoryview(b"xxl1:ae")[2:]) == [b"a"]
    assert isinstance(bdecode(memoryview(b"1:a")), bytes)


def test_decode_of_non_bytes_is_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        bdecode("i1e")  # type: ignore[arg-type]


# --- bdecode_prefix -----------------------------------------------------------------------------


def test_prefix_returns_value_and_end_leaving_the_rest() -> None:
    # A ut_metadata 'data' message: the dict, then the raw metadata piece.
    msg = b"d8:msg_typei1e5:piecei0e10:total_sizei3ee" + b"XYZ"
    value, end = bdecode_prefix(msg)
    assert value == {b"msg_type": 1, b"piece": 0, b"total_size": 3}
    assert msg[end:] == b"XYZ"


def test_prefix_max_size_bounds_the_value_not_the_buffer() -> None:
    value, end = bdecode_prefix(b"i1e" + b"\x00" * 1000, max_size=10)
    assert (value, end) == (1, 3)
    with pytest.raises(BencodeError, match="larger than max_size 10"):
        bdecode_prefix(b"20:" + b"a" * 20, max_size=10)
    with pytest.raises(BencodeError, match="20 exceeds the 5 bytes"):
        bdecode_prefix(b"20:" + b"a" * 5, max_size=100)


def test_prefix_rejects_bad_values() -> None:
    with pytest.raises(BencodeError, match="leading zero"):
        bdecode_prefix(b"i01eXXX")


# --- value_span ---------------------------------------------------------------------------------


def test_value_span_gives_original_bytes() -> None:
    info = b"d6:lengthi3e4:name1:ne"
    torrent = b"d8:announce3:url4:info" + info + b"1:zli1eee"
    start, end = value_span(torrent, (b"info",))
    assert torrent[start:end] == info
    start, end = value_span(torrent, (b"info", b"name"))
    assert torrent[start:end] == b"1:n"
    assert value_span(torrent, ()) == (0, len(torrent))


def test_value_span_errors() -> None:
    torrent = b"d8:announce3:url4:infod4:name1:nee"
    with pytest.raises(BencodeError, match="key b'nope' not found"):
        value_span(torrent, (b"nope",))
    with pytest.raises(BencodeError, match="not a dict"):
        value_span(torrent, (b"announce", b"x"))
    with pytest.raises(BencodeError, match="not a dict"):
        value_span(b"li1ee", (b"info",))
    with pytest.raises(BencodeError, match="not sorted"):
        value_span(b"d1:bi1e1:ai2ee", (b"a",))
    with pytest.raises(BencodeError, match="leading zero"):
        value_span(b"d1:ai01e1:bi1ee", (b"b",))
    with pytest.raises(BencodeError, match="input ended"):
        value_span(b"d1:ai1e", (b"b",))


@given(st.dictionaries(st.binary(max_size=6), values, min_size=1, max_size=6), st.data())
def test_value_span_matches_reencoding(d: dict[bytes, BValue], data: st.DataObject) -> None:
    key = data.draw(st.sampled_from(sorted(d)))
    enc = bencode(d)
    start, end = value_span(enc, (key,))
    assert enc[start:end] == bencode(d[key])


# --- encoder ------------------------------------------------------------------------------------


def test_encode_str_and_sorting() -> None:
    assert bencode("é") == b"2:\xc3\xa9"
    assert bencode({b"b": 1, "a": "x"}) == b"d1:a1:x1:bi1ee"  # type: ignore[dict-item]
    # Sorted as raw bytes, not as text.
    assert bencode({b"\xff": 1, b"a": 2, b"B": 3}) == b"d1:Bi3e1:ai2e1:\xffi1ee"


class _Num(enum.IntEnum):
    SEVEN = 7


@pytest.mark.parametrize(
    "bad",
    [True, False, 1.5, None, (1, 2), {1: 2}, {b"a": 1, "a": 2}, [None], {b"k": True}, object()],
)
def test_encode_rejects_misuse(bad: object) -> None:
    with pytest.raises(LocalProtocolError, match="bencode: "):
        bencode(bad)  # type: ignore[arg-type]


def test_encode_accepts_int_and_bytes_subclasses() -> None:
    assert bencode([_Num.SEVEN, bytearray(b"ab")]) == b"li7e2:abe"  # type: ignore[list-item]


def test_encode_cycle_is_bounded() -> None:
    cyclic: list[BValue] = []
    cyclic.append(cyclic)
    with pytest.raises(LocalProtocolError, match="nesting deeper"):
        bencode(cyclic)


# --- properties ---------------------------------------------------------------------------------


@given(values)
def test_round_trip(value: BValue) -> None:
    enc = bencode(value)
    assert bdecode(enc) == value
    assert bdecode_prefix(enc + b"trailing") == (value, len(enc))


@given(values)
def test_encoder_agrees_with_bencodepy(value: BValue) -> None:
    enc = bencode(value)
    assert enc == bencodepy.encode(value)
    assert bencodepy.decode(enc) == value


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_bencode_error(data: bytes) -> None:
    try:
        value = bdecode(data)
    except BencodeError:
        return
    # Anything accepted is canonical: it re-encodes to exactly the input.
    assert bencode(value) == data


@settings(max_examples=300)
@given(values, st.data())
def test_mutated_encodings_raise_only_bencode_error(value: BValue, data: st.DataObject) -> None:
    enc = bytearray(bencode(value))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        i = data.draw(st.integers(0, len(enc)))
        if op == "flip" and i < len(enc):
            enc[i] = data.draw(st.sampled_from(b"0123456789ilde:-x\xff"))
        elif op == "cut":
            del enc[i:]
        else:
            enc[i:i] = data.draw(st.sampled_from([b"0", b"e", b"i", b"l", b"d", b"9999:", b"-"]))
    try:
        out = bdecode(enc)
    except BencodeError:
        return
    assert bencode(out) == bytes(enc)


@given(values)
def test_every_truncation_is_rejected(value: BValue) -> None:
    enc = bencode(value)
    for cut in range(len(enc)):
        with pytest.raises(BencodeError):
            bdecode(enc[:cut])


@given(values)
def test_unsorted_dicts_are_rejected_when_strict(value: BValue) -> None:
    # Swap the first two keys of a two-key dict wrapping the value.
    good = bencode({b"a": value, b"b": 0})
    bad = b"d1:bi0e1:a" + bencode(value) + b"e"
    assert bdecode(good) == {b"a": value, b"b": 0}
    with pytest.raises(BencodeError, match="not sorted"):
        bdecode(bad)
    assert bdecode(bad, strict_order=False) == {b"a": value, b"b": 0}


@given(st.integers(min_value=1, max_value=200))
def test_depth_limit_is_exact(depth: int) -> None:
    nested = b"l" * depth + b"e" * depth
    assert bdecode(nested, max_depth=depth) is not None
    with pytest.raises(BencodeError, match="nesting deeper"):
        bdecode(nested, max_depth=depth - 1)
