"""BitTorrent helpers for namespace tests: payloads, torrents, a tracker, real clients.

Why it is built this way:
- The swarm cache must be proven against clients no one here wrote: libtorrent (through
  ``lt_node.py``, one process per peer) and aria2c, announcing to opentracker. Everything runs
  inside the testbed namespaces via ``Testbed.run``/``Testbed.popen``, so teardown of the testbed
  kills whatever a failing test left behind; the context managers here also stop their own
  processes on exit, so a test can stop a seed half-way.
- Facts from testbed-notes §6/§7/§9 are encoded once here: Debian's opentracker only serves
  whitelisted info_hashes and reads the whitelist *after* chrooting into ``-d`` (as nobody, so
  the directory must be world-readable); libtorrent 2.x makes hybrid torrents unless told
  ``v1_only``; aria2 needs DHT/LPD/PEX off and ``--seed-time=0`` to exit after the download;
  there is no netem in this kernel, so WAN emulation is tbf for rate only.
- aria2c cannot be told to dial a peer directly. ``aria2_download(peers=...)`` therefore starts
  a static tracker on 127.0.0.1 inside aria2's own namespace (``python -m tests.netns.bt
  static-tracker``) that answers every announce with exactly those peers, and drops the
  torrent's own trackers with ``--bt-exclude-tracker=*``.
- Failures raise AssertionError carrying the client's own output, because in a namespace test
  that output is the only clue to what went wrong.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.server
import importlib.util
import ipaddress
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from tests.netns.testbed import REPO, Testbed

__all__ = [
    "LT_NODE",
    "LtNode",
    "Opentracker",
    "aria2_download",
    "gw_downlink",
    "gw_uplink",
    "make_payload",
    "make_torrent",
    "sha1_file",
    "sha256_file",
    "tbf",
    "tree_sha256",
    "veth_bytes",
]

LT_NODE = Path(__file__).resolve().with_name("lt_node.py")
_CHUNK = 1 << 20


# --- payloads and torrents ---------------------------------------------------------------
def _write_random(path: Path, size: int, seed: int | str) -> None:
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(left, _CHUNK)
            f.write(rng.randbytes(n))
            left -= n


def make_payload(
    directory: Path, name: str, size: int | Mapping[str, int], *, seed: int = 0
) -> Path:
    """Deterministic pseudo-random content: ``directory/name`` is a file of ``size`` bytes, or,
    when ``size`` maps relative paths (``"sub/b.bin"``) to sizes, a directory of those files.
    The same seed gives the same bytes (each file of a tree is seeded with its own path)."""
    target = directory / name
    if isinstance(size, int):
        _write_random(target, size, seed)
        return target
    if not size:
        raise ValueError("make_payload: a multi-file payload needs at least one file")
    for rel, n in size.items():
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise ValueError(f"make_payload: file path must stay inside the payload: {rel!r}")
        _write_random(target / rel, n, f"{seed}:{rel}")
    return target


def make_torrent(
    path: Path,
    *,
    piece_size: int = 256 * 1024,
    trackers: Sequence[str] | Sequence[Sequence[str]] = (),
    v1_only: bool = True,
    out: Path | None = None,
) -> tuple[bytes, str]:
    """Hash ``path`` (a file or a directory) into a torrent; returns (bencoded torrent, v1
    info_hash hex). ``trackers`` is a list of URLs (one tier each) or a list of tiers.
    ``v1_only=False`` makes a hybrid v1+v2 torrent (libtorrent's default, with pad files); the
    returned hash is still the v1 one, the hash v1 peers, trackers and aria2 use. aria2 1.36
    could not fetch a hybrid torrent from a libtorrent seed (it stalls at 0 B), so keep
    ``v1_only`` wherever aria2 takes part."""
    import libtorrent as lt  # here, so the static tracker and the skip check need no libtorrent

    path = path.resolve()
    flags = lt.create_torrent.v1_only if v1_only else 0
    ct = lt.create_torrent(lt.list_files(str(path)), piece_size, flags)
    for tier, entry in enumerate(trackers):
        for url in [entry] if isinstance(entry, str) else entry:
            ct.add_tracker(url, tier)
    ct.set_creator("swarmcache testbed")
    lt.set_piece_hashes(ct, str(path.parent))
    data: bytes = lt.bencode(ct.generate())
    info_hash = str(lt.torrent_info(data).info_hashes().v1)
    if out is not None:
        out.write_bytes(data)
    return data, info_hash


def sha1_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha1").hexdigest()


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def tree_sha256(path: Path) -> dict[str, str]:
    """sha256 of every regular file under ``path`` (or of ``path`` itself, keyed by its name),
    keyed by POSIX path relative to ``path``'s parent, so a seed's tree and a leecher's tree
    compare with ``==``. Pad files (``.pad/``) and client state files are left out."""
    path = Path(path)
    if path.is_file():
        return {path.name: sha256_file(path)}
    result: dict[str, str] = {}
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path.parent)
        if ".pad" in rel.parts or file.suffix == ".aria2":
            continue
        result[rel.as_posix()] = sha256_file(file)
    return result


# --- the gateway's links -------------------------------------------------------------------
def gw_uplink(testbed: Testbed) -> str:
    """The gateway's interface towards ``net`` (the internet side), per deploy/testbed.sh."""
    return f"{testbed.prefix}gn"


def gw_downlink(testbed: Testbed) -> str:
    """The gateway's interface towards ``sub`` (the subscribers)."""
    return f"{testbed.prefix}gs"


def veth_bytes(testbed: Testbed, role: str, ifname: str) -> tuple[int, int]:
    """(rx_bytes, tx_bytes) of ``ifname`` as seen inside ``role``'s namespace."""
    base = f"/sys/class/net/{ifname}/statistics"
    out = testbed.run(role, "cat", f"{base}/rx_bytes", f"{base}/tx_bytes").stdout.split()
    return int(out[0]), int(out[1])


def tbf(
    testbed: Testbed,
    role: str,
    ifname: str,
    rate: str | None,
    *,
    burst: str = "32kb",
    latency: str = "100ms",
) -> None:
    """Shape egress of ``ifname`` to ``rate`` (tc syntax: "50mbit"); ``None`` removes it. Only
    rate: this kernel has no netem (testbed-notes §7), so no delay or loss here. Above a few
    hundred Mbit/s raise ``burst`` too (at least rate x 10 ms), or tbf caps below ``rate``."""
    if rate is None:
        testbed.run(role, "tc", "qdisc", "del", "dev", ifname, "root", check=False)
        return
    argv = ("tc", "qdisc", "replace", "dev", ifname, "root", "tbf", "rate", rate)
    testbed.run(role, *argv, "burst", burst, "latency", latency)


# --- opentracker -----------------------------------------------------------------------------
def _wait(check: Any, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


def _tail(path: Path, limit: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except FileNotFoundError:
        return "(no output file)"


class Opentracker:
    """opentracker serving HTTP and UDP announces on ``ip:port`` in ``role``'s namespace, for
    the whitelisted info_hashes only (Debian's build rejects everything else).

    The chroot directory is a fresh world-readable temporary directory of its own, because the
    tracker drops to ``nobody`` and a pytest ``tmp_path`` is 0700."""

    def __init__(
        self,
        testbed: Testbed,
        role: str,
        ip: str,
        port: int = 6969,
        info_hashes: Iterable[str] = (),
    ) -> None:
        self.tb = testbed
        self.role = role
        self.ip = ip
        self.port = port
        self.info_hashes = [h.lower() for h in info_hashes]
        self.dir = Path(tempfile.mkdtemp(prefix="swarmcache-ot-"))
        self.log = self.dir / "opentracker.log"  # written through the fd it inherits
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"http://{self.ip}:{self.port}/announce"

    @property
    def udp_url(self) -> str:
        return f"udp://{self.ip}:{self.port}/announce"

    def _write_whitelist(self) -> None:
        wl = self.dir / "whitelist.txt"
        wl.write_text("".join(f"{h}\n" for h in self.info_hashes))
        wl.chmod(0o644)

    def allow(self, info_hash: str) -> None:
        """Whitelist one more info_hash; a running tracker rereads the list on SIGHUP (an
        announce racing the reload may still be refused, so allow before ``start`` if you can)."""
        self.info_hashes.append(info_hash.lower())
        self._write_whitelist()
        if self.proc is not None:
            self.proc.send_signal(signal.SIGHUP)

    def start(self) -> Opentracker:
        os.chmod(self.dir, 0o755)
        self._write_whitelist()
        log = open(self.log, "wb")  # noqa: SIM115 - handed to the child
        with log:
            self.proc = self.tb.popen(
                self.role,
                "opentracker",
                *("-i", self.ip, "-p", str(self.port), "-P", str(self.port)),
                *("-d", str(self.dir), "-w", "/whitelist.txt"),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        _wait(self._serving, f"opentracker on {self.ip}:{self.port}", 10)
        return self

    def _serving(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(
                f"opentracker exited with {self.proc.returncode}: {_tail(self.log)}"
            )
        res = self.tb.run(
            self.role, "curl", "-s", "-o", "/dev/null", "--max-time", "1",
            f"http://{self.ip}:{self.port}/stats", check=False,
        )  # fmt: skip
        return res.returncode == 0

    def announce(self, role: str, info_hash: str, *, port: int = 6881) -> bytes:
        """One raw HTTP announce from ``role`` (e.g. to check the whitelist); the bencoded body."""
        query = urllib.parse.urlencode(
            {
                "info_hash": bytes.fromhex(info_hash),
                "peer_id": b"-SC0001-" + secrets.token_bytes(6).hex().encode(),
                "port": port,
                "uploaded": 0,
                "downloaded": 0,
                "left": 0,
                "compact": 1,
            }
        )
        # Testbed.run decodes text; a compact peer list is binary.
        res = subprocess.run(
            ["ip", "netns", "exec", self.tb.ns(role), "curl", "-s", "--max-time", "5",
             f"{self.http_url}?{query}"],
            capture_output=True, check=True, timeout=10,
        )  # fmt: skip
        return res.stdout

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        with contextlib.suppress(OSError):
            for child in self.dir.iterdir():
                child.unlink()
            self.dir.rmdir()

    def __enter__(self) -> Opentracker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --- libtorrent peers ----------------------------------------------------------------------
class LtNode:
    """``lt_node.py`` in ``role``'s namespace. Leechers exit when complete; seeds run until
    ``stop()`` or the end of the ``with`` block. ``workdir`` receives the status file and the
    node's log, named after ``name``."""

    def __init__(
        self,
        testbed: Testbed,
        role: str,
        listen: str,
        torrent: Path,
        save: Path,
        workdir: Path,
        *,
        seed: bool = False,
        peers: Sequence[str] = (),
        timeout: float = 60.0,
        enc: str = "disabled",
        utp: bool = False,
        download_limit: int = 0,
        name: str | None = None,
        dht_bootstrap: Sequence[str] = (),
    ) -> None:
        self.tb = testbed
        self.role = role
        self.listen = listen
        self.seed = seed
        self.name = name or f"lt-{role}-{listen.replace(':', '-')}"
        self.status_file = workdir / f"{self.name}.status.json"
        self.log = workdir / f"{self.name}.log"
        argv = [
            sys.executable, str(LT_NODE), "--listen", listen, "--torrent", str(torrent),
            "--save", str(save), "--status-file", str(self.status_file), "--enc", enc,
        ]  # fmt: skip
        if seed:
            argv.append("--seed")
        else:
            argv += ["--exit-on-complete", "--timeout", f"{timeout:g}"]
        for peer in peers:
            argv += ["--peer", peer]
        if utp:
            argv.append("--utp")
        if download_limit:
            argv += ["--download-limit", str(download_limit)]
        for node in dht_bootstrap:
            argv += ["--dht-bootstrap", node]
        self.argv = argv
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> LtNode:
        with open(self.log, "wb") as log:
            self.proc = self.tb.popen(
                self.role, *self.argv, stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO)
            )
        return self

    def status(self) -> dict[str, Any]:
        """The last status the node wrote; {} before the first one."""
        try:
            data: dict[str, Any] = json.loads(self.status_file.read_text())
        except FileNotFoundError:
            return {}
        return data

    def _failure(self, what: str) -> AssertionError:
        code = None if self.proc is None else self.proc.poll()
        return AssertionError(
            f"{self.name} {what} (exit status {code}); status: {self.status()}; "
            f"log tail:\n{_tail(self.log)}"
        )

    def wait_seeding(self, timeout: float = 15.0, *, announced: bool = True) -> dict[str, Any]:
        """Until the node has verified all data and (``announced``) a tracker has answered, so
        a leecher started afterwards is told about it."""
        assert self.proc is not None, "start() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise self._failure("exited before seeding")
            st = self.status()
            if st.get("is_seeding") and (not announced or st.get("tracker_replies", 0) > 0):
                return st
            time.sleep(0.05)
        raise self._failure(f"not seeding{' and announced' if announced else ''} in {timeout:g}s")

    def wait_complete(self, timeout: float = 60.0) -> dict[str, Any]:
        """Wait for a leecher to finish: exit 0 with a complete status; else AssertionError
        with the node's status and log tail."""
        assert self.proc is not None, "start() first"
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise self._failure(f"not complete after {timeout:g}s") from None
        st = self.status()
        if code != 0 or not st.get("is_seeding") or st.get("progress") != 1.0:
            raise self._failure("did not complete")
        return st

    def stop(self) -> None:
        """SIGTERM (clean: the tracker hears "stopped"), SIGKILL if that takes over 5 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def __enter__(self) -> LtNode:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --- aria2c --------------------------------------------------------------------------------
def _static_tracker(
    testbed: Testbed, role: str, peers: Sequence[str]
) -> tuple[subprocess.Popen[bytes], str]:
    port = random.randrange(20000, 60000)
    argv = [sys.executable, "-m", "tests.netns.bt", "static-tracker", "--port", str(port)]
    for peer in peers:
        argv += ["--peer", peer]
    proc = testbed.popen(role, *argv, cwd=str(REPO), stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/announce"

    def up() -> bool:
        if proc.poll() is not None:
            err = proc.communicate()[1].decode(errors="replace")
            raise AssertionError(f"static tracker exited with {proc.returncode}: {err[-2000:]}")
        probe = testbed.run(role, "curl", "-sf", "-o", "/dev/null", url, check=False)
        return probe.returncode == 0

    _wait(up, f"static tracker in {role}", 10)
    return proc, url


def aria2_download(
    testbed: Testbed,
    role: str,
    torrent_path: Path,
    directory: Path,
    *,
    peers: Sequence[str] = (),
    timeout: float = 60.0,
    listen_port: int = 6891,
    external_ip: str | None = None,
    exclude_trackers: bool = False,
    extra: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """Download ``torrent_path`` into ``directory`` with aria2c in ``role``'s namespace and exit
    (no seeding). ``peers`` ("IP:PORT") replaces the torrent's trackers with a static tracker
    that names exactly those peers; ``exclude_trackers`` drops the torrent's trackers without
    that; ``external_ip`` is the address aria2 reports to trackers. Raises AssertionError with
    aria2's output when it fails or runs past ``timeout``."""
    argv = [
        "aria2c", "--no-conf", f"--dir={directory}", "--enable-dht=false", "--enable-dht6=false",
        "--bt-enable-lpd=false", "--enable-peer-exchange=false", "--seed-time=0",
        f"--listen-port={listen_port}", "--file-allocation=none", "--summary-interval=0",
        "--console-log-level=warn", "--bt-tracker-connect-timeout=5", "--bt-tracker-timeout=5",
        # aria2 gives up by itself (and says so) if nothing arrives for most of the timeout.
        f"--bt-stop-timeout={max(1, int(timeout * 0.75))}",
    ]  # fmt: skip
    if external_ip is not None:
        argv.append(f"--bt-external-ip={external_ip}")
    tracker = None
    if peers:
        tracker, url = _static_tracker(testbed, role, peers)
        argv += ["--bt-exclude-tracker=*", f"--bt-tracker={url}"]
    elif exclude_trackers:
        argv.append("--bt-exclude-tracker=*")
    argv += [*extra, str(torrent_path)]
    try:
        proc = testbed.popen(role, *argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            # SIGTERM, not SIGKILL: aria2 then prints its download results, the useful part.
            proc.terminate()
            try:
                out, err = proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
            raise AssertionError(
                f"aria2c did not finish in {timeout:g}s:\n{out[-3000:]}\n{err[-2000:]}"
            ) from None
    finally:
        if tracker is not None:
            tracker.kill()
            tracker.wait(timeout=5)
    if proc.returncode != 0:
        raise AssertionError(f"aria2c exited with {proc.returncode}:\n{out[-3000:]}\n{err[-2000:]}")
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)



def needs_bt_tools(*tools: str) -> Any:
    """An autouse fixture for a test module: skip (with the reason printed) unless the
    programs ``tools`` and the libtorrent module are installed (deploy/install-deps.sh)."""

    @pytest.fixture(autouse=True)
    def _bt_tools() -> Iterator[None]:
        missing = [t for t in tools if shutil.which(t) is None]
        if importlib.util.find_spec("libtorrent") is None:
            missing.append("python module libtorrent")
        if missing:
            reason = f"needs {', '.join(missing)} (deploy/install-deps.sh)"
            print(reason, file=sys.stderr)
            pytest.skip(reason=reason)
        yield

    return _bt_tools

# --- static tracker (run as `python -m tests.netns.bt static-tracker`) ------------------------
def _compact(peers: Sequence[str]) -> bytes:
    out = bytearray()
    for peer in peers:
        host, _, port = peer.rpartition(":")
        out += ipaddress.IPv4Address(host).packed + int(port).to_bytes(2, "big")
    return bytes(out)


def _serve_static_tracker(port: int, peers: Sequence[str]) -> None:
    compact = _compact(peers)
    body = b"d8:completei1e10:incompletei0e8:intervali600e5:peers%d:%se" % (len(compact), compact)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.netns.bt")
    sub = parser.add_subparsers(dest="cmd", required=True)
    st = sub.add_parser("static-tracker", help="answer every announce with fixed peers")
    st.add_argument("--port", type=int, required=True)
    st.add_argument("--peer", action="append", default=[], help="IP:PORT")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    _serve_static_tracker(args.port, args.peer)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
