"""Operator commands fail clearly and with exit codes scripts can rely on."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from swarmcache.cli import EXIT_UNREACHABLE, EXIT_USAGE, main


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    "argv",
    [
        ["torrents"],
        ["purge", "00" * 20],
        ["pin", "magnet:?x"],
        ["seen"],
        ["stats"],
        ["top", "--kind", "http"],
        ["inspect", "http://example.com/"],
        ["purge", "--host", "example.com"],
        ["pin", "--prefix", "http://example.com/a/"],
        ["unpin", "http://example.com/a"],
        ["pins", "--json"],
    ],
)
def test_a_stopped_daemon_is_reported_not_a_traceback(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code = main([*argv, "--admin", f"http://127.0.0.1:{_dead_port()}"])
    err = capsys.readouterr().err
    assert code == EXIT_UNREACHABLE
    assert "swarmcache daemon not reachable at 127.0.0.1:" in err
    assert "connection refused" in err and "swarmcache run" in err


def test_pin_of_a_missing_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["pin", str(tmp_path / "nope.torrent"), "--admin", "http://127.0.0.1:1"])
    assert code == EXIT_USAGE
    assert "cannot read" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["purge"],
        ["purge", "--host", "a.test", "--prefix", "http://a.test/"],
        ["pin"],
        ["unpin", "http://a.test/", "--host", "a.test"],
        ["top", "--kind", "ftp"],
        ["top", "--limit", "many"],
        ["inspect"],
    ],
)
def test_bad_usage_exits_2_before_asking_the_daemon(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit:
        main([*argv, "--admin", f"http://127.0.0.1:{_dead_port()}"])
    assert exit.value.code == EXIT_USAGE
    assert "usage: swarmcache" in capsys.readouterr().err


def test_every_operator_command_documents_its_exit_codes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for command in ("stats", "top", "inspect", "purge", "pin", "unpin", "pins", "torrents"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = capsys.readouterr().out
        assert "examples:" in out and "swarmcache " + command in out
        assert "3  the daemon is not reachable" in out and "--json" in out
