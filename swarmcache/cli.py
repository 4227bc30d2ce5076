"""``swarmcache`` command line. Flags override the TOML config; errors name the key."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any

from swarmcache.advise import add_parser as add_advise_parser
from swarmcache.advise import run as run_advise
from swarmcache.config import Config, ConfigError, load_config
from swarmcache.operator_cli import (
    EXIT_CODES,
    EXIT_ERROR,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    OPERATOR_COMMANDS,
    add_operator_commands,
    run_operator_command,
)

__all__ = [
    "EXIT_ERROR",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "build_parser",
    "config_from_args",
    "main",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="swarmcache",
        description="Transparent ISP-side HTTP and BitTorrent cache.",
        epilog="Operator commands talk to a running daemon's admin API (--admin, --token).\n"
        "`swarmcache COMMAND --help` shows examples.\n\n" + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the gateway daemon")
    check = sub.add_parser("check-config", help="load and validate a config, print it")
    unrules = sub.add_parser(
        "remove-rules",
        help="remove the interception rules a config installs (fail open by hand)",
        description="Remove the iptables chains, ip rule and route the daemon installs for "
        "this config, so subscribers' traffic flows direct. Idempotent; the systemd unit runs "
        "it after every stop, in case the daemon could not.",
    )
    for cmd in (run, check, unrules):
        cmd.add_argument("--config", metavar="FILE", help="TOML config file")
        cmd.add_argument("--cache-dir", metavar="DIR", help="cache directory (cache.dir)")
        cmd.add_argument(
            "--proxy-listen", metavar="HOST:PORT", help="explicit HTTP proxy (http.proxy_listen)"
        )
        cmd.add_argument(
            "--admin-listen", metavar="HOST:PORT", help="admin API and /metrics (admin.listen)"
        )
        cmd.add_argument(
            "--no-intercept",
            action="store_true",
            help="install no rules, explicit proxy only (no root needed)",
        )
        cmd.add_argument(
            "--subscribers",
            metavar="CIDR[,CIDR]",
            help="subscriber prefixes served (intercept.subscribers)",
        )
        cmd.add_argument("--access-log", metavar="PATH", help="access log file, - for stdout")
        cmd.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    add_operator_commands(sub)
    add_advise_parser(sub)
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    config = load_config(args.config)
    changes: dict[str, dict[str, Any]] = {}
    if args.cache_dir is not None:
        changes.setdefault("cache", {})["dir"] = args.cache_dir
    if args.proxy_listen is not None:
        changes.setdefault("http", {})["proxy_listen"] = args.proxy_listen
    if args.admin_listen is not None:
        changes.setdefault("admin", {})["listen"] = args.admin_listen
    if args.no_intercept:
        changes.setdefault("intercept", {})["enabled"] = False
    if args.subscribers is not None:
        prefixes = [p.strip() for p in args.subscribers.split(",") if p.strip()]
        changes.setdefault("intercept", {})["subscribers"] = prefixes
    if args.access_log is not None:
        changes.setdefault("log", {})["access_log"] = args.access_log
    if args.log_level is not None:
        changes.setdefault("log", {})["level"] = args.log_level
    return config.override(**changes) if changes else config


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in OPERATOR_COMMANDS:
        return run_operator_command(args)
    if args.command == "advise":
        return run_advise(args)
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"swarmcache: config error: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        print(config)
        return 0
    if args.command == "remove-rules":
        from interceptor import rules
        from swarmcache.daemon import intercept_spec

        rules.remove(intercept_spec(config))
        print("interception rules removed")
        return 0
    logging.basicConfig(
        level=config.log.level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from swarmcache.daemon import run

    try:
        asyncio.run(run(config))
    except OSError as exc:
        print(f"swarmcache: cannot start: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # start-up errors from the interceptor name their command
        if type(exc).__name__ == "InterceptError":
            print(f"swarmcache: cannot install interception rules: {exc}", file=sys.stderr)
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
