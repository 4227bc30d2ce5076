"""What an operator installs from ``deploy/``: the example config documents every key the
daemon reads (and loads as the defaults), the systemd unit verifies, readiness reaches systemd."""

from __future__ import annotations

import dataclasses
import re
import shutil
import socket
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from swarmcache.config import Config, load_config
from swarmcache.systemd import sd_notify

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
EXAMPLE = DEPLOY / "swarmcache.example.toml"
UNIT = DEPLOY / "swarmcache.service"


def _fields(cls: Any, prefix: str) -> set[str]:
    out: set[str] = set()
    for f in dataclasses.fields(cls):
        out.add(f"{prefix}{f.name}")
    return out


def _documented(table: dict[str, Any], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for key, value in table.items():
        out.add(f"{prefix}{key}")
        if isinstance(value, dict):
            out |= _documented(value, f"{prefix}{key}.")
    return out


def test_example_config_names_every_key_of_every_section() -> None:
    example = tomllib.loads(EXAMPLE.read_text())
    wanted: set[str] = set()
    for section in dataclasses.fields(Config):
        wanted.add(section.name)
        wanted |= _fields(getattr(Config(), section.name).__class__, f"{section.name}.")
    # Arrays of tables (e.g. [[cache.key_rules]]) are shown commented out: a default of none.
    text = EXAMPLE.read_text()
    missing = {
        key
        for key in wanted - _documented(example)
        if not re.search(rf"^#\s*(\[\[{re.escape(key)}\]\]|{key.split('.')[-1]}\s*=)", text, re.M)
    }
    assert not missing, f"keys missing from {EXAMPLE.name}: {sorted(missing)}"


def test_every_example_key_has_a_comment() -> None:
    for number, line in enumerate(EXAMPLE.read_text().splitlines(), start=1):
        if re.match(r"^[a-z_]+\s*=", line) and "#" not in line:
            # a key without a comment on its line needs one on the line before
            previous = EXAMPLE.read_text().splitlines()[number - 2]
            assert previous.lstrip().startswith("#"), f"line {number} has no comment: {line}"


def test_example_config_loads_and_shows_the_defaults() -> None:
    assert load_config(EXAMPLE) == Config().validate()


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip(reason="systemd-analyze is not installed")
    installed = shutil.which("swarmcache")
    if installed is None:
        pytest.skip(reason="the swarmcache command is not installed (pip install -e .)")
    # The unit names the venv an operator creates; point it at this machine's install.
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/opt/swarmcache/bin/swarmcache", installed))
    res = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    complaints = [line for line in res.stderr.splitlines() if UNIT.name in line]
    assert res.returncode == 0 and not complaints, res.stderr


def test_unit_keeps_capabilities_and_fails_open() -> None:
    text = UNIT.read_text()
    assert "User=swarmcache" in text
    assert re.search(r"^AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW$", text, re.M)
    assert re.search(r"^ExecStopPost=\S+ remove-rules ", text, re.M)
    assert re.search(r"^Restart=on-failure$", text, re.M)


def test_sd_notify_reaches_the_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert sd_notify("READY=1")
        assert server.recv(64) == b"READY=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not sd_notify("READY=1")  # not under systemd: a no-op
