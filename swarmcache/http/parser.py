"""Strict sans-IO HTTP/1.1 message reader and serializer for the subscriber data path.

Why it is built this way
------------------------
* No I/O (h11's model): callers ``feed()`` bytes, ``feed(b"")`` meaning EOF, and pull events
  with ``next_event()`` until it returns ``NEED_DATA``. The same code serves the client side
  (:class:`RequestReader`), the origin side (:class:`ResponseReader`), tests and fuzzers.
* Strict, because a shared cache is a request-smuggling target (design brief §3a): whatever two
  implementations could frame differently (Content-Length with Transfer-Encoding, conflicting
  lengths, bare CR or LF, obsolete line folding, odd chunk sizes) is rejected, never repaired,
  and after an error the reader stays dead so the connection has to be closed.
* Fast, because every subscriber byte passes through here. A head is checked with a few
  whole-buffer operations that run in C (``find``, ``count``, ``split``, one regex per block),
  never a Python loop per byte. Fed chunks wait in a deque and are merged into the bytearray
  buffer only while a head or a chunk-size line is being looked for, so a body chunk that
  arrives on its own is handed out as it is (no copy). Consumed prefixes are deleted from the
  bytearray (amortised O(1) in CPython) instead of ``bytes += bytes`` (quadratic).

Theory of operation
-------------------
Each reader is a state machine; ``next_event`` runs the step function of the current state
(``_step_<state>``, looked up in a table) until one produces an event or ``NEED_DATA``::

    state        on                                    next state
    HEAD         head with Content-Length n > 0        BODY_LENGTH   (END if n == 0)
    HEAD         head with chunked framing             CHUNK_SIZE
    HEAD         response framed by closing            BODY_CLOSE
    HEAD         head without a body                   END
    HEAD         interim 1xx response (not 101)        HEAD          (same exchange)
    BODY_LENGTH  last body byte                        END
    BODY_CLOSE   EOF                                   DONE          (yields EndOfMessage)
    CHUNK_SIZE   size line "0"                         TRAILERS
    CHUNK_SIZE   size line n > 0                       CHUNK_DATA
    CHUNK_DATA   last byte of the chunk                CHUNK_CRLF
    CHUNK_CRLF   CRLF                                  CHUNK_SIZE
    TRAILERS     empty line                            END
    END          (yields EndOfMessage)                 DONE
    END, DONE    start_next_message()                  HEAD
    any          bad bytes, or EOF inside a message    ERROR         (raises, for ever)

EOF between messages is not an error for requests: ``next_event`` keeps returning
``NEED_DATA`` and ``eof`` is True. A response reader that was told to ``expect()`` a response
treats the same EOF as an error, because a response is owed.
"""

from __future__ import annotations

import enum
import re
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, ClassVar, Final, Generic, TypeAlias, TypeVar

__all__ = [
    "LAST_CHUNK",
    "NEED_DATA",
    "BodyFraming",
    "Data",
    "EndOfMessage",
    "Event",
    "HTTPError",
    "Header",
    "LocalProtocolError",
    "RemoteProtocolError",
    "Request",
    "RequestReader",
    "Response",
    "ResponseReader",
    "chunk",
    "reason_phrase",
    "serialize_request_head",
    "serialize_response_head",
]

Header: TypeAlias = tuple[bytes, bytes]


# --- errors ---------------------------------------------------------------------------------


class HTTPError(Exception):
    """Root of this module's errors."""


class RemoteProtocolError(HTTPError):
    """The peer sent bytes that are not a valid HTTP/1.1 message; close the connection.

    ``status_hint`` is the status a server should answer with (400, 431, 505), or 502 when
    the bad message came from an origin.
    """

    def __init__(self, msg: str, status_hint: int = 400) -> None:
        super().__init__(msg)
        self.status_hint = status_hint


class LocalProtocolError(HTTPError):
    """This process used the API wrongly (a bug here, not in the peer)."""


# --- events ---------------------------------------------------------------------------------


class _HeaderAccess:
    __slots__ = ()
    headers: tuple[Header, ...]
    version: bytes

    def get(self, name: bytes) -> bytes | None:
        """The field's value, several fields joined with ``b", "``; ``name`` in lowercase."""
        values = [v for n, v in self.headers if n == name]
        if not values:
            return None
        return values[0] if len(values) == 1 else b", ".join(values)

    def get_all(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.headers if n == name]

    @property
    def keep_alive(self) -> bool:
        """Whether the header allows the connection to be reused (RFC 9112 §9.3).

        For a response this says nothing about framing: a close-delimited body
        (``BodyFraming.CLOSE``) ends the connection whatever this says.
        """
        tokens = {
            t.strip(b" \t").lower()
            for v in self.headers
            if v[0] == b"connection"
            for t in v[1].split(b",")
        }
        if b"close" in tokens:
            return False
        return self.version != b"1.0" or b"keep-alive" in tokens


@dataclass(frozen=True, slots=True)
class Request(_HeaderAccess):
    method: bytes
    target: bytes
    version: bytes
    headers: tuple[Header, ...]


@dataclass(frozen=True, slots=True)
class Response(_HeaderAccess):
    status: int
    reason: bytes
    version: bytes
    headers: tuple[Header, ...]


@dataclass(frozen=True, slots=True)
class Data:
    # Often a view into (or the very object of) a chunk passed to feed(): zero copy.
    data: bytes | memoryview


@dataclass(frozen=True, slots=True)
class EndOfMessage:
    pass


class _NeedData(enum.Enum):
    # A one-member enum rather than a bare object: type checkers narrow `x is NEED_DATA`.
    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return "NEED_DATA"

    __str__ = __repr__


NEED_DATA: Final = _NeedData.NEED_DATA

Event: TypeAlias = Request | Response | Data | EndOfMessage

_END: Final = EndOfMessage()


class BodyFraming(enum.Enum):
    NONE = "none"
    LENGTH = "length"
    CHUNKED = "chunked"
    CLOSE = "close"


# --- grammar --------------------------------------------------------------------------------

_TCHAR = rb"!#$%&'*+\-.^_`|~0-9A-Za-z"
_TOKEN_RE = re.compile(rb"[%b]+" % _TCHAR)
# Field values: anything but controls (HTAB and obs-text are allowed).
_VALUE = rb"[^\x00-\x08\x0a-\x1f\x7f]*"
# The whole field block of a head is validated by one C-level match; the per-line loop then
# only slices. Bare CR and LF are ruled out before this runs.
_FIELD_BLOCK_RE = re.compile(rb"[%b]+:%b(?:\r\n[%b]+:%b)*" % (_TCHAR, _VALUE, _TCHAR, _VALUE))
# A CR not followed by LF, or an LF not preceded by CR. A CR at the very end of the searched
# range is let through: its LF may be in the next chunk.
_BARE_CR_LF_RE = re.compile(rb"\r(?=[^\n])|(?<!\r)\n")
_CTL_RE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_VERSION_RE = re.compile(rb"HTTP/[0-9]\.[0-9]")
_STATUS_LINE_RE = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: (.*))?", re.S)
_DIGITS_RE = re.compile(rb"[0-9]+")
# Chunk extensions are ignored, but must not smuggle control characters.
_CHUNK_SIZE_RE = re.compile(rb"([0-9A-Fa-f]+)(?:[ \t]*;[^\x00-\x08\x0a-\x1f\x7f]*)?")

_MAX_CONTENT_LENGTH_DIGITS = 18
_MAX_CHUNK_SIZE_DIGITS = 16
_MAX_EMPTY_LINES = 4  # CRLFs tolerated before a start line (RFC 9112 §2.2)


def _field_error(lines: list[bytes], hint: int) -> RemoteProtocolError:
    """Name the first field line that failed the block regex (slow path, errors only)."""
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            return RemoteProtocolError(
                "obsolete line folding (a field line starts with whitespace)", hint
            )
        colon = line.find(b":")
        if colon < 0:
            return RemoteProtocolError(f"header field line without a colon: {line[:40]!r}", hint)
        name = line[:colon]
        if name[-1:] in (b" ", b"\t"):
            return RemoteProtocolError(
                f"whitespace between header field name and colon: {name[:40]!r}", hint
            )
        if not _TOKEN_RE.fullmatch(name):
            return RemoteProtocolError(f"invalid header field name {name[:40]!r}", hint)
        ctl = _CTL_RE.search(line, colon)
        if ctl is not None:
            return RemoteProtocolError(
                f"control character 0x{line[ctl.start()]:02x} in header field value", hint
            )
    return RemoteProtocolError("malformed header field", hint)  # pragma: no cover


def _check_start_line(line: bytes, what: str, hint: int) -> None:
    ctl = _CTL_RE.search(line)
    if ctl is not None:
        raise RemoteProtocolError(f"control character 0x{line[ctl.start()]:02x} in {what}", hint)


def _parse_fields(
    block: bytes, pos: int, lines: list[bytes], max_headers: int, too_many_hint: int, hint: int
) -> list[Header]:
    """Field lines ``lines`` (= ``block[pos:]`` split on CRLF) as lowercased headers."""
    if len(lines) > max_headers:
        raise RemoteProtocolError(
            f"too many header fields ({len(lines)} > {max_headers})", too_many_hint
        )
    if not lines:
        return []
    if _FIELD_BLOCK_RE.fullmatch(block, pos) is None:
        raise _field_error(lines, hint)
    # Names are tokens, so the first colon is the separator.
    return [(n.lower(), v.strip(b" \t")) for n, _, v in [line.partition(b":") for line in lines]]


def _framing_fields(
    headers: list[Header], version: bytes, hint: int
) -> tuple[list[bytes] | None, int | None]:
    """The transfer codings (lowercased, in order) and the Content-Length of a message."""
    codings: list[bytes] | None = None
    length: int | None = None
    for name, value in headers:
        if name == b"content-length":
            for item in value.split(b","):
                item = item.strip(b" \t")
                if not _DIGITS_RE.fullmatch(item):
                    raise RemoteProtocolError(f"invalid Content-Length value {item[:20]!r}", hint)
                if len(item) > _MAX_CONTENT_LENGTH_DIGITS:
                    raise RemoteProtocolError("Content-Length value too long", hint)
                n = int(item)
                if length is not None and n != length:
                    raise RemoteProtocolError("conflicting Content-Length values", hint)
                length = n
        elif name == b"transfer-encoding":
            if codings is None:
                codings = []
            for item in value.split(b","):
                coding = item.split(b";", 1)[0].strip(b" \t").lower()
                if not coding:
                    continue  # empty list elements are allowed (RFC 9110 §5.6.1)
                if not _TOKEN_RE.fullmatch(coding):
                    raise RemoteProtocolError(f"invalid transfer coding {coding[:20]!r}", hint)
                codings.append(coding)
    if codings is not None:
        if length is not None:
            raise RemoteProtocolError("both Content-Length and Transfer-Encoding present", hint)
        if not codings:
            raise RemoteProtocolError("empty Transfer-Encoding", hint)
        if version == b"1.0":
            # RFC 9112 §6.1: such framing is faulty; refusing is the safe choice.
            raise RemoteProtocolError("Transfer-Encoding in an HTTP/1.0 message", hint)
        if codings.count(b"chunked") > 1:
            raise RemoteProtocolError("Transfer-Encoding applies chunked more than once", hint)
    return codings, length


# --- readers --------------------------------------------------------------------------------


class _State(enum.IntEnum):
    # IntEnum: states index the step table (a tuple), no Python-level __hash__ per event.
    HEAD = 0
    BODY_LENGTH = 1
    BODY_CLOSE = 2
    CHUNK_SIZE = 3
    CHUNK_DATA = 4
    CHUNK_CRLF = 5
    TRAILERS = 6
    END = 7
    DONE = 8
    ERROR = 9


_HeadT = TypeVar("_HeadT", Request, Response)
_Step: TypeAlias = Request | Response | Data | EndOfMessage | _NeedData | None


class _Reader(Generic[_HeadT]):
    """The framing machinery shared by both readers; subclasses parse the head."""

    _STEPS: ClassVar[tuple[Callable[[Any], _Step], ...]] = ()
    _kind = "message"
    _hint = 400  # status hint for errors in this direction
    _size_hint = 400  # status hint for oversized heads

    def __init__(self, *, max_head_bytes: int = 65536, max_headers: int = 100) -> None:
        if max_head_bytes < 16 or max_headers < 0:
            raise LocalProtocolError("max_head_bytes must be >= 16 and max_headers >= 0")
        self._max_head_bytes = max_head_bytes
        self._max_headers = max_headers
        # Unconsumed input is _buf followed by _chunks. Chunks move into _buf only when a
        # delimiter has to be searched for; body chunks are handed out straight from _chunks.
        self._buf = bytearray()
        self._chunks: deque[bytes | memoryview] = deque()
        self._scan = 0  # _buf[:_scan] was already searched for the current delimiter
        self._eof = False
        self._state = _State.HEAD
        self._error: RemoteProtocolError | None = None
        self._remaining = 0
        self._framing: BodyFraming | None = None
        self._body_length: int | None = None
        self._empty_lines = 0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # The state table: the step function of each _State, looked up per class so that
        # overrides count. Plain functions, not bound methods kept on the instance: those
        # would make every reader a reference cycle, and its buffers would wait for the
        # cyclic GC instead of being freed when the connection drops it.
        cls._STEPS = tuple(getattr(cls, f"_step_{state.name.lower()}") for state in _State)

    # --- public ---------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        """Add received bytes; ``b""`` means the peer closed its sending side (EOF)."""
        if not data:
            self._eof = True
            return
        if self._eof:
            raise LocalProtocolError("feed() after EOF")
        if type(data) is not bytes:
            # A caller's bytearray may be reused after this call; Data must not alias it.
            data = bytes(data)
        self._chunks.append(data)

    def _next(self) -> _HeadT | Data | EndOfMessage | _NeedData:
        try:
            while True:
                result = self._STEPS[self._state](self)
                if result is not None:
                    return result  # type: ignore[return-value]
        except RemoteProtocolError as exc:
            if self._error is None:
                self._state = _State.ERROR
                self._error = exc
            raise

    def start_next_message(self) -> None:
        """Go on to the next message of a keep-alive connection; buffered bytes are kept.

        Allowed once the whole current message has been read, even if its
        ``EndOfMessage`` was not collected, and as a no-op before any head.
        """
        state = self._state
        if state is _State.HEAD and self._framing is None:
            return
        if state is _State.ERROR:
            raise LocalProtocolError("the reader failed; the connection must be closed")
        if state is not _State.DONE and state is not _State.END:
            raise LocalProtocolError("start_next_message() before the message was read")
        self._state = _State.HEAD
        self._framing = None
        self._body_length = None
        self._empty_lines = 0
        self._reset_exchange()

    @property
    def framing(self) -> BodyFraming | None:
        return self._framing

    @property
    def body_length(self) -> int | None:
        return self._body_length

    @property
    def eof(self) -> bool:
        return self._eof

    def take_buffered(self) -> bytes:
        """Return and forget the unconsumed bytes (switching to a raw relay after CONNECT)."""
        out = b"".join((self._buf, *self._chunks))
        self._buf.clear()
        self._chunks.clear()
        self._scan = 0
        return out

    # --- hooks ----------------------------------------------------------------------------
    def _parse_head(self, head: bytes) -> _HeadT:
        raise NotImplementedError

    def _eof_before_head(self) -> _NeedData:
        return NEED_DATA

    def _reset_exchange(self) -> None:
        pass

    # --- buffer ---------------------------------------------------------------------------
    def _fill(self, n: int) -> bool:
        buf, chunks = self._buf, self._chunks
        while len(buf) < n and chunks:
            buf += chunks.popleft()
        return len(buf) >= n

    def _take(self, n: int) -> bytes:
        buf = self._buf
        if n >= len(buf):
            out = bytes(buf)
            buf.clear()
        else:
            with memoryview(buf) as view:
                out = view[:n].tobytes()
            del buf[:n]
        self._scan = 0
        return out

    def _take_body(self, limit: int | None) -> bytes | memoryview | None:
        """Up to ``limit`` body bytes (all available if None), or None if none are buffered."""
        if self._buf:
            return self._take(len(self._buf) if limit is None else limit)
        chunks = self._chunks
        if not chunks:
            return None
        data = chunks.popleft()
        if limit is None or len(data) <= limit:
            return data
        view = memoryview(data)
        chunks.appendleft(view[limit:])
        return view[:limit]

    def _find_block_end(self, what: str) -> int:
        """Index of the CRLFCRLF ending a head or trailer section in _buf, or -1."""
        buf, chunks = self._buf, self._chunks
        limit = self._max_head_bytes
        while True:
            scan = self._scan
            end = buf.find(b"\r\n\r\n", max(0, scan - 3))
            if end >= 0:
                break
            # Not complete yet: check the new bytes now, so a head with bare LF line endings
            # fails at once instead of waiting for the size limit. (This regex is the costly
            # check, so a head that arrives whole skips it and gets the counts below.)
            self._check_bare_cr_lf(scan, len(buf), what)
            self._scan = len(buf)
            if len(buf) > limit:
                raise RemoteProtocolError(f"{what} too large", self._size_hint)
            if not chunks:
                return -1
            buf += chunks.popleft()
        stop = end + 4
        if stop > limit:
            raise RemoteProtocolError(f"{what} too large", self._size_hint)
        crlf = buf.count(b"\r\n", 0, stop)
        if buf.count(b"\r", 0, stop) != crlf or buf.count(b"\n", 0, stop) != crlf:
            self._check_bare_cr_lf(0, stop, what)
        return end

    def _check_bare_cr_lf(self, start: int, stop: int, what: str) -> None:
        bad = _BARE_CR_LF_RE.search(self._buf, max(0, start - 1), stop)
        if bad is not None:
            kind = "CR" if self._buf[bad.start()] == 0x0D else "LF"
            raise RemoteProtocolError(
                f"bare {kind} in {what} (lines must end with CRLF)", self._hint
            )

    def _incomplete(self, what: str) -> RemoteProtocolError:
        return RemoteProtocolError(f"connection closed: incomplete {what}", self._hint)

    def _begin_body(self, framing: BodyFraming, length: int | None) -> None:
        self._framing = framing
        self._body_length = length if framing is BodyFraming.LENGTH else None
        if framing is BodyFraming.LENGTH:
            assert length is not None
            self._remaining = length
            self._state = _State.BODY_LENGTH if length else _State.END
        elif framing is BodyFraming.CHUNKED:
            self._state = _State.CHUNK_SIZE
        elif framing is BodyFraming.CLOSE:
            self._state = _State.BODY_CLOSE
        else:
            self._state = _State.END

    # --- steps (one per state; None means "state changed, run the next step") ------------
    def _step_head(self) -> _Step:
        buf = self._buf
        while self._fill(2) and buf.startswith(b"\r\n"):
            del buf[:2]
            self._scan = 0
            self._empty_lines += 1
            if self._empty_lines > _MAX_EMPTY_LINES:
                raise RemoteProtocolError(
                    f"too many empty lines before the {self._kind} line", self._hint
                )
        end = self._find_block_end(f"{self._kind} head")
        if end < 0:
            if not self._eof:
                return NEED_DATA
            if buf:
                raise self._incomplete(f"{self._kind} head")
            return self._eof_before_head()
        with memoryview(buf) as view:
            head = view[:end].tobytes()
        del buf[: end + 4]
        self._scan = 0
        return self._parse_head(head)

    def _step_body_length(self) -> _Step:
        data = self._take_body(self._remaining)
        if data is None:
            if self._eof:
                raise self._incomplete(f"body ({self._remaining} bytes missing)")
            return NEED_DATA
        self._remaining -= len(data)
        if not self._remaining:
            self._state = _State.END
        return Data(data)

    def _step_body_close(self) -> _Step:
        data = self._take_body(None)
        if data is None:
            if self._eof:
                self._state = _State.DONE
                return _END
            return NEED_DATA
        return Data(data)

    def _step_chunk_size(self) -> _Step:
        buf, chunks = self._buf, self._chunks
        while True:
            lf = buf.find(b"\n", self._scan)
            if lf >= 0:
                break
            self._scan = len(buf)
            if len(buf) > self._max_head_bytes:
                raise RemoteProtocolError("chunk size line too long", self._hint)
            if not chunks:
                if self._eof:
                    raise self._incomplete("chunked body")
                return NEED_DATA
            buf += chunks.popleft()
        if lf == 0 or buf[lf - 1] != 0x0D:
            raise RemoteProtocolError("bare LF in chunk size line", self._hint)
        line = self._take(lf + 1)[:-2]
        m = _CHUNK_SIZE_RE.fullmatch(line)
        if m is None:
            raise RemoteProtocolError(f"invalid chunk size line {line[:20]!r}", self._hint)
        digits = m.group(1)
        if len(digits) > _MAX_CHUNK_SIZE_DIGITS:
            raise RemoteProtocolError("chunk size too large", self._hint)
        size = int(digits, 16)
        if size:
            self._remaining = size
            self._state = _State.CHUNK_DATA
        else:
            self._state = _State.TRAILERS
        return None

    def _step_chunk_data(self) -> _Step:
        data = self._take_body(self._remaining)
        if data is None:
            if self._eof:
                raise self._incomplete("chunked body")
            return NEED_DATA
        self._remaining -= len(data)
        if not self._remaining:
            self._state = _State.CHUNK_CRLF
        return Data(data)

    def _step_chunk_crlf(self) -> _Step:
        if not self._fill(2):
            if self._buf and self._buf[0] != 0x0D:
                raise RemoteProtocolError("missing CRLF after chunk data", self._hint)
            if self._eof:
                raise self._incomplete("chunked body")
            return NEED_DATA
        if not self._buf.startswith(b"\r\n"):
            raise RemoteProtocolError("missing CRLF after chunk data", self._hint)
        del self._buf[:2]
        self._scan = 0
        self._state = _State.CHUNK_SIZE
        return None

    def _step_trailers(self) -> _Step:
        buf = self._buf
        if not self._fill(2):
            if self._eof:
                raise self._incomplete("chunked body (trailer section)")
            return NEED_DATA
        if buf.startswith(b"\r\n"):
            del buf[:2]
            self._scan = 0
            self._state = _State.END
            return None
        end = self._find_block_end("trailer section")
        if end < 0:
            if self._eof:
                raise self._incomplete("chunked body (trailer section)")
            return NEED_DATA
        block = self._take(end + 4)[:end]
        # Trailers are parsed only to be validated, then dropped: nothing downstream may
        # act on fields that arrive after the cache decision was made.
        _parse_fields(
            block, 0, block.split(b"\r\n"), self._max_headers, self._size_hint, self._hint
        )
        self._state = _State.END
        return None

    def _step_end(self) -> _Step:
        self._state = _State.DONE
        return _END

    def _step_done(self) -> _Step:
        raise LocalProtocolError("message complete: call start_next_message() first")

    def _step_error(self) -> _Step:
        assert self._error is not None
        raise RemoteProtocolError(str(self._error), self._error.status_hint)


class RequestReader(_Reader[Request]):
    """Reads requests from a client connection.

    ``feed(data)`` adds bytes (``b""`` = EOF); ``next_event()`` returns a :class:`Request`,
    then :class:`Data` events and one :class:`EndOfMessage`, or ``NEED_DATA``. After
    EndOfMessage call ``start_next_message()`` for the next (possibly pipelined) request.
    A :class:`RemoteProtocolError` is final: answer with its ``status_hint`` and close.
    """

    _kind = "request"
    _hint = 400
    _size_hint = 431

    def next_event(self) -> Request | Data | EndOfMessage | _NeedData:
        return self._next()

    def _parse_head(self, head: bytes) -> Request:
        lines = head.split(b"\r\n")
        _check_start_line(lines[0], "request line", 400)
        parts = lines[0].split(b" ")
        if len(parts) != 3:
            raise RemoteProtocolError("malformed request line (want: method SP target SP version)")
        method, target, version = parts
        if not _TOKEN_RE.fullmatch(method):
            raise RemoteProtocolError(f"invalid method {method[:20]!r}")
        if not target or b"\t" in target:
            raise RemoteProtocolError("invalid request target")
        if version == b"HTTP/1.1":
            version = b"1.1"
        elif version == b"HTTP/1.0":
            version = b"1.0"
        elif _VERSION_RE.fullmatch(version):
            raise RemoteProtocolError(f"unsupported HTTP version {version!r}", 505)
        else:
            raise RemoteProtocolError(f"malformed HTTP version {version[:20]!r}")
        first = len(lines[0]) + 2
        del lines[0]
        headers = _parse_fields(head, first, lines, self._max_headers, 431, 400)
        hosts = sum(1 for name, _ in headers if name == b"host")
        if hosts > 1:
            raise RemoteProtocolError("more than one Host header")
        if hosts == 0 and version == b"1.1":
            raise RemoteProtocolError("missing Host header in an HTTP/1.1 request")
        codings, length = _framing_fields(headers, version, 400)
        if codings is not None:
            if codings[-1] != b"chunked":
                raise RemoteProtocolError("final transfer coding of a request is not chunked")
            self._begin_body(BodyFraming.CHUNKED, None)
        elif length is not None:
            self._begin_body(BodyFraming.LENGTH, length)
        else:
            self._begin_body(BodyFraming.NONE, None)
        return Request(method, target, version, tuple(headers))


class ResponseReader(_Reader[Response]):
    """Reads responses from an origin connection.

    Call ``expect(method)`` with the request method before each response (HEAD and CONNECT
    change the framing), then use it like :class:`RequestReader`. Interim 1xx responses
    (except 101) come out as :class:`Response` events and reading goes on with the final
    response of the same exchange. Errors hint 502.
    """

    _kind = "response"
    _hint = 502
    _size_hint = 502

    def __init__(self, *, max_head_bytes: int = 65536, max_headers: int = 100) -> None:
        super().__init__(max_head_bytes=max_head_bytes, max_headers=max_headers)
        self._method: bytes | None = None

    def expect(self, request_method: bytes) -> None:
        if self._state is not _State.HEAD:
            raise LocalProtocolError("expect() while a response is being read")
        self._method = request_method

    def next_event(self) -> Response | Data | EndOfMessage | _NeedData:
        return self._next()

    def _reset_exchange(self) -> None:
        self._method = None

    def _step_head(self) -> _Step:
        if self._method is None and (self._buf or self._chunks):
            raise LocalProtocolError("call expect(method) before reading a response")
        return super()._step_head()

    def _eof_before_head(self) -> _NeedData:
        if self._method is not None:
            raise RemoteProtocolError(
                "connection closed before the response: incomplete exchange", 502
            )
        return NEED_DATA

    def _parse_head(self, head: bytes) -> Response:
        method = self._method
        assert method is not None
        lines = head.split(b"\r\n")
        _check_start_line(lines[0], "status line", 502)
        m = _STATUS_LINE_RE.fullmatch(lines[0])
        if m is None:
            raise RemoteProtocolError(f"malformed status line {lines[0][:40]!r}", 502)
        status = int(m.group(2))
        if status < 100:
            raise RemoteProtocolError(f"invalid status code {status}", 502)
        version = b"1.1" if m.group(1) == b"1" else b"1.0"
        reason = m.group(3) or b""
        first = len(lines[0]) + 2
        del lines[0]
        headers = _parse_fields(head, first, lines, self._max_headers, 502, 502)
        codings, length = _framing_fields(headers, version, 502)
        if status < 200 and status != 101:
            self._framing = BodyFraming.NONE  # interim; the final response follows
            self._body_length = None
        elif (
            method == b"HEAD"
            or status in (101, 204, 304)
            or (method == b"CONNECT" and status < 300)
        ):
            self._begin_body(BodyFraming.NONE, None)
        elif codings is not None:
            # RFC 9112 §6.3: a final coding other than chunked means "read until close".
            chunked = codings[-1] == b"chunked"
            self._begin_body(BodyFraming.CHUNKED if chunked else BodyFraming.CLOSE, None)
        elif length is not None:
            self._begin_body(BodyFraming.LENGTH, length)
        else:
            self._begin_body(BodyFraming.CLOSE, None)
        return Response(status, reason, version, tuple(headers))


# --- serializing ----------------------------------------------------------------------------

_REQUEST_LINE_OUT_RE = re.compile(rb"[%b]+ [^\x00-\x20\x7f]+ HTTP/[0-9]\.[0-9]\r\n" % _TCHAR)
_STATUS_LINE_OUT_RE = re.compile(rb"HTTP/[0-9]\.[0-9] [0-9]{3} [^\x00-\x08\x0a-\x1f\x7f]*\r\n")
_FIELDS_OUT_RE = re.compile(rb"(?:[%b]+: [^\x00-\x08\x0a-\x1f\x7f]*\r\n)*\r\n" % _TCHAR)


def _join_head(start: list[bytes], headers: Iterable[Header], start_re: re.Pattern[bytes]) -> bytes:
    parts = start
    first = len(parts)
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    out = b"".join(parts)
    # A few C-level checks of the finished head stop header injection (CR, LF or other
    # controls smuggled in a value) without a Python loop per field: the grammar catches
    # stray bytes, the line count catches a CRLF that happens to form a valid field.
    lines = (len(parts) - first - 1) // 4 + 2
    m = start_re.match(out)
    if out.count(b"\n") != lines:
        raise LocalProtocolError("CR or LF inside a start line or header field")
    if m is None:
        start_line = out.split(b"\r\n", 1)[0]
        raise LocalProtocolError(f"invalid start line {start_line[:60]!r}")
    if _FIELDS_OUT_RE.fullmatch(out, m.end()) is None:
        raise LocalProtocolError("invalid header field name or value (CR, LF or CTL?)")
    return out


def serialize_request_head(
    method: bytes, target: bytes, headers: Iterable[Header], version: bytes = b"1.1"
) -> bytes:
    return _join_head(
        [method, b" ", target, b" HTTP/", version, b"\r\n"], headers, _REQUEST_LINE_OUT_RE
    )


def serialize_response_head(
    status: int, reason: bytes, headers: Iterable[Header], version: bytes = b"1.1"
) -> bytes:
    if not 100 <= status <= 999:
        raise LocalProtocolError(f"invalid status code {status}")
    return _join_head(
        [b"HTTP/", version, b" %d " % status, reason, b"\r\n"], headers, _STATUS_LINE_OUT_RE
    )


LAST_CHUNK: Final = b"0\r\n\r\n"


def chunk(data: bytes | memoryview) -> bytes:
    """One chunk of chunked transfer coding; b"" for empty data (that would end the body)."""
    size = data.nbytes if isinstance(data, memoryview) else len(data)
    if not size:
        return b""
    return b"".join((b"%x\r\n" % size, data, b"\r\n"))


_REASONS: Final = {s.value: s.phrase.encode("ascii") for s in HTTPStatus}


def reason_phrase(status: int) -> bytes:
    return _REASONS.get(status, b"")
