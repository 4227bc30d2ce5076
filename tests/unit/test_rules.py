"""The pure rule builders of interceptor.rules, and install/remove driven by a fake runner."""

from __future__ import annotations

import ipaddress
import logging
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from interceptor import rules
from interceptor.rules import InterceptError, InterceptSpec

NET_A = ipaddress.IPv4Network("10.77.1.0/24")
NET_B = ipaddress.IPv4Network("100.64.0.0/10")


def spec(**kw: Any) -> InterceptSpec:
    base: dict[str, Any] = {"subscribers": (NET_A,), "ports": (80,), "listen_port": 3129}
    base.update(kw)
    return InterceptSpec(**base)


def joined(cmds: list[list[str]]) -> list[str]:
    return [" ".join(c) for c in cmds]


IPT = "iptables -w -t mangle"


# --------------------------------------------------------------------------- build_commands


def test_single_port_commands_in_order() -> None:
    assert joined(rules.build_commands(spec())) == [
        "ip route replace local 0.0.0.0/0 dev lo table 100",
        "ip rule add fwmark 0x1/0x1 lookup 100",
        f"{IPT} -N SWARMCACHE",
        f"{IPT} -N SWARMCACHE_DIVERT",
        f"{IPT} -N SWARMCACHE_QUEUE",
        f"{IPT} -A SWARMCACHE -p tcp -m multiport --ports 80"
        " -m socket --transparent -j SWARMCACHE_DIVERT",
        f"{IPT} -A SWARMCACHE -s 10.77.1.0/24 -p tcp -m tcp --dport 80 --syn"
        " -m mark --mark 0x2/0x2 -j TPROXY --on-port 3129 --on-ip 0.0.0.0 --tproxy-mark 0x1/0x1",
        f"{IPT} -A SWARMCACHE -p tcp --syn -j SWARMCACHE_QUEUE",
        f"{IPT} -A SWARMCACHE_DIVERT -j MARK --set-xmark 0x1/0x1",
        f"{IPT} -A SWARMCACHE_DIVERT -j ACCEPT",
        f"{IPT} -A SWARMCACHE_QUEUE -s 10.77.1.0/24 -p tcp -m tcp --dport 80 --syn"
        " -m mark ! --mark 0x2/0x2 -j NFQUEUE --queue-num 7 --queue-bypass",
        f"{IPT} -I PREROUTING 1 -p tcp -j SWARMCACHE",
    ]


def test_everything_is_wired_from_the_spec() -> None:
    s = spec(
        subscribers=(NET_A, NET_B),
        ports=(80, 8080),
        listen_port=4000,
        queue_num=9,
        chain="SCX",
        route_table=123,
        in_interface="eth1",
    )
    cmds = joined(rules.build_commands(s))
    tproxy = [c for c in cmds if "-j TPROXY" in c]
    queue = [c for c in cmds if "-j NFQUEUE" in c]
    assert len(tproxy) == len(queue) == 2  # one per subscriber network
    for net, t, q in zip((NET_A, NET_B), tproxy, queue, strict=True):
        for c in (t, q):
            assert f"-i eth1 -s {net} -p tcp -m multiport --dports 80,8080 --syn" in c
        assert t.startswith(f"{IPT} -A SCX ")
        assert "-m mark --mark 0x2/0x2" in t and "--on-port 4000" in t
        assert "--tproxy-mark 0x1/0x1" in t
        assert q.startswith(f"{IPT} -A SCX_QUEUE ")
        assert "-m mark ! --mark 0x2/0x2" in q
        assert q.endswith("-j NFQUEUE --queue-num 9 --queue-bypass")
    assert "ip rule add fwmark 0x1/0x1 lookup 123" in cmds
    assert "ip route replace local 0.0.0.0/0 dev lo table 123" in cmds
    assert f"{IPT} -I PREROUTING 1 -p tcp -j SCX" in cmds
    # The socket rule has no subscriber or interface filter: return traffic of spoofed upstream
    # connections arrives on the other side.
    socket_rule = "-p tcp -m multiport --ports 80,8080 -m socket --transparent -j SCX_DIVERT"
    assert f"{IPT} -A SCX {socket_rule}" in cmds


def test_tproxy_rules_come_before_the_queue_jump() -> None:
    cmds = joined(rules.build_commands(spec(subscribers=(NET_A, NET_B))))
    chain_rules = [c for c in cmds if c.startswith(f"{IPT} -A SWARMCACHE ")]
    assert "-m socket" in chain_rules[0]
    assert all("-j TPROXY" in c for c in chain_rules[1:3])
    assert chain_rules[3].endswith("-j SWARMCACHE_QUEUE")
    assert len(chain_rules) == 4


def test_more_than_15_ports_are_split_into_multiport_groups() -> None:
    ports = tuple(range(8000, 8020))  # 20 ports
    cmds = joined(rules.build_commands(spec(ports=ports)))
    queue = [c for c in cmds if "-j NFQUEUE" in c]
    assert len(queue) == 2
    assert "--dports " + ",".join(map(str, range(8000, 8015))) + " " in queue[0]
    assert "--dports " + ",".join(map(str, range(8015, 8020))) + " " in queue[1]


def test_restore_input_matches_the_commands() -> None:
    s = spec(subscribers=(NET_A, NET_B), ports=(80, 81))
    lines = rules.build_restore(s).splitlines()
    assert lines[0] == "*mangle" and lines[-1] == "COMMIT"
    chains = ["SWARMCACHE", "SWARMCACHE_DIVERT", "SWARMCACHE_QUEUE"]
    assert lines[1:4] == [f":{c} - [0:0]" for c in chains]
    ipt = [c[len(IPT) + 1 :] for c in joined(rules.build_commands(s)) if c.startswith(IPT)]
    assert lines[4:-1] == [c for c in ipt if not c.startswith("-N ")]


def test_queue_restore_refills_only_the_queue_chain() -> None:
    s = spec(subscribers=(NET_A, NET_B))
    lines = rules.build_queue_restore(s).splitlines()
    assert lines[:2] == ["*mangle", ":SWARMCACHE_QUEUE - [0:0]"] and lines[-1] == "COMMIT"
    body = lines[2:-1]
    assert len(body) == 2 and all(ln.startswith("-A SWARMCACHE_QUEUE ") for ln in body)
    assert body == [ln for ln in rules.build_restore(s).splitlines() if "-j NFQUEUE" in ln]


# --------------------------------------------------------------------------- build_removal


def test_removal_covers_install() -> None:
    s = spec(chain="SCX", route_table=77, in_interface="eth0")
    install = rules.build_commands(s)
    removal = joined(rules.build_removal(s))
    for argv in install:
        if argv[0] == "ip":
            verb = {"replace": "del", "add": "del"}[argv[2]]
            assert " ".join([argv[0], argv[1], verb, *argv[3:]]) in removal
        elif "-N" in argv:
            chain = argv[argv.index("-N") + 1]
            assert f"{IPT} -F {chain}" in removal and f"{IPT} -X {chain}" in removal
        elif "-I" in argv:
            rest = argv[argv.index("-I") + 3 :]  # skip "-I PREROUTING 1"
            assert " ".join([IPT, "-D", "PREROUTING", *rest]) in removal
        else:
            assert "-A" in argv  # contents of our own chains: gone with -F/-X
    # The jump goes first (a referenced chain cannot be deleted), the chains are flushed before
    # they are deleted, and the parent chain is deleted before the chains it jumps to.
    assert removal[0] == f"{IPT} -D PREROUTING -p tcp -j SCX"
    assert removal.index(f"{IPT} -F SCX_QUEUE") < removal.index(f"{IPT} -X SCX")
    assert removal.index(f"{IPT} -X SCX") < removal.index(f"{IPT} -X SCX_DIVERT")


# --------------------------------------------------------------------------- the spec


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"subscribers": ()}, "subscriber"),
        ({"ports": ()}, "port"),
        ({"ports": (80, 80)}, "duplicate"),
        ({"ports": (0,)}, "out of range"),
        ({"listen_port": 70000}, "out of range"),
        ({"queue_num": 65536}, "queue_num"),
        ({"chain": "bad chain"}, "chain"),
        ({"chain": "X" * 23}, "chain"),
        ({"route_table": 254}, "reserved"),
        ({"route_table": 0}, "reserved"),
        ({"in_interface": "eth0; rm -rf /"}, "interface"),
        ({"subscribers": (ipaddress.IPv6Network("2001:db8::/32"),)}, "IPv4"),
    ],
)
def test_invalid_specs_are_rejected(kw: dict[str, Any], msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        spec(**kw)


def test_json_round_trip() -> None:
    s = spec(subscribers=(NET_A, NET_B), ports=(80, 8080), queue_num=3, in_interface="eth1")
    assert InterceptSpec.from_json(s.to_json()) == s
    assert InterceptSpec.from_json(spec().to_json()) == spec()


# --------------------------------------------------------------------------- runners


@dataclass
class FakeRun:
    """Records calls; ``respond(argv, input)`` returns (rc, stderr) or raises."""

    respond: Callable[[list[str], str | None], tuple[int, str]] = lambda argv, inp: (0, "")
    calls: list[tuple[list[str], str | None]] = field(default_factory=list)

    def __call__(self, argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        assert kw["capture_output"] and kw["text"] and not kw["check"] and kw["timeout"] > 0
        inp = kw.get("input")
        self.calls.append((argv, inp))
        rc, err = self.respond(argv, inp)
        return subprocess.CompletedProcess(argv, rc, "", err)

    @property
    def argvs(self) -> list[str]:
        return [" ".join(a) for a, _ in self.calls]


def absent_on_delete(argv: list[str], inp: str | None) -> tuple[int, str]:
    """A clean box: every removal step fails with "already gone", the rest succeeds."""
    if "-D" in argv:
        return 1, "iptables: Bad rule (does a matching rule exist in that chain?)."
    if "-F" in argv or "-X" in argv:
        return 1, "iptables: No chain/target/match by that name."
    if argv[:3] == ["ip", "rule", "del"]:
        return 2, "RTNETLINK answers: No such file or directory"
    if argv[:3] == ["ip", "route", "del"]:
        return 2, "RTNETLINK answers: No such process"
    return 0, ""


def test_install_removes_leftovers_then_installs_atomically(
    caplog: pytest.LogCaptureFixture,
) -> None:
    s = spec()
    run = FakeRun(absent_on_delete)
    with caplog.at_level(logging.WARNING):
        rules.install(s, run)
    assert caplog.records == []  # "already gone" is not worth a warning
    removal = joined(rules.build_removal(s))
    assert run.argvs[: len(removal)] == removal
    assert run.argvs[len(removal) :] == [
        "ip route replace local 0.0.0.0/0 dev lo table 100",
        "ip rule add fwmark 0x1/0x1 lookup 100",
        "iptables-restore -w --noflush",
    ]
    assert run.calls[-1][1] == rules.build_restore(s)


def test_install_failure_names_the_command_and_rolls_back() -> None:
    def respond(argv: list[str], inp: str | None) -> tuple[int, str]:
        if argv[0] == "iptables-restore":
            return 2, "iptables-restore: line 6 failed\n"
        return absent_on_delete(argv, inp)

    run = FakeRun(respond)
    with pytest.raises(InterceptError, match=r"iptables-restore -w --noflush.*line 6 failed") as ei:
        rules.install(spec(), run)
    assert ei.value.returncode == 2
    # rolled back: the removal ran again after the failure
    n = len(rules.build_removal(spec()))
    assert run.argvs[-n:] == joined(rules.build_removal(spec()))


def test_install_with_missing_tool_raises_intercept_error() -> None:
    def respond(argv: list[str], inp: str | None) -> tuple[int, str]:
        raise FileNotFoundError(2, "No such file or directory", argv[0])

    with pytest.raises(InterceptError, match="not installed"):
        rules.install(spec(), FakeRun(respond))


def test_remove_repeats_deletes_and_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    deleted: dict[str, int] = {}

    def respond(argv: list[str], inp: str | None) -> tuple[int, str]:
        key = " ".join(argv)
        if "-D" in argv or argv[:3] == ["ip", "rule", "del"]:
            deleted[key] = deleted.get(key, 0) + 1
            if deleted[key] <= 2:  # two duplicates left by racing runs
                return 0, ""
        if argv[0] == "ip" and argv[1] == "route":
            raise FileNotFoundError(2, "No such file or directory", "ip")
        if "-X" in argv:
            return 4, "CHAIN_DEL failed (Device or resource busy)"
        return absent_on_delete(argv, inp)

    run = FakeRun(respond)
    with caplog.at_level(logging.WARNING):
        rules.remove(spec(), run)  # must not raise
    assert run.argvs.count(f"{IPT} -D PREROUTING -p tcp -j SWARMCACHE") == 3
    assert run.argvs.count("ip rule del fwmark 0x1/0x1 lookup 100") == 3
    warnings = " ".join(r.getMessage() for r in caplog.records)
    assert "Device or resource busy" in warnings  # unexpected failures are reported ...
    assert "not installed" in warnings
    assert "does a matching rule exist" not in warnings  # ... "already gone" ones are not


def test_disable_and_enable_touch_only_the_queue_chain() -> None:
    s = spec(chain="SCX")
    run = FakeRun()
    rules.disable_queue(s, run)
    rules.enable_queue(s, run)
    assert run.argvs == [f"{IPT} -F SCX_QUEUE", "iptables-restore -w --noflush"]
    assert run.calls[1][1] == rules.build_queue_restore(s)

    failing = FakeRun(lambda argv, inp: (1, "iptables: No chain/target/match by that name."))
    with pytest.raises(InterceptError, match="-F SCX_QUEUE"):
        rules.disable_queue(s, failing)
    with pytest.raises(InterceptError, match="iptables-restore"):
        rules.enable_queue(s, failing)


# --------------------------------------------------------------------------- sensing chain


def test_sensing_rules_always_bypass_and_are_hooked_into_forward() -> None:
    s = spec(subscribers=(NET_A, NET_B), sense_queue=9)
    sense = rules.sense_rules(s)
    assert sense, "a sense queue must produce rules"
    for rule in sense:
        assert rule[-5:] == ["-j", "NFQUEUE", "--queue-num", "9", "--queue-bypass"]
        assert {"-s", "-d"} & set(rule)  # only traffic of subscribers is ever queued
    udp = [r for r in sense if "udp" in r]
    assert udp and all("limit" in r for r in udp)  # a datagram flood is forwarded unseen
    # Only the first packets of each flow even enter the chain.
    jump = "-m connbytes --connbytes 0:16 --connbytes-dir both --connbytes-mode packets"
    cmds = joined(rules.build_commands(s))
    assert f"{IPT} -I FORWARD 1 {jump} -j SWARMCACHE_SENSE" in cmds
    restore = rules.build_restore(s)
    assert ":SWARMCACHE_SENSE - [0:0]" in restore
    assert f"-I FORWARD 1 {jump} -j SWARMCACHE_SENSE" in restore
    removal = joined(rules.build_removal(s))
    assert f"{IPT} -D FORWARD {jump} -j SWARMCACHE_SENSE" in removal
    assert f"{IPT} -X SWARMCACHE_SENSE" in removal
    assert InterceptSpec.from_json(s.to_json()) == s
    assert rules.sense_rules(spec()) == []


def test_a_stalled_daemon_stops_sensing_too() -> None:
    s = spec(chain="SCX", sense_queue=9)
    run = FakeRun()
    rules.disable_queue(s, run)
    assert run.argvs == [f"{IPT} -F SCX_QUEUE", f"{IPT} -F SCX_SENSE"]
    restore = rules.build_queue_restore(s)
    assert ":SCX_SENSE - [0:0]" in restore and "--queue-num 9" in restore


def test_sense_queue_must_differ_from_the_syn_queue() -> None:
    with pytest.raises(ValueError, match="sense_queue"):
        spec(queue_num=7, sense_queue=7)
