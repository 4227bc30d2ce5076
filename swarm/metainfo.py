"""Torrent metainfo (BEP 3, 12, 27, 47, 52): a .torrent or a bare info dict to a checked value.

Why it is built this way
------------------------
* A .torrent is hostile input like any other: it names files the cache may lay out on disk and
  piece hashes the downloader will trust. Everything is validated once, here, and the result
  is a frozen :class:`Metainfo` that the rest of ``swarm/`` may use without re-checking: path
  components that could escape a directory (``..``, ``/``, empty) are rejected, lengths and
  piece counts must agree, and a hybrid torrent's v1 and v2 file lists must describe the same
  files in the same piece-aligned layout.
* The info hashes are computed over the *original* bytes of the info dict (located with
  :func:`swarm.bencode.value_span`), never over a re-encoding: the strict decoder already
  guarantees the two are equal, but hashing what was received is what every client does.
* One layout for all versions. Pieces are indexed over the v1 concatenation of files (BEP 3),
  pad files included (BEP 47). A v2 torrent's pieces are aligned to file boundaries (BEP 52),
  which is the same thing with a pad after every file that does not end on a piece boundary,
  so a v2-only torrent gets those pads synthesised (as libtorrent does, after the last file
  too: its last piece is a full one) and ``piece_size`` and ``files[i].offset`` mean the same
  for every torrent.
* v2 ``piece layers`` (outside the info dict, so not covered by the info hash) are checked
  against each file's ``pieces root`` before being kept: a layer that does not hash up to the
  root would make the downloader reject good data or, worse, accept bad.
* An info dict that arrived by ut_metadata (BEP 9) is only parsed after its hash matches the
  one asked for (:func:`parse_info`); a 20-byte hash may be the v1 hash or the truncated v2
  hash, and whichever matched must belong to a version the dict actually carries.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, TypeVar

from swarm.bencode import BValue, bdecode, value_span
from swarm.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "BLOCK_SIZE",
    "DEFAULT_MAX_FILES",
    "DEFAULT_MAX_PIECE_LENGTH",
    "DEFAULT_MAX_TORRENT_SIZE",
    "FileEntry",
    "MetaVersion",
    "Metainfo",
    "MetainfoError",
    "parse_info",
    "parse_metainfo",
]

BLOCK_SIZE: Final = 16 * 1024
DEFAULT_MAX_TORRENT_SIZE: Final = 16 << 20
DEFAULT_MAX_FILES: Final = 100_000
# The downloader holds a whole piece in memory to hash it; libtorrent refuses more than 128 MiB.
DEFAULT_MAX_PIECE_LENGTH: Final = 128 << 20

# libtorrent's limit on a file's size; also keeps piece arithmetic of hostile v2 trees small.
_MAX_LENGTH: Final = 1 << 62
_SHA1_LEN: Final = 20
_SHA256_LEN: Final = 32


class MetainfoError(RemoteProtocolError):
    """A .torrent or info dict that is well-formed bencode but not a valid torrent."""

    def __init__(self, msg: str) -> None:
        super().__init__(f"metainfo: {msg}")


class MetaVersion(enum.Enum):
    V1 = 1
    V2 = 2
    HYBRID = "hybrid"


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One file in the piece layout.

    ``path`` is relative to the download directory and includes the torrent's name as its first
    part for a multi-file torrent (as libtorrent's ``file_path`` does); a single-file torrent's
    path is just its name. ``offset`` is where the file starts in the concatenation of all
    files that pieces are cut from. Pad files (``pad``) are zeros that exist only to align the
    next file to a piece boundary; they are never written to disk. ``pieces_root`` is the
    file's v2 merkle root (None for v1-only torrents, pad files and empty files).
    """

    path: tuple[str, ...]
    length: int
    offset: int
    pad: bool = False
    pieces_root: bytes | None = None


@dataclass(frozen=True, slots=True)
class Metainfo:
    """A validated torrent. Build one with :func:`parse_metainfo` or :func:`parse_info`.

    ``total_length`` is the length of the piece layout, pad files included (libtorrent's
    ``total_size``); ``data_length`` leaves the pads out. ``info_hash`` is None for a v2-only
    torrent and ``info_hash_v2`` None for a v1-only one. ``piece_hashes`` are the v1 SHA-1s
    (empty for v2-only). ``announce_list`` holds BEP 12 tiers, or ``announce`` as the one
    tier; it is empty for an info dict from :func:`parse_info`.
    """

    info_hash: bytes | None
    info_hash_v2: bytes | None
    info_bytes: bytes
    name: str
    piece_length: int
    total_length: int
    files: tuple[FileEntry, ...]
    piece_hashes: tuple[bytes, ...]
    num_pieces: int
    private: bool
    announce_list: tuple[tuple[str, ...], ...]
    meta_version: MetaVersion
    # (pieces root, concatenated 32-byte piece hashes), sorted; only from a full .torrent.
    piece_layers: tuple[tuple[bytes, bytes], ...] = ()

    @property
    def handshake_hash(self) -> bytes:
        """The 20 bytes a peer handshake carries: the v1 hash, else the truncated v2 hash."""
        if self.info_hash is not None:
            return self.info_hash
        assert self.info_hash_v2 is not None
        return self.info_hash_v2[:_SHA1_LEN]

    @property
    def data_length(self) -> int:
        """Bytes of real file data (``total_length`` without pad files)."""
        return sum(f.length for f in self.files if not f.pad)

    @property
    def trackers(self) -> tuple[str, ...]:
        """Every tracker URL, tier by tier."""
        return tuple(url for tier in self.announce_list for url in tier)

    def piece_size(self, index: int) -> int:
        """Bytes in piece ``index``: ``piece_length`` except for a shorter last piece."""
        if not 0 <= index < self.num_pieces:
            raise LocalProtocolError(f"piece {index} out of range 0..{self.num_pieces - 1}")
        if index == self.num_pieces - 1:
            return self.total_length - index * self.piece_length
        return self.piece_length

    def piece_layer(self, pieces_root: bytes) -> bytes | None:
        """The verified v2 piece layer of the file with that root, if the .torrent had it."""
        for root, layer in self.piece_layers:
            if root == pieces_root:
                return layer
        return None


# --- entry points ---------------------------------------------------------------------------


def parse_metainfo(
    data: bytes | bytearray | memoryview,
    *,
    max_size: int = DEFAULT_MAX_TORRENT_SIZE,
    max_files: int = DEFAULT_MAX_FILES,
    max_piece_length: int = DEFAULT_MAX_PIECE_LENGTH,
) -> Metainfo:
    """Parse and validate a whole .torrent file."""
    if len(data) > max_size:
        raise MetainfoError(f"torrent of {len(data)} bytes larger than the {max_size} limit")
    raw = bytes(data)
    top = bdecode(raw, max_size=max_size)
    if not isinstance(top, dict):
        raise MetainfoError("top level is not a dict")
    info = top.get(b"info")
    if not isinstance(info, dict):
        raise MetainfoError("missing or non-dict 'info'")
    start, end = value_span(raw, (b"info",), max_size=max_size)
    meta = _build(
        raw[start:end],
        info,
        max_files=max_files,
        max_piece_length=max_piece_length,
        announce_list=_announce_list(top),
    )
    layers = top.get(b"piece layers")
    if layers is not None and meta.info_hash_v2 is not None:
        return _with_piece_layers(meta, layers)
    return meta


def parse_info(
    info_bytes: bytes | bytearray | memoryview,
    expected_hash: bytes,
    *,
    max_files: int = DEFAULT_MAX_FILES,
    max_piece_length: int = DEFAULT_MAX_PIECE_LENGTH,
    max_size: int = DEFAULT_MAX_TORRENT_SIZE,
) -> Metainfo:
    """Parse an info dict fetched from peers (ut_metadata), after checking its hash.

    ``expected_hash`` is the 20-byte v1 info hash or truncated v2 hash from the handshake or
    magnet link, or the full 32-byte v2 hash. A mismatch raises before anything is parsed.
    """
    raw = bytes(info_bytes)
    if len(raw) > max_size:
        raise MetainfoError(f"info dict of {len(raw)} bytes larger than the {max_size} limit")
    sha256 = hashlib.sha256(raw).digest()
    if len(expected_hash) == _SHA256_LEN:
        matched_v2 = sha256 == expected_hash
        if not matched_v2:
            raise MetainfoError("info dict does not match the expected v2 info hash")
    elif len(expected_hash) == _SHA1_LEN:
        matched_v1 = hashlib.sha1(raw).digest() == expected_hash
        matched_v2 = not matched_v1 and sha256[:_SHA1_LEN] == expected_hash
        if not (matched_v1 or matched_v2):
            raise MetainfoError("info dict does not match the expected info hash")
    else:
        raise LocalProtocolError(f"expected hash must be 20 or 32 bytes, not {len(expected_hash)}")
    info = bdecode(raw, max_size=max_size)
    if not isinstance(info, dict):
        raise MetainfoError("info is not a dict")
    meta = _build(
        raw, info, max_files=max_files, max_piece_length=max_piece_length, announce_list=()
    )
    # Otherwise a v2-only dict could pose as the v1 torrent with the same SHA-1, or back.
    if matched_v2 and meta.info_hash_v2 is None:
        raise MetainfoError("expected a v2 info dict but this one has no v2 part")
    if not matched_v2 and meta.info_hash is None:
        raise MetainfoError("expected a v1 info dict but this one has no v1 part")
    return meta


# --- building -------------------------------------------------------------------------------


def _build(
    info_bytes: bytes,
    info: dict[bytes, BValue],
    *,
    max_files: int,
    max_piece_length: int,
    announce_list: tuple[tuple[str, ...], ...],
) -> Metainfo:
    name_raw = _get(info, b"name", bytes, "info")
    name = _component(name_raw, "name")
    piece_length = _get(info, b"piece length", int, "info")
    if not 0 < piece_length <= max_piece_length:
        raise MetainfoError(f"piece length {piece_length} not in 1..{max_piece_length}")

    has_v1 = b"pieces" in info
    version = info.get(b"meta version")
    if version is not None and version != 2:
        raise MetainfoError(f"unsupported meta version {version!r}")
    has_v2 = version == 2
    if not has_v1 and not has_v2:
        raise MetainfoError("info has neither 'pieces' (v1) nor 'meta version' 2 (v2)")
    if has_v2 and (piece_length < BLOCK_SIZE or piece_length & (piece_length - 1)):
        raise MetainfoError(f"v2 piece length {piece_length} is not a power of two >= 16 KiB")

    v1_files = _v1_files(info, name, max_files) if has_v1 else None
    v2_files = _v2_files(info, name, max_files) if has_v2 else None

    if v1_files is not None:
        files = _v1_layout(v1_files)
        if v2_files is not None:
            _check_hybrid(files, v2_files, piece_length)
            # Keep v1's layout (it is what v1 pieces hash over) with v2's roots attached.
            roots = iter(v2_files)
            files = tuple(f if f.pad else _with_root(f, next(roots)[2]) for f in files)
    else:
        assert v2_files is not None
        files = _v2_layout(v2_files, name, piece_length)
    total = sum(f.length for f in files)
    if total == 0:
        raise MetainfoError("torrent has no data (every file is empty)")
    num_pieces = -(-total // piece_length)

    piece_hashes: tuple[bytes, ...] = ()
    if has_v1:
        pieces = _get(info, b"pieces", bytes, "info")
        if len(pieces) % _SHA1_LEN:
            raise MetainfoError(f"'pieces' length {len(pieces)} is not a multiple of 20")
        if len(pieces) // _SHA1_LEN != num_pieces:
            raise MetainfoError(
                f"'pieces' holds {len(pieces) // _SHA1_LEN} hashes but {total} bytes in pieces "
                f"of {piece_length} need {num_pieces}"
            )
        piece_hashes = tuple(pieces[i : i + _SHA1_LEN] for i in range(0, len(pieces), _SHA1_LEN))

    private = info.get(b"private") == 1
    return Metainfo(
        info_hash=hashlib.sha1(info_bytes).digest() if has_v1 else None,
        info_hash_v2=hashlib.sha256(info_bytes).digest() if has_v2 else None,
        info_bytes=info_bytes,
        name=name,
        piece_length=piece_length,
        total_length=total,
        files=files,
        piece_hashes=piece_hashes,
        num_pieces=num_pieces,
        private=private,
        announce_list=announce_list,
        meta_version=(
            MetaVersion.HYBRID
            if has_v1 and has_v2
            else MetaVersion.V1
            if has_v1
            else MetaVersion.V2
        ),
    )


def _with_root(f: FileEntry, root: bytes | None) -> FileEntry:
    return FileEntry(f.path, f.length, f.offset, f.pad, root)


# (path, length, pad) in v1 order, before offsets are assigned.
_V1File = tuple[tuple[str, ...], int, bool]
# (path, length, pieces root) in file tree order.
_V2File = tuple[tuple[str, ...], int, bytes | None]


def _v1_files(info: dict[bytes, BValue], name: str, max_files: int) -> list[_V1File]:
    if b"length" in info and b"files" in info:
        raise MetainfoError("info has both 'length' and 'files'")
    if b"length" in info:
        return [((name,), _length(info.get(b"length"), name), False)]
    entries = _get(info, b"files", list, "info")
    if not entries:
        raise MetainfoError("'files' is empty")
    if len(entries) > max_files:
        raise MetainfoError(f"more than {max_files} files")
    out: list[_V1File] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise MetainfoError(f"files[{i}] is not a dict")
        parts = _get(entry, b"path", list, f"files[{i}]")
        if not parts:
            raise MetainfoError(f"files[{i}] has an empty path")
        path = (name, *(_component(p, f"files[{i}].path") for p in parts))
        attr = entry.get(b"attr", b"")
        if not isinstance(attr, bytes):
            raise MetainfoError(f"files[{i}].attr is not a byte string")
        out.append((path, _length(entry.get(b"length"), f"files[{i}]"), b"p" in attr))
    _check_unique_paths(p for p, _, pad in out if not pad)
    return out


def _v1_layout(files: list[_V1File]) -> tuple[FileEntry, ...]:
    out = []
    offset = 0
    for path, length, pad in files:
        out.append(FileEntry(path, length, offset, pad))
        offset += length
    return tuple(out)


def _v2_files(info: dict[bytes, BValue], name: str, max_files: int) -> list[_V2File]:
    tree = _get(info, b"file tree", dict, "info")
    out: list[_V2File] = []
    # Explicit stack, children pushed in reverse so files come out in sorted (tree) order.
    # Depth is already bounded by the bencode decoder's max_depth.
    stack: list[tuple[tuple[str, ...], dict[bytes, BValue]]] = [((), tree)]
    while stack:
        prefix, node = stack.pop()
        children: list[tuple[tuple[str, ...], dict[bytes, BValue]]] = []
        for key, child in node.items():
            where = "/".join((*prefix, key.decode("utf-8", "replace")))
            if not isinstance(child, dict):
                raise MetainfoError(f"file tree entry {where!r} is not a dict")
            path = (*prefix, _component(key, "file tree"))
            leaf = child.get(b"")
            if leaf is None:
                if not child:
                    raise MetainfoError(f"file tree directory {where!r} is empty")
                children.append((path, child))
                continue
            if len(child) != 1 or not isinstance(leaf, dict):
                raise MetainfoError(f"file tree entry {where!r} mixes a file and a directory")
            length = _length(leaf.get(b"length"), f"file tree entry {where!r}")
            root = leaf.get(b"pieces root")
            if length > 0:
                if not isinstance(root, bytes) or len(root) != _SHA256_LEN:
                    raise MetainfoError(f"file {where!r} lacks a 32-byte 'pieces root'")
            elif root is not None:
                raise MetainfoError(f"empty file {where!r} has a 'pieces root'")
            out.append((path, length, root))
            if len(out) > max_files:
                raise MetainfoError(f"more than {max_files} files")
        stack.extend(reversed(children))
    if not out:
        raise MetainfoError("'file tree' has no files")
    # Files of a directory come before its subdirectories above; the tree order is by key.
    out.sort(key=lambda f: f[0])
    if len(out) == 1 and len(out[0][0]) == 1:
        # A single file at the top of the tree: a single-file torrent, no directory.
        return out
    return [((name, *path), length, root) for path, length, root in out]


def _v2_layout(files: list[_V2File], name: str, piece_length: int) -> tuple[FileEntry, ...]:
    out = []
    offset = 0
    for path, length, root in files:
        out.append(FileEntry(path, length, offset, False, root))
        offset += length
        tail = offset % piece_length
        # The last file is padded too, and pad paths are named, exactly as libtorrent lays out
        # a v2-only torrent, so piece sizes agree with libtorrent peers on the wire.
        if tail:
            pad = piece_length - tail
            out.append(FileEntry((name, ".pad", str(pad)), pad, offset, True))
            offset += pad
    return tuple(out)


def _check_hybrid(files: tuple[FileEntry, ...], v2: list[_V2File], piece_length: int) -> None:
    real = [f for f in files if not f.pad]
    if len(real) != len(v2):
        raise MetainfoError(f"hybrid torrent: {len(real)} v1 files but {len(v2)} v2 files")
    for f, (path, length, _) in zip(real, v2, strict=True):
        if f.path != path or f.length != length:
            raise MetainfoError(
                f"hybrid torrent: v1 file {'/'.join(f.path)!r} ({f.length} bytes) differs from "
                f"v2 file {'/'.join(path)!r} ({length} bytes)"
            )
        # v2 pieces never span files, so v1 has to pad every file to a piece boundary.
        if f.length and f.offset % piece_length:
            raise MetainfoError(
                f"hybrid torrent: file {'/'.join(f.path)!r} at offset {f.offset} is not aligned "
                f"to the piece length {piece_length}"
            )


def _check_unique_paths(paths: Iterator[tuple[str, ...]]) -> None:
    files: set[tuple[str, ...]] = set()
    dirs: set[tuple[str, ...]] = set()
    for path in paths:
        if path in files or path in dirs:
            raise MetainfoError(f"path {'/'.join(path)!r} used twice")
        files.add(path)
        for i in range(1, len(path)):
            if path[:i] in files:
                raise MetainfoError(f"path {'/'.join(path[:i])!r} is both a file and a directory")
            dirs.add(path[:i])


# --- v2 piece layers ------------------------------------------------------------------------


def _with_piece_layers(meta: Metainfo, layers: BValue) -> Metainfo:
    if not isinstance(layers, dict):
        raise MetainfoError("'piece layers' is not a dict")
    want = {f.pieces_root: f.length for f in meta.files if f.pieces_root is not None}
    kept: list[tuple[bytes, bytes]] = []
    for root, layer in layers.items():
        if root not in want:
            raise MetainfoError(f"piece layer for unknown pieces root {root.hex()}")
        if not isinstance(layer, bytes):
            raise MetainfoError(f"piece layer {root.hex()} is not a byte string")
        length = want[root]
        if length <= meta.piece_length:
            raise MetainfoError(f"piece layer {root.hex()} given for a single-piece file")
        count = -(-length // meta.piece_length)
        if len(layer) != count * _SHA256_LEN:
            raise MetainfoError(
                f"piece layer {root.hex()} is {len(layer)} bytes, not {count} hashes of 32"
            )
        if _layer_root(layer, meta.piece_length) != root:
            raise MetainfoError(f"piece layer {root.hex()} does not hash to its pieces root")
        kept.append((root, layer))
    return Metainfo(
        info_hash=meta.info_hash,
        info_hash_v2=meta.info_hash_v2,
        info_bytes=meta.info_bytes,
        name=meta.name,
        piece_length=meta.piece_length,
        total_length=meta.total_length,
        files=meta.files,
        piece_hashes=meta.piece_hashes,
        num_pieces=meta.num_pieces,
        private=meta.private,
        announce_list=meta.announce_list,
        meta_version=meta.meta_version,
        piece_layers=tuple(sorted(kept)),
    )


def _layer_root(layer: bytes, piece_length: int) -> bytes:
    # BEP 52: leaves past the end of the file are zero hashes; a whole piece of them hashes up
    # to `pad`, which fills the piece layer out to a power of two.
    pad = bytes(_SHA256_LEN)
    size = BLOCK_SIZE
    while size < piece_length:
        pad = hashlib.sha256(pad + pad).digest()
        size *= 2
    nodes = [layer[i : i + _SHA256_LEN] for i in range(0, len(layer), _SHA256_LEN)]
    width = 1
    while width < len(nodes):
        width *= 2
    nodes.extend([pad] * (width - len(nodes)))
    while len(nodes) > 1:
        nodes = [hashlib.sha256(nodes[i] + nodes[i + 1]).digest() for i in range(0, len(nodes), 2)]
    return nodes[0]


# --- small checks ---------------------------------------------------------------------------

_T = TypeVar("_T")


def _get(d: dict[bytes, BValue], key: bytes, kind: type[_T], where: str) -> _T:
    value = d.get(key)
    if value is None:
        raise MetainfoError(f"{where} lacks {key.decode()!r}")
    if not isinstance(value, kind):
        raise MetainfoError(f"{where}: {key.decode()!r} is not a {_KIND_NAMES[kind]}")
    return value


_KIND_NAMES: Final[dict[type, str]] = {
    bytes: "byte string",
    int: "integer",
    list: "list",
    dict: "dict",
}


def _length(value: BValue | None, where: str) -> int:
    if not isinstance(value, int):
        raise MetainfoError(f"{where} lacks an integer 'length'")
    if value < 0:
        raise MetainfoError(f"{where} has negative length {value}")
    if value > _MAX_LENGTH:
        raise MetainfoError(f"{where} has length {value}, more than 2**62")
    return value


def _component(raw: BValue, where: str) -> str:
    # One path component: the guard against a torrent writing outside its directory.
    if not isinstance(raw, bytes):
        raise MetainfoError(f"{where}: path component is not a byte string")
    if raw in (b"", b".", b".."):
        raise MetainfoError(f"{where}: path component {raw!r} is not allowed")
    if b"/" in raw or b"\x00" in raw:
        raise MetainfoError(f"{where}: path component {raw!r} contains '/' or NUL")
    # Not-quite-UTF-8 names (old torrents) survive as surrogates, like os.fsdecode.
    return raw.decode("utf-8", "surrogateescape")


def _announce_list(top: dict[bytes, BValue]) -> tuple[tuple[str, ...], ...]:
    tiers: list[tuple[str, ...]] = []
    seen: set[str] = set()
    raw = top.get(b"announce-list")
    if raw is not None:
        if not isinstance(raw, list):
            raise MetainfoError("'announce-list' is not a list")
        for t, tier in enumerate(raw):
            if not isinstance(tier, list):
                raise MetainfoError(f"announce-list[{t}] is not a list")
            urls = []
            for url in tier:
                text = _url(url, f"announce-list[{t}]")
                if text and text not in seen:
                    seen.add(text)
                    urls.append(text)
            if urls:
                tiers.append(tuple(urls))
    if not tiers and b"announce" in top:
        # BEP 12: 'announce' is only used when there is no (usable) 'announce-list'.
        text = _url(top[b"announce"], "announce")
        if text:
            tiers.append((text,))
    return tuple(tiers)


def _url(raw: BValue, where: str) -> str:
    if not isinstance(raw, bytes):
        raise MetainfoError(f"{where}: tracker URL is not a byte string")
    try:
        return raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise MetainfoError(f"{where}: tracker URL is not UTF-8") from None
