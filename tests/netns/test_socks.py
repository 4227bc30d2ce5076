"""The SOCKS5 listener through the real gateway, with curl as the SOCKS client.

HTTP to port 80 goes through the cache (a second fetch is a hit and the origin sees one
request); other ports are relayed; non-subscribers, wrong passwords and the box's own
loopback services are refused.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netns.gateway import ORIGIN, ROOT, Gateway, random_bytes
from tests.netns.testbed import Testbed

pytestmark = pytest.mark.netns

SOCKS = "10.77.1.1:1080"
USER = "alice:s3cret"


@pytest.fixture
def gateway(testbed: Testbed, tmp_path: Path) -> Iterator[Gateway]:
    gw = Gateway(testbed, tmp_path)
    gw.start_origin()
    # The same files on a port the cache does not handle: reached by a plain relay.
    testbed.popen(
        testbed.net, sys.executable, str(ROOT / "deploy" / "origin.py"), "--bind", ORIGIN,
        "--port", "8081", "--root", str(gw.www), "--log", str(tmp_path / "origin-8081.log"),
    )  # fmt: skip
    config = tmp_path / "socks.toml"
    config.write_text(f'[socks]\nlisten = "{SOCKS}"\nusers = ["{USER}"]\n')
    gw.start_daemon("--no-intercept", "--config", str(config))
    try:
        yield gw
    finally:
        gw.stop_daemon()


def _socks_curl(gw: Gateway, url: str, *extra: str, ns: str = "sub") -> tuple[int, bytes, str]:
    body = gw.tmp / "socks-body"
    head = gw.tmp / "socks-head"
    res = gw.tb.run(
        ns, "curl", "-s", "--max-time", "20", "--socks5", SOCKS, "-D", str(head),
        "-o", str(body), *extra, url, check=False, timeout=30,
    )  # fmt: skip
    headers = head.read_text(errors="replace") if head.exists() else ""
    data = body.read_bytes() if body.exists() else b""
    for p in (body, head):
        p.unlink(missing_ok=True)
    return res.returncode, data, headers


def test_http_through_socks_is_cached(gateway: Gateway) -> None:
    payload = random_bytes(300_000)
    url = gateway.put("socks.bin", payload, {"Cache-Control": "max-age=600"})
    rc, first, head1 = _socks_curl(gateway, url, "--proxy-user", USER)
    assert rc == 0 and first == payload, head1
    rc, second, head2 = _socks_curl(gateway, url, "--proxy-user", USER)
    assert rc == 0 and second == payload
    assert "x-cache: miss" in head1.lower()
    assert "x-cache: hit" in head2.lower()
    assert len(gateway.origin_requests("/socks.bin")) == 1
    cached = gateway.metrics().get('swarmcache_socks_connections_total{outcome="cached"}')
    assert cached is not None and cached >= 2


def test_other_ports_are_relayed_untouched(gateway: Gateway) -> None:
    payload = random_bytes(2_000_000)
    gateway.put("relay.bin", payload)
    rc, got, head = _socks_curl(
        gateway, f"http://{ORIGIN}:8081/relay.bin", "--proxy-user", USER
    )
    assert rc == 0 and got == payload
    assert "x-cache" not in head.lower()  # the origin's own response, not the cache's
    metrics = gateway.metrics()
    assert metrics.get("swarmcache_http_tunnel_bytes_total", 0) >= len(payload)
    assert metrics.get('swarmcache_socks_connections_total{outcome="relayed"}', 0) >= 1


def test_refusals(gateway: Gateway) -> None:
    url = gateway.put("x.bin", b"x" * 100)
    # Wrong password.
    rc, _, _ = _socks_curl(gateway, url, "--proxy-user", "alice:wrong")
    assert rc != 0
    # No credentials at all, where the listener requires them.
    rc, _, _ = _socks_curl(gateway, url)
    assert rc != 0
    # The box's own loopback services are not a destination.
    rc, _, _ = _socks_curl(gateway, "http://127.0.0.1:9480/metrics", "--proxy-user", USER)
    assert rc != 0
    # A client outside the subscriber prefixes (the internet side) is refused.
    rc, _, _ = _socks_curl(gateway, url, "--proxy-user", USER, ns="net")
    assert rc != 0
    refused = gateway.metrics().get('swarmcache_http_refused_connections_total{listener="socks"}')
    assert refused is not None and refused >= 1
    metrics = gateway.metrics()
    # The wrong password and the loopback destination; the method mismatch is a bad handshake.
    assert metrics.get('swarmcache_socks_connections_total{outcome="refused"}', 0) >= 2
    assert metrics.get('swarmcache_socks_connections_total{outcome="bad_handshake"}', 0) >= 1


@pytest.fixture
def open_gateway(testbed: Testbed, tmp_path: Path) -> Iterator[Gateway]:
    """A SOCKS listener without accounts (OpenBSD nc, ssh's usual ProxyCommand, cannot log in)."""
    gw = Gateway(testbed, tmp_path)
    config = tmp_path / "socks-open.toml"
    config.write_text(f'[socks]\nlisten = "{SOCKS}"\n')
    gw.start_daemon("--no-intercept", "--config", str(config))
    try:
        yield gw
    finally:
        gw.stop_daemon()


def test_an_ssh_session_runs_through_socks(
    testbed: Testbed, open_gateway: Gateway, tmp_path: Path
) -> None:
    for tool in ("sshd", "ssh", "ssh-keygen", "nc"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            reason = f"needs {tool} (openssh-server, netcat-openbsd: deploy/install-deps.sh)"
            print(reason, file=sys.stderr)
            pytest.skip(reason=reason)
    keys = tmp_path / "ssh"
    keys.mkdir(mode=0o700)
    for name in ("host", "client"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / name)], check=True
        )
    (keys / "authorized_keys").write_text((keys / "client.pub").read_text())
    os.chmod(keys / "authorized_keys", 0o600)
    sshd_config = keys / "sshd_config"
    sshd_config.write_text(
        f"ListenAddress {ORIGIN}:2222\nHostKey {keys / 'host'}\nPidFile none\n"
        f"AuthorizedKeysFile {keys / 'authorized_keys'}\nPasswordAuthentication no\n"
        "StrictModes no\nUsePAM no\nPermitRootLogin prohibit-password\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
    testbed.popen(testbed.net, "/usr/sbin/sshd", "-D", "-e", "-f", str(sshd_config))
    time.sleep(0.5)
    res = testbed.run(
        testbed.sub, "ssh", "-i", str(keys / "client"), "-p", "2222",
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "BatchMode=yes", "-o", f"ProxyCommand=nc -X 5 -x {SOCKS} %h %p",
        f"root@{ORIGIN}", "echo through-socks; head -c 1000000 /dev/zero | sha256sum",
        check=False, timeout=30,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "through-socks" in res.stdout
    assert hashlib.sha256(bytes(1_000_000)).hexdigest() in res.stdout
    # The relay counts its bytes when both sides have closed, just after ssh exits.
    open_gateway.wait_until(
        lambda: open_gateway.metrics().get("swarmcache_http_tunnel_bytes_total", 0) > 0,
        "the SSH session's bytes were not counted as relayed",
        timeout=10,
    )


def test_a_destination_that_answers_and_hangs_up_at_once_is_heard(
    testbed: Testbed, open_gateway: Gateway
) -> None:
    """A server that sends a refusal and closes before the relay starts (an SMTP 554, a full
    FTP server): the client still gets every byte it sent, then the end of the stream."""
    banner = b"554 5.7.1 go away\n" * 50
    server = (
        "import socket\n"
        f"s = socket.create_server(({ORIGIN!r}, 2525))\n"
        "while True:\n"
        "    c, _ = s.accept()\n"
        f"    c.sendall({banner!r})\n"
        "    c.close()\n"
    )
    testbed.popen(testbed.net, sys.executable, "-c", server)
    open_gateway.wait_until(
        lambda: "LISTEN"
        in testbed.run(testbed.net, "ss", "-Hltn", f"src {ORIGIN}:2525", check=False).stdout,
        "banner server did not start",
    )
    for _ in range(5):
        res = testbed.run(
            testbed.sub, "nc", "-X", "5", "-x", SOCKS, ORIGIN, "2525", input="", timeout=20
        )
        assert res.stdout == banner.decode(), res.stderr
