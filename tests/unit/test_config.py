"""Config loading: one typed object; every mistake is named."""

from __future__ import annotations

from pathlib import Path

import pytest

from swarmcache.cli import build_parser, config_from_args
from swarmcache.config import Config, ConfigError, load_config

EXAMPLE = Path(__file__).parents[2] / "deploy" / "swarmcache.example.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_example_config_documents_the_defaults() -> None:
    assert load_config(EXAMPLE) == Config().validate()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[cache]\ndri = '/x'\n", "cache.dri: unknown key"),
        ("[cahce]\n", "cahce: unknown section"),
        ("[http]\nproxy_listen = '3128'\n", "http.proxy_listen: expected HOST:PORT"),
        ("[http]\nproxy_listen = 'a.b:1'\n", "http.proxy_listen: 'a.b' is not an IP address"),
        ("[http]\nproxy_listen = '1.2.3.4:70000'\n", "port 70000 is out of range"),
        (
            "[http]\nupstream_connect_timeout = 'x'\n",
            "http.upstream_connect_timeout: expected float",
        ),
        ("[http]\nmax_headers = 0\n", "http.max_headers: must be > 0"),
        ("[cache]\nfsync = 1\n", "cache.fsync: expected bool"),
        ("[intercept]\nsubscribers = ['10.0.0.1/8']\n", "intercept.subscribers: '10.0.0.1/8'"),
        ("[intercept]\nsubscribers = []\n", "at least one subscriber prefix"),
        ("[intercept]\nports = [0]\n", "port 0 is out of range"),
        ("[admin]\nlisten = '0.0.0.0:9480'\n", "admin.token: required"),
        ("[log]\nlevel = 'loud'\n", "log.level"),
        ("[cache\n", "not valid TOML"),
    ],
)
def test_bad_config_is_rejected_with_the_key_named(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(".", r"\.")):
        load_config(write(tmp_path, text))


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "absent.toml")


def test_flags_override_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[cache]\ndir = '/a'\n[intercept]\nsubscribers = ['10.0.0.0/8']\n")
    args = build_parser().parse_args(
        [
            "run",
            "--config",
            str(path),
            "--cache-dir",
            "/b",
            "--proxy-listen",
            "127.0.0.1:8080",
            "--admin-listen",
            "127.0.0.1:9999",
            "--no-intercept",
            "--subscribers",
            "192.168.0.0/16, 172.16.0.0/12",
        ]
    )
    config = config_from_args(args)
    assert config.cache.dir == "/b"
    assert config.http.proxy_listen == "127.0.0.1:8080"
    assert config.admin.listen == "127.0.0.1:9999"
    assert config.intercept.enabled is False
    assert [str(n) for n in config.intercept.subscriber_networks] == [
        "192.168.0.0/16",
        "172.16.0.0/12",
    ]


def test_bad_flag_value_is_named() -> None:
    args = build_parser().parse_args(["run", "--subscribers", "banana"])
    with pytest.raises(ConfigError, match=r"intercept\.subscribers: 'banana'"):
        config_from_args(args)


def test_cli_reports_config_errors_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    from swarmcache.cli import main

    assert main(["check-config", "--proxy-listen", "nonsense"]) == 2
    assert "http.proxy_listen" in capsys.readouterr().err
