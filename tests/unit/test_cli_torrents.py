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
    "argv", [["torrents"], ["purge", "00" * 20], ["pin", "magnet:?x"], ["seen"]]
)
def test_a_stopped_daemon_is_reported_not_a_traceback(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code = main([*argv, "--admin", f"http://127.0.0.1:{_dead_port()}"])
    err = capsys.readouterr().err
    assert code == EXIT_UNREACHABLE
    assert "cannot reach the admin API" in err and "swarmcache run" in err


def test_pin_of_a_missing_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["pin", str(tmp_path / "nope.torrent"), "--admin", "http://127.0.0.1:1"])
    assert code == EXIT_USAGE
    assert "cannot read" in capsys.readouterr().err
