"""Torrent metainfo: agreement with libtorrent on real v1, hybrid and v2 torrents, plus
hand-built vectors for every rejection and property tests on generated file lists."""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swarm.bencode import BencodeError, BValue, bencode
from swarm.errors import LocalProtocolError, RemoteProtocolError
from swarm.metainfo import (
    FileEntry,
    MetainfoError,
    MetaVersion,
    parse_info,
    parse_metainfo,
)

lt: Any = pytest.importorskip("libtorrent", reason="libtorrent wheel needed to build real torrents")

# --- real torrents from libtorrent ------------------------------------------------------------

V1 = lt.create_torrent.v1_only
V2 = lt.create_torrent.v2_only
HYBRID = 0


def _make_tree(root: Path, sizes: dict[str, int], seed: int) -> None:
    rnd = hashlib.sha256(str(seed).encode()).digest()
    for rel, size in sizes.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        # Cheap deterministic content; different per file so roots differ.
        block = hashlib.sha256(rnd + rel.encode()).digest() * 512
        p.write_bytes((block * (size // len(block) + 1))[:size])


def _lt_torrent(
    path: Path, piece_length: int, flags: int, *, private: bool = False, tiers: int = 2
) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ct = lt.create_torrent(lt.list_files(str(path)), piece_length, flags)
        for tier in range(tiers):
            ct.add_tracker(f"http://tracker{tier}.example/announce", tier)
        ct.add_tracker("udp://backup.example:6969/announce", 0)
        if private:
            ct.set_priv(True)
        lt.set_piece_hashes(ct, str(path.parent))
        return bytes(lt.bencode(ct.generate()))


def _lt_files(ti: Any) -> list[tuple[tuple[str, ...], int, int, bool]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        fs = ti.files()
    return [
        (
            tuple(fs.file_path(i).split(os.sep)),
            fs.file_size(i),
            fs.file_offset(i),
            bool(fs.file_flags(i) & fs.flag_pad_file),
        )
        for i in range(fs.num_files())
    ]


LAYOUTS = {
    "multi": {"a.bin": 100_000, "empty": 0, "sub/b.bin": 40_000, "sub/deeper/c": 16_384},
    "single": {"only.bin": 70_000},
    "aligned": {"x": 65_536, "y": 32_768},
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("piece_length", [16_384, 32_768, 65_536])
@pytest.mark.parametrize(
    ("flags", "version"), [(V1, MetaVersion.V1), (HYBRID, MetaVersion.HYBRID), (V2, MetaVersion.V2)]
)
def test_agrees_with_libtorrent(
    tmp_path: Path, layout: str, piece_length: int, flags: int, version: MetaVersion
) -> None:
    sizes = LAYOUTS[layout]
    if layout == "single":
        _make_tree(tmp_path, sizes, 1)
        target = tmp_path / "only.bin"
    else:
        _make_tree(tmp_path / "top", sizes, 2)
        target = tmp_path / "top"
    data = _lt_torrent(target, piece_length, flags, private=flags == HYBRID)
    ti = lt.torrent_info(data)
    m = parse_metainfo(data)
    hashes = ti.info_hashes()

    assert m.meta_version is version
    if version is MetaVersion.V2:
        assert m.info_hash is None
        assert m.piece_hashes == ()
    else:
        assert m.info_hash is not None and m.info_hash.hex() == str(hashes.v1)
        assert m.piece_hashes == tuple(bytes(ti.hash_for_piece(i)) for i in range(m.num_pieces))
        assert m.handshake_hash == m.info_hash
    if version is MetaVersion.V1:
        assert m.info_hash_v2 is None
        assert m.piece_layers == ()
    else:
        assert m.info_hash_v2 is not None and m.info_hash_v2.hex() == str(hashes.v2)
    if version is MetaVersion.V2:
        assert m.handshake_hash == bytes.fromhex(str(hashes.v2))[:20]
    assert hashlib.sha1(m.info_bytes).digest() == m.info_hash or m.info_hash is None
    assert m.info_bytes == bytes(ti.info_section())

    assert m.name == ti.name()
    assert m.piece_length == ti.piece_length() == piece_length
    assert m.num_pieces == ti.num_pieces()
    assert m.total_length == ti.total_size()
    assert [m.piece_size(i) for i in range(m.num_pieces)] == [
        ti.piece_size(i) for i in range(ti.num_pieces())
    ]
    assert m.data_length == sum(sizes.values())
    ours = [(f.path, f.length, f.offset, f.pad) for f in m.files]
    theirs = _lt_files(ti)
    assert ours == theirs
    if version is not MetaVersion.V1:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            fs = ti.files()
        roots = [
            bytes(fs.root(i).to_bytes()) if fs.file_size(i) and not pad else None
            for i, (_, _, _, pad) in enumerate(theirs)
        ]
        assert [f.pieces_root for f in m.files] == roots
        # Every file longer than a piece has its verified layer.
        for f in m.files:
            if f.pieces_root is not None and f.length > piece_length:
                layer = m.piece_layer(f.pieces_root)
                assert layer is not None
                assert len(layer) == 32 * -(-f.length // piece_length)

    assert m.private is (flags == HYBRID) is bool(ti.priv())
    assert m.announce_list == (
        ("http://tracker0.example/announce", "udp://backup.example:6969/announce"),
        ("http://tracker1.example/announce",),
    )

    # The same info dict, fetched by ut_metadata, parses to the same layout.
    for expected in (m.info_hash, m.info_hash_v2, m.handshake_hash):
        if expected is not None:
            again = parse_info(m.info_bytes, expected)
            assert again.files == m.files
            assert again.announce_list == ()
            assert again.piece_layers == ()


def test_testbed_style_v1_torrent(tmp_path: Path) -> None:
    # The testbed's torrent shape: one file, 256 KiB pieces, v1 only, one tracker.
    (tmp_path / "data.bin").write_bytes(os.urandom(5 * 256 * 1024 + 123))
    data = _lt_torrent(tmp_path / "data.bin", 256 * 1024, V1, tiers=1)
    m = parse_metainfo(data)
    assert m.num_pieces == 6
    assert m.piece_size(5) == 123
    assert m.piece_size(0) == 256 * 1024
    assert m.files == (FileEntry(("data.bin",), 5 * 256 * 1024 + 123, 0),)
    with pytest.raises(LocalProtocolError, match="out of range"):
        m.piece_size(6)
    with pytest.raises(LocalProtocolError, match="out of range"):
        m.piece_size(-1)


@pytest.fixture(scope="module")
def hybrid_torrent(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    root = tmp_path_factory.mktemp("hy") / "top"
    _make_tree(root, LAYOUTS["multi"], 3)
    return _lt_torrent(root, 16_384, HYBRID)


def _edit(data: bytes, change: Callable[[dict[bytes, Any]], None]) -> bytes:
    from swarm.bencode import bdecode

    top = bdecode(data)
    assert isinstance(top, dict)
    change(top)
    return bencode(top)


def test_tampered_piece_layer_is_rejected(hybrid_torrent: bytes) -> None:
    def flip(top: dict[bytes, Any]) -> None:
        root = sorted(top[b"piece layers"])[0]
        layer = bytearray(top[b"piece layers"][root])
        layer[0] ^= 1
        top[b"piece layers"][root] = bytes(layer)

    with pytest.raises(MetainfoError, match="does not hash to its pieces root"):
        parse_metainfo(_edit(hybrid_torrent, flip))

    def shorten(top: dict[bytes, Any]) -> None:
        root = sorted(top[b"piece layers"])[0]
        top[b"piece layers"][root] = top[b"piece layers"][root][:-32]

    with pytest.raises(MetainfoError, match="not 7 hashes of 32"):
        parse_metainfo(_edit(hybrid_torrent, shorten))

    def stranger(top: dict[bytes, Any]) -> None:
        top[b"piece layers"][b"\x01" * 32] = b"\x00" * 64

    with pytest.raises(MetainfoError, match="unknown pieces root"):
        parse_metainfo(_edit(hybrid_torrent, stranger))


def test_hybrid_mismatch_is_rejected(hybrid_torrent: bytes) -> None:
    def v1_length(top: dict[bytes, Any]) -> None:
        top[b"info"][b"files"][0][b"length"] -= 1
        top[b"info"][b"files"][1][b"length"] += 1  # keep the total and pieces consistent

    with pytest.raises(MetainfoError, match=r"hybrid torrent: v1 file 'top/a\.bin'"):
        parse_metainfo(_edit(hybrid_torrent, v1_length))

    def v1_name(top: dict[bytes, Any]) -> None:
        top[b"info"][b"files"][0][b"path"] = [b"z.bin"]

    with pytest.raises(MetainfoError, match=r"differs from v2 file 'top/a\.bin'"):
        parse_metainfo(_edit(hybrid_torrent, v1_name))

    def drop_pad(top: dict[bytes, Any]) -> None:
        files = top[b"info"][b"files"]
        pad = files.pop(1)
        files[-1][b"length"] += pad[b"length"]  # the last pad absorbs it: total unchanged

    with pytest.raises(MetainfoError, match="not aligned"):
        parse_metainfo(_edit(hybrid_torrent, drop_pad))

    def extra_v2(top: dict[bytes, Any]) -> None:
        top[b"info"][b"file tree"][b"zz"] = {b"": {b"length": 0}}

    with pytest.raises(MetainfoError, match="4 v1 files but 5 v2 files"):
        parse_metainfo(_edit(hybrid_torrent, extra_v2))


def test_parse_info_checks_the_hash(hybrid_torrent: bytes) -> None:
    m = parse_metainfo(hybrid_torrent)
    assert m.info_hash is not None and m.info_hash_v2 is not None
    with pytest.raises(MetainfoError, match="does not match the expected info hash"):
        parse_info(m.info_bytes, bytes(20))
    with pytest.raises(MetainfoError, match="expected v2 info hash"):
        parse_info(m.info_bytes, bytes(32))
    with pytest.raises(MetainfoError, match="does not match"):
        parse_info(m.info_bytes + b" ", m.info_hash)
    with pytest.raises(LocalProtocolError, match="20 or 32 bytes"):
        parse_info(m.info_bytes, b"short")
    assert parse_info(m.info_bytes, m.info_hash_v2[:20]).info_hash_v2 == m.info_hash_v2


# --- hand-built vectors -------------------------------------------------------------------------


def _v1(
    file_list: list[tuple[list[bytes], int]] | None = None, **extra: BValue
) -> dict[bytes, Any]:
    files = file_list if file_list is not None else [([b"a"], 20_000), ([b"d", b"b"], 5)]
    total = sum(length for _, length in files)
    info: dict[bytes, Any] = {
        b"name": b"t",
        b"piece length": 16_384,
        b"files": [{b"length": length, b"path": path} for path, length in files],
        # Capped so the absurd-length vectors stay small (they fail before pieces are counted).
        b"pieces": b"\xaa" * 20 * min(-(-total // 16_384), 100),
    }
    info.update({k.replace("_", " ").encode(): v for k, v in extra.items()})
    return info


def _torrent(info: dict[bytes, Any], **top: BValue) -> bytes:
    t: dict[bytes, Any] = {b"info": info}
    names = {"announce_list": b"announce-list", "piece_layers": b"piece layers"}
    t.update({names.get(k, k.encode()): v for k, v in top.items()})
    return bencode(t)


def test_hand_built_v1() -> None:
    m = parse_metainfo(_torrent(_v1(), announce=b"http://a/ann"))
    assert m.meta_version is MetaVersion.V1
    assert m.files == (FileEntry(("t", "a"), 20_000, 0), FileEntry(("t", "d", "b"), 5, 20_000))
    assert m.num_pieces == 2 and m.piece_size(1) == 20_005 - 16_384
    assert m.announce_list == (("http://a/ann",),)
    assert m.trackers == ("http://a/ann",)
    assert not m.private
    assert m.info_hash == hashlib.sha1(bencode(_v1())).digest()


def test_announce_list_wins_over_announce_and_is_cleaned() -> None:
    m = parse_metainfo(
        _torrent(
            _v1(),
            announce=b"http://ignored/",
            announce_list=[[b"http://a/", b"http://a/", b" "], [], [b"udp://b:1/"]],
        )
    )
    assert m.announce_list == (("http://a/",), ("udp://b:1/",))
    m = parse_metainfo(_torrent(_v1(), announce=b"http://x/", announce_list=[[]]))
    assert m.announce_list == (("http://x/",),)


def test_private_flag() -> None:
    assert parse_metainfo(_torrent(_v1(private=1))).private
    assert not parse_metainfo(_torrent(_v1(private=0))).private


def test_pad_files_are_marked_and_unique_paths_skip_them() -> None:
    info = _v1()
    info[b"files"] = [
        {b"length": 10, b"path": [b"a"]},
        {b"attr": b"p", b"length": 16_374, b"path": [b".pad", b"16374"]},
        {b"length": 10, b"path": [b"b"]},
        {b"attr": b"p", b"length": 16_374, b"path": [b".pad", b"16374"]},
    ]
    info[b"pieces"] = b"\x00" * 40
    m = parse_metainfo(_torrent(info))
    assert [f.pad for f in m.files] == [False, True, False, True]
    assert m.files[2].offset == 16_384
    assert m.data_length == 20 and m.total_length == 32_768


def _v2_info(tree: dict[bytes, Any], piece_length: int = 16_384) -> dict[bytes, Any]:
    return {b"file tree": tree, b"meta version": 2, b"name": b"t", b"piece length": piece_length}


def _leaf(length: int, root: bytes | None = b"\x11" * 32) -> dict[bytes, Any]:
    d: dict[bytes, Any] = {b"length": length}
    if root is not None:
        d[b"pieces root"] = root
    return {b"": d}


def test_hand_built_v2_single_and_multi() -> None:
    m = parse_metainfo(_torrent(_v2_info({b"t": _leaf(100)})))
    assert m.meta_version is MetaVersion.V2
    assert m.files[0] == FileEntry(("t",), 100, 0, False, b"\x11" * 32)
    assert m.files[1].pad and m.total_length == 16_384
    tree = {b"b": _leaf(5, b"\x22" * 32), b"a": {b"z": _leaf(0, None), b"y": _leaf(3)}}
    m = parse_metainfo(_torrent(_v2_info(tree)))
    real = [(f.path, f.offset) for f in m.files if not f.pad]
    assert real == [(("t", "a", "y"), 0), (("t", "a", "z"), 16_384), (("t", "b"), 16_384)]


# (description, info dict, expected message)
_BAD_INFOS: list[tuple[str, dict[bytes, Any], str]] = [
    ("no name", {k: v for k, v in _v1().items() if k != b"name"}, "info lacks 'name'"),
    ("name ..", _v1(name=b".."), "'..' is not allowed"),
    ("name .", _v1(name=b"."), "'.' is not allowed"),
    ("name with slash", _v1(name=b"a/b"), "contains '/'"),
    ("name not bytes", _v1(name=5), "'name' is not a byte string"),
    ("path ..", _v1([([b"..", b"etc"], 5)]), "'..' is not allowed"),
    ("path with slash", _v1([([b"../../etc/passwd"], 5)]), "contains '/'"),
    ("absolute path", _v1([([b"/etc"], 5)]), "contains '/'"),
    ("empty component", _v1([([b"a", b""], 5)]), "b'' is not allowed"),
    ("NUL in path", _v1([([b"a\x00b"], 5)]), "NUL"),
    ("empty path", _v1([([], 5)]), "empty path"),
    ("negative length", _v1([([b"a"], -1), ([b"b"], 100)]), "negative length -1"),
    ("huge length", _v1([([b"a"], 1 << 63)]), "more than 2**62"),
    ("duplicate path", _v1([([b"a"], 5), ([b"a"], 5)]), "'t/a' used twice"),
    ("file and dir", _v1([([b"a"], 5), ([b"a", b"b"], 5)]), "both a file and a directory"),
    ("dir then file", _v1([([b"a", b"b"], 5), ([b"a"], 5)]), "'t/a' used twice"),
    ("no files", _v1([]), "'files' is empty"),
    ("all empty", _v1([([b"a"], 0)]), "no data"),
    ("pieces not /20", _v1(pieces=b"x" * 39), "not a multiple of 20"),
    ("too few pieces", _v1(pieces=b"x" * 20), "holds 1 hashes but 20005 bytes"),
    ("too many pieces", _v1(pieces=b"x" * 60), "holds 3 hashes"),
    ("pieces not bytes", _v1(pieces=[1]), "'pieces' is not a byte string"),
    ("zero piece length", _v1(piece_length=0), "piece length 0 not in"),
    ("huge piece length", _v1(piece_length=1 << 40), "not in 1.."),
    ("both length and files", _v1(length=5), "both 'length' and 'files'"),
    ("files not list", _v1(files=b"x"), "'files' is not a list"),
    ("file not dict", _v1(files=[5]), "files[0] is not a dict"),
    ("attr not bytes", _v1(files=[{b"attr": 1, b"length": 1, b"path": [b"a"]}]), "attr"),
    ("no length", _v1(files=[{b"path": [b"a"]}]), "lacks an integer 'length'"),
    ("neither v1 nor v2", {b"name": b"t", b"piece length": 16_384}, "neither 'pieces'"),
    ("meta version 3", _v1(meta_version=3), "unsupported meta version 3"),
    ("v2 not power of two", _v2_info({b"t": _leaf(5)}, 3 * 16_384), "not a power of two"),
    ("v2 piece too small", _v2_info({b"t": _leaf(5)}, 8192), "power of two >= 16 KiB"),
    ("v2 no root", _v2_info({b"t": _leaf(5, None)}), "lacks a 32-byte 'pieces root'"),
    ("v2 short root", _v2_info({b"t": _leaf(5, b"x" * 31)}), "lacks a 32-byte"),
    ("v2 root on empty", _v2_info({b"t": _leaf(0), b"u": _leaf(5)}), "empty file 't' has a"),
    ("v2 mixed", _v2_info({b"t": {b"": {b"length": 5}, b"x": _leaf(5)}}), "mixes a file"),
    ("v2 empty dir", _v2_info({b"t": {}, b"u": _leaf(5)}), "directory 't' is empty"),
    ("v2 empty tree", _v2_info({}), "'file tree' has no files"),
    ("v2 entry not dict", _v2_info({b"t": 5}), "entry 't' is not a dict"),
    ("v2 dotdot", _v2_info({b"..": {b"x": _leaf(5)}}), "'..' is not allowed"),
    ("v2 negative", _v2_info({b"t": _leaf(-5)}), "negative length"),
    ("v2 only empty files", _v2_info({b"t": _leaf(0, None)}), "no data"),
]


@pytest.mark.parametrize(
    ("info", "message"), [(i, m) for _, i, m in _BAD_INFOS], ids=[d for d, _, _ in _BAD_INFOS]
)
def test_rejects_bad_info(info: dict[bytes, Any], message: str) -> None:
    with pytest.raises(MetainfoError) as exc:
        parse_metainfo(_torrent(info))
    assert message in str(exc.value)
    assert str(exc.value).startswith("metainfo: ")


def test_rejects_bad_top_level() -> None:
    with pytest.raises(MetainfoError, match="top level is not a dict"):
        parse_metainfo(b"li1ee")
    with pytest.raises(MetainfoError, match="missing or non-dict 'info'"):
        parse_metainfo(b"d4:infoi1ee")
    with pytest.raises(MetainfoError, match="missing or non-dict 'info'"):
        parse_metainfo(b"de")
    with pytest.raises(MetainfoError, match="'announce-list' is not a list"):
        parse_metainfo(_torrent(_v1(), announce_list=b"x"))
    with pytest.raises(MetainfoError, match=r"announce-list\[0\] is not a list"):
        parse_metainfo(_torrent(_v1(), announce_list=[b"x"]))
    with pytest.raises(MetainfoError, match="not UTF-8"):
        parse_metainfo(_torrent(_v1(), announce=b"\xff"))
    with pytest.raises(MetainfoError, match="'piece layers' is not a dict"):
        parse_metainfo(_torrent(_v2_info({b"t": _leaf(5)}), piece_layers=1))


def test_non_canonical_info_is_rejected() -> None:
    # Unsorted keys inside info: a re-encoding would hash differently, so refuse outright.
    good = _torrent(_v1())
    bad = good.replace(b"4:name1:t12:piece lengthi16384e", b"12:piece lengthi16384e4:name1:t")
    assert bad != good
    with pytest.raises(BencodeError, match="not sorted"):
        parse_metainfo(bad)


def test_limits() -> None:
    data = _torrent(_v1())
    with pytest.raises(MetainfoError, match="larger than the 100 limit"):
        parse_metainfo(data, max_size=100)
    files = [([b"f%d" % i], 1) for i in range(11)]
    with pytest.raises(MetainfoError, match="more than 10 files"):
        parse_metainfo(_torrent(_v1(files)), max_files=10)
    assert len(parse_metainfo(_torrent(_v1(files)), max_files=11).files) == 11
    tree = {b"f%d" % i: _leaf(1) for i in range(11)}
    with pytest.raises(MetainfoError, match="more than 10 files"):
        parse_metainfo(_torrent(_v2_info(tree)), max_files=10)
    with pytest.raises(MetainfoError, match=r"not in 1\.\.16383"):
        parse_metainfo(data, max_piece_length=16_383)


def test_errors_are_remote_protocol_errors() -> None:
    with pytest.raises(RemoteProtocolError):
        parse_metainfo(b"garbage")
    with pytest.raises(RemoteProtocolError):
        parse_metainfo(_torrent(_v1(name=b"..")))


# --- properties ---------------------------------------------------------------------------------

_names = st.binary(min_size=1, max_size=6).filter(
    lambda b: b not in (b".", b"..") and b"/" not in b and b"\x00" not in b
)
_file_lists = st.lists(
    st.tuples(st.lists(_names, min_size=1, max_size=3), st.integers(0, 100_000)),
    min_size=1,
    max_size=12,
    unique_by=lambda f: tuple(f[0][:1]),  # unique first parts: no path conflicts
).filter(lambda fs: sum(length for _, length in fs) > 0)


@given(_file_lists, st.sampled_from([1000, 16_383, 16_384, 65_536]))
def test_layout_properties(files: list[tuple[list[bytes], int]], piece_length: int) -> None:
    info = _v1(files, piece_length=piece_length)
    info[b"pieces"] = b"\x00" * 20 * -(-sum(n for _, n in files) // piece_length)
    m = parse_metainfo(_torrent(info))
    assert sum(m.piece_size(i) for i in range(m.num_pieces)) == m.total_length
    assert all(0 < m.piece_size(i) <= piece_length for i in range(m.num_pieces))
    offset = 0
    for f, (path, length) in zip(m.files, files, strict=True):
        assert f.offset == offset and f.length == length
        assert f.path == ("t", *(p.decode("utf-8", "surrogateescape") for p in path))
        offset += length
    assert m.total_length == offset
    assert len(m.piece_hashes) == m.num_pieces


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_torrents_raise_only_remote_errors(data: st.DataObject) -> None:
    base = bytearray(
        _torrent(_v1(), announce_list=[[b"http://a/"]])
        if data.draw(st.booleans())
        else _torrent(_v2_info({b"a": {b"x": _leaf(20_000)}, b"b": _leaf(3)}))
    )
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(base) - 1))
        base[i] = data.draw(st.integers(0, 255))
    try:
        m = parse_metainfo(bytes(base))
    except RemoteProtocolError:
        return
    # Whatever survives is internally consistent.
    assert sum(f.length for f in m.files) == m.total_length
    assert all(".." not in f.path and "" not in f.path for f in m.files)
