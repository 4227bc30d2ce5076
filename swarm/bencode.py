"""Strict, bounded bencode (BEP 3) decoder and canonical encoder.

Why it is built this way
------------------------
* Every bencoded byte we read comes from someone else: a .torrent, a tracker reply, a peer's
  extension handshake, a ut_metadata piece, a KRPC datagram. So the decoder is *strict* (one
  value has exactly one accepted encoding: no leading zeros, no ``i-0e``, dict keys sorted and
  unique) and *bounded* (input size, nesting depth, integer digits, item count). Strictness is
  what makes ``info_hash`` well defined: a torrent whose info dict could be re-encoded to other
  bytes would hash to a different swarm than the one its author meant.
* The decoder is our own rather than ``bencode.py``'s (``bencodepy``), which the design card
  names for bencoding: bencodepy has no limit on input size or item count, recurses once per
  nesting level (a few thousand ``l`` bytes raise ``RecursionError``), accepts unsorted and
  duplicate keys, and raises assorted builtin errors instead of one error with an offset.
* The encoder is our own too. bencodepy's encoder does not fit: it silently encodes ``True``
  as ``i1e`` (a bug in the caller should be loud), dispatches on the exact type so an
  ``IntEnum`` raises ``KeyError``, writes a dict whose ``str`` and ``bytes`` keys collide after
  UTF-8 conversion as two identical keys (output our own decoder rejects), and recurses without
  a bound. Wrapping it would take a validating walk over the whole value first, which is as
  much work as encoding, so the encoder below is one walk that checks and writes. bencodepy
  stays as an independent oracle: the unit tests check both encoders agree byte for byte.
* Fast: strings are taken with one C-level slice after one bounded ``find(b":")``; integers
  with one bounded ``find(b"e")`` and one ``int()``. There is no per-byte Python loop, and the
  claimed length of a string is compared with the remaining input before anything is sliced.
* No recursion in the decoder: containers being filled live on an explicit stack whose height
  is checked against ``max_depth``, so hostile nesting costs one list append per level.

Theory of operation
-------------------
``_decode`` reads one value starting at an offset. It loops over *tokens*; a token is an
integer, a string, the start of a list or dict (pushed on the stack) or ``e`` (pops the stack
and yields the finished container). A finished value is attached to the container on top of
the stack: appended to a list, or alternately stored as a dict key (which must be a string,
greater than the previous key) and that key's value. When the stack is empty the value is
complete and its end offset is returned. ``bdecode`` demands the end be the end of input,
``bdecode_prefix`` returns it, and ``value_span`` walks dict keys to report where a nested value
sits in the original bytes (the exact bytes to hash for an ``info_hash``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, NoReturn, TypeAlias

from swarm.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_INT_DIGITS",
    "DEFAULT_MAX_ITEMS",
    "DEFAULT_MAX_SIZE",
    "BValue",
    "BencodeError",
    "Value",
    "bdecode",
    "bdecode_prefix",
    "bencode",
    "value_span",
]

BValue: TypeAlias = int | bytes | list["BValue"] | dict[bytes, "BValue"]
Value: TypeAlias = BValue

DEFAULT_MAX_SIZE: Final = 16 << 20
DEFAULT_MAX_DEPTH: Final = 64
DEFAULT_MAX_INT_DIGITS: Final = 32
DEFAULT_MAX_ITEMS: Final = 1_000_000

# Our own values are trusted, but a self-referencing list would otherwise recurse for ever.
_ENCODE_MAX_DEPTH: Final = 256

_I: Final = ord("i")
_L: Final = ord("l")
_D: Final = ord("d")
_E: Final = ord("e")
_ZERO: Final = ord("0")
_NINE: Final = ord("9")
_MINUS: Final = ord("-")


class BencodeError(RemoteProtocolError):
    """Input is not strict, bounded bencode.

    ``offset`` is where the problem was found; ``truncated`` is True when the input ended
    inside a value (more bytes might have made it valid).
    """

    def __init__(self, msg: str, offset: int, *, truncated: bool = False) -> None:
        super().__init__(f"bencode: {msg} at offset {offset}")
        self.offset = offset
        self.truncated = truncated


def _truncated(msg: str, offset: int) -> BencodeError:
    return BencodeError(msg, offset, truncated=True)


class _Frame:
    # One container being filled. A dict frame alternates between waiting for a key
    # (key is None) and waiting for that key's value.
    __slots__ = ("container", "is_dict", "key", "last_key", "start")

    def __init__(self, container: list[BValue] | dict[bytes, BValue], start: int) -> None:
        self.container = container
        self.is_dict = isinstance(container, dict)
        self.key: bytes | None = None
        self.last_key: bytes | None = None
        self.start = start


def _as_bytes(data: bytes | bytearray | memoryview) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    raise LocalProtocolError(
        f"bencode: can only decode bytes-like input, not {type(data).__name__}"
    )


def _decode(
    buf: bytes,
    pos: int,
    *,
    max_depth: int,
    max_int_digits: int,
    max_items: int,
    strict_order: bool,
) -> tuple[BValue, int]:
    n = len(buf)
    # Digits of a string length: anything longer than the buffer's own length is too long.
    len_digits = len(str(n)) + 1
    stack: list[_Frame] = []
    items = 0
    while True:
        if pos >= n:
            raise _truncated("input ended inside a value", pos)
        c = buf[pos]
        top = stack[-1] if stack else None
        if (
            top is not None
            and top.is_dict
            and top.key is None
            and c != _E
            and not (_ZERO <= c <= _NINE)
        ):
            raise BencodeError(f"dict key must be a byte string, found {chr(c)!r}", pos)
        value: BValue
        if _ZERO <= c <= _NINE:
            seg = buf[pos : pos + len_digits + 1]
            colon = seg.find(b":")
            if colon < 0:
                # More digits than the input's own length has: cannot fit, whatever follows.
                too_long = f"with more than {len(seg) - 1} digits exceeds the input left"
                _no_terminator(seg, pos, pos + len(seg), n, "string length", too_long, True)
            colon += pos
            digits = buf[pos:colon]
            if not digits.isdigit():
                raise BencodeError(f"non-digit in string length {digits!r}", pos)
            if len(digits) > 1 and digits[0] == _ZERO:
                raise BencodeError("string length with leading zero", pos)
            length = int(digits)
            start = colon + 1
            if length > n - start:
                raise _truncated(
                    f"string length {length} exceeds the {n - start} bytes of input left", pos
                )
            value = buf[start : start + length]
            pos = start + length
        elif c == _I:
            # A bounded search: a 1 MB run of digits costs no more than max_int_digits bytes.
            end = buf.find(b"e", pos + 1, pos + max_int_digits + 3)
            if end < 0:
                seg = buf[pos + 1 : pos + max_int_digits + 3]
                too_long = f"longer than {max_int_digits} digits"
                _no_terminator(
                    seg.removeprefix(b"-"), pos, pos + 1 + len(seg), n, "integer", too_long, False
                )
            digits = buf[pos + 1 : end]
            negative = digits[:1] == b"-"
            body = digits[1:] if negative else digits
            if not body:
                raise BencodeError("empty integer", pos)
            if not body.isdigit():
                raise BencodeError(f"non-digit in integer {digits!r}", pos)
            if len(body) > max_int_digits:
                raise BencodeError(f"integer longer than {max_int_digits} digits", pos)
            if body[0] == _ZERO and (len(body) > 1 or negative):
                what = "negative zero" if len(body) == 1 else "leading zero"
                raise BencodeError(f"integer with {what}", pos)
            value = int(digits)
            pos = end + 1
        elif c in (_L, _D):
            if len(stack) >= max_depth:
                raise BencodeError(f"nesting deeper than {max_depth}", pos)
            items += 1
            if items > max_items:
                raise BencodeError(f"more than {max_items} items", pos)
            stack.append(_Frame({} if c == _D else [], pos))
            pos += 1
            continue
        elif c == _E:
            if top is None:
                raise BencodeError("'e' outside any list or dict", pos)
            if top.key is not None:
                raise BencodeError(f"dict key {top.key!r} has no value", pos)
            stack.pop()
            value = top.container
            top = stack[-1] if stack else None
            pos += 1
            # The container was counted when it was opened.
            items -= 1
        else:
            raise BencodeError(f"unknown type byte {chr(c)!r}", pos)

        items += 1
        if items > max_items:
            raise BencodeError(f"more than {max_items} items", pos)
        if top is None:
            return value, pos
        if not top.is_dict:
            top.container.append(value)  # type: ignore[union-attr]
        elif top.key is None:
            # Checked above that a key starts with a digit, so this is bytes.
            assert isinstance(value, bytes)
            last = top.last_key
            if last is not None and value <= last:
                if value == last:
                    raise BencodeError(f"duplicate dict key {value!r}", pos - len(value))
                if strict_order:
                    raise BencodeError(
                        f"dict key {value!r} not sorted (after {last!r})", pos - len(value)
                    )
                if value in top.container:
                    raise BencodeError(f"duplicate dict key {value!r}", pos - len(value))
            if last is None or value > last:
                top.last_key = value
            top.key = value
        else:
            top.container[top.key] = value  # type: ignore[call-overload]
            top.key = None


def _no_terminator(
    seg: bytes, pos: int, seg_end: int, n: int, what: str, too_long: str, truncates: bool
) -> NoReturn:
    # The bounded search for ':' or 'e' failed: tell a bad byte from a cut-off input from a
    # run of digits too long to be honest.
    if seg and not seg.isdigit():
        bad = next(b for b in seg if not _ZERO <= b <= _NINE)
        raise BencodeError(f"non-digit {chr(bad)!r} in {what}", pos)
    if seg_end >= n:
        raise _truncated(f"input ended inside {what} digits", n)
    raise BencodeError(f"{what} {too_long}", pos, truncated=truncates)


def bdecode(
    data: bytes | bytearray | memoryview,
    *,
    max_size: int = DEFAULT_MAX_SIZE,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_int_digits: int = DEFAULT_MAX_INT_DIGITS,
    max_items: int = DEFAULT_MAX_ITEMS,
    strict_order: bool = True,
) -> BValue:
    """Decode exactly one bencoded value that fills the whole of ``data``.

    Raises :class:`BencodeError` for anything not strict bencode, for input over a limit, for
    truncated input and for bytes after the value. ``strict_order=False`` accepts dict keys out
    of order (some DHT nodes send them); duplicate keys are rejected either way, because which
    of two values a reader would keep is a guess.
    """
    if len(data) > max_size:
        raise BencodeError(f"input of {len(data)} bytes larger than max_size {max_size}", 0)
    buf = _as_bytes(data)
    value, end = _decode(
        buf,
        0,
        max_depth=max_depth,
        max_int_digits=max_int_digits,
        max_items=max_items,
        strict_order=strict_order,
    )
    if end != len(buf):
        raise BencodeError(f"{len(buf) - end} trailing bytes after the value", end)
    return value


def bdecode_prefix(
    data: bytes | bytearray | memoryview,
    *,
    max_size: int = DEFAULT_MAX_SIZE,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_int_digits: int = DEFAULT_MAX_INT_DIGITS,
    max_items: int = DEFAULT_MAX_ITEMS,
    strict_order: bool = True,
) -> tuple[BValue, int]:
    """Decode one bencoded value at the start of ``data``; return it and its end offset.

    Whatever follows the value is left alone (the raw piece after a ut_metadata ``data``
    message's dict). ``max_size`` bounds the value itself, not ``data``: only the first
    ``max_size`` bytes are looked at (and copied, for a bytearray or memoryview).
    """
    clipped = len(data) > max_size
    buf = _as_bytes(data[:max_size] if clipped else data)
    try:
        return _decode(
            buf,
            0,
            max_depth=max_depth,
            max_int_digits=max_int_digits,
            max_items=max_items,
            strict_order=strict_order,
        )
    except BencodeError as exc:
        if clipped and exc.truncated:
            raise BencodeError(f"value larger than max_size {max_size}", exc.offset) from None
        raise


def value_span(
    data: bytes | bytearray | memoryview,
    path: tuple[bytes, ...],
    *,
    max_size: int = DEFAULT_MAX_SIZE,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_int_digits: int = DEFAULT_MAX_INT_DIGITS,
    max_items: int = DEFAULT_MAX_ITEMS,
    strict_order: bool = True,
) -> tuple[int, int]:
    """``(start, end)`` of the value at ``path`` (dict keys, outermost first) in ``data``.

    ``data[start:end]`` are the original bytes of that value, e.g. ``value_span(torrent,
    (b"info",))`` is what an ``info_hash`` is computed over. Everything walked on the way is
    decoded strictly with the same limits; the rest of ``data`` is not looked at, so callers
    that need the whole input validated call :func:`bdecode` on it too. A missing key or a
    step into something that is not a dict is a :class:`BencodeError`.
    """
    if len(data) > max_size:
        raise BencodeError(f"input of {len(data)} bytes larger than max_size {max_size}", 0)
    buf = _as_bytes(data)
    limits = {
        "max_depth": max_depth,
        "max_int_digits": max_int_digits,
        "max_items": max_items,
        "strict_order": strict_order,
    }
    start, end = 0, len(buf)
    for depth, want in enumerate(path):
        if depth >= max_depth:
            raise BencodeError(f"nesting deeper than {max_depth}", start)
        if start >= len(buf) or buf[start] != _D:
            raise BencodeError(f"value on the way to key {want!r} is not a dict", start)
        pos = start + 1
        last: bytes | None = None
        while True:
            if pos >= len(buf):
                raise _truncated("input ended inside a dict", pos)
            if buf[pos] == _E:
                raise BencodeError(f"key {want!r} not found in dict", start)
            if not _ZERO <= buf[pos] <= _NINE:
                raise BencodeError(f"dict key must be a byte string, found {chr(buf[pos])!r}", pos)
            key, pos = _decode(buf, pos, **limits)  # type: ignore[arg-type]
            assert isinstance(key, bytes)
            if last is not None and key <= last and (strict_order or key == last):
                raise BencodeError(f"dict key {key!r} duplicate or not sorted", pos - len(key))
            last = key
            value_start = pos
            # Depth left for the value below this dict.
            sub = dict(limits, max_depth=max_depth - depth - 1)
            _, pos = _decode(buf, pos, **sub)  # type: ignore[arg-type]
            if key == want:
                start, end = value_start, pos
                break
    return start, end


def bencode(value: BValue | str) -> bytes:
    """Canonical bencoding of ``value``: dict keys sorted, ``str`` written as UTF-8.

    ``str`` is accepted anywhere a byte string is, dict keys included. ``bool``, ``float``,
    ``None``, tuples and anything else raise :class:`LocalProtocolError`: encoding them would
    hide a bug (``True`` is not a protocol integer). So do two keys equal after UTF-8
    conversion and nesting deeper than 256.
    """
    out: list[bytes] = []
    _encode(value, out, 0)
    return b"".join(out)


def _encode(value: object, out: list[bytes], depth: int) -> None:
    # Exact type checks first: bool is an int subclass and must not pass as one.
    t = type(value)
    if t is bytes:
        out.append(b"%d:" % len(value))  # type: ignore[arg-type]
        out.append(value)  # type: ignore[arg-type]
    elif t is int:
        out.append(b"i%de" % value)  # type: ignore[str-format]
    elif t is str:
        raw = value.encode("utf-8")  # type: ignore[attr-defined]
        out.append(b"%d:" % len(raw))
        out.append(raw)
    elif t is list or t is dict:
        if depth >= _ENCODE_MAX_DEPTH:
            raise LocalProtocolError(f"bencode: nesting deeper than {_ENCODE_MAX_DEPTH}")
        if t is list:
            out.append(b"l")
            for item in value:  # type: ignore[attr-defined]
                _encode(item, out, depth + 1)
        else:
            out.append(b"d")
            for key, item in _sorted_items(value.items()):  # type: ignore[attr-defined]
                out.append(b"%d:" % len(key))
                out.append(key)
                _encode(item, out, depth + 1)
        out.append(b"e")
    elif isinstance(value, bool) or value is None or isinstance(value, float):
        raise LocalProtocolError(f"bencode: cannot encode {value!r}")
    elif isinstance(value, int):
        # IntEnum and friends: their int value, not their repr.
        _encode(int(value), out, depth)
    elif isinstance(value, bytes | bytearray | memoryview):
        _encode(bytes(value), out, depth)
    elif isinstance(value, str):
        _encode(str(value), out, depth)
    else:
        raise LocalProtocolError(f"bencode: cannot encode a {t.__name__}: {value!r:.60}")


def _sorted_items(items: Iterable[tuple[object, object]]) -> list[tuple[bytes, object]]:
    pairs: list[tuple[bytes, object]] = []
    for key, item in items:
        if type(key) is bytes:
            raw = key
        elif isinstance(key, str):
            raw = key.encode("utf-8")
        elif isinstance(key, bytes | bytearray | memoryview):
            raw = bytes(key)
        else:
            raise LocalProtocolError(f"bencode: dict key must be bytes or str, not {key!r:.60}")
        pairs.append((raw, item))
    pairs.sort(key=lambda p: p[0])
    for i in range(1, len(pairs)):
        if pairs[i][0] == pairs[i - 1][0]:
            raise LocalProtocolError(f"bencode: two dict keys encode to {pairs[i][0]!r}")
    return pairs
