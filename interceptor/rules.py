"""Kernel rules that divert subscriber TCP flows to the daemon's TPROXY listener, failing open.

Why it is built this way (see the design brief §1 and the testbed notes §3-§4):

Only the *SYN* of a candidate flow goes through NFQUEUE, with ``--queue-bypass``. The reader
(:mod:`interceptor.synqueue`) answers every SYN with ``mark |= 0x2`` and verdict *repeat*; the
repeated packet re-enters mangle PREROUTING, where a rule placed *before* the queue rule TPROXYs
TCP carrying mark 0x2 to the listener. The rest of the flow finds the accepted transparent
socket through ``-m socket --transparent`` and is marked 0x1 so that it, too, is routed locally.
Consequences:

* daemon alive: new flows go through the daemon;
* daemon dead (``kill -9``): the queue has no reader, ``--queue-bypass`` accepts the SYN
  unmarked, TPROXY does not match, and the flow is forwarded as if swarmcache did not exist,
  at once, with no help from user space;
* daemon alive but stuck (SIGSTOP, deadlock): the bound queue holds the SYNs, so the watchdog
  (:mod:`interceptor.watchdog`) flushes the queue chain and new SYNs bypass the daemon. The
  TPROXY rule stays but is inert: nothing gets mark 0x2 any more.

Mark bits (only these two bits of the packet mark are used, always with a mask, so marks that
other software keeps in the other bits survive):

* ``0x1`` (:data:`MARK_LOCAL`): "deliver locally". Set by TPROXY (``--tproxy-mark 0x1/0x1``) on
  the diverted SYN and by the DIVERT chain on every later packet of an intercepted flow; the
  policy rule ``fwmark 0x1/0x1 lookup <table>`` sends it to ``local 0.0.0.0/0 dev lo``.
* ``0x2`` (:data:`MARK_INTERCEPT`): "the daemon elected this SYN". Set only by the queue
  reader's verdict. A TPROXY'd SYN therefore carries 0x3, which is why the policy rule must be
  written *with the mask*: a plain ``fwmark 1`` means ``0x1/0xffffffff`` and silently fails to
  match 0x3.

Everything lives in three chains of our own in the mangle table (``<chain>``, ``<chain>_DIVERT``
and ``<chain>_QUEUE``) plus one jump from PREROUTING, so install and removal never touch foreign
rules. The queue rules get a chain of their own so the watchdog can switch interception off and
on (:func:`disable_queue` / :func:`enable_queue`) without touching anything else. Chain contents
are loaded with one ``iptables-restore --noflush`` transaction: declaring a chain there flushes
and refills it atomically, so a half-installed ruleset is never visible to packets.

IPv4 only (iptables, not ip6tables), like the rest of the interception path for now.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "IP",
    "IPTABLES",
    "IPTABLES_RESTORE",
    "MARK_INTERCEPT",
    "MARK_LOCAL",
    "InterceptError",
    "InterceptSpec",
    "Runner",
    "build_commands",
    "build_queue_restore",
    "build_removal",
    "build_restore",
    "disable_queue",
    "enable_queue",
    "install",
    "remove",
    "sense_rules",
]

log = logging.getLogger(__name__)

IPTABLES = "iptables"
IPTABLES_RESTORE = "iptables-restore"
IP = "ip"

MARK_LOCAL = 0x1
"""Mark bit meaning "route to the local stack" (policy rule -> table with ``local 0/0``)."""
MARK_INTERCEPT = 0x2
"""Mark bit the SYN queue reader sets on SYNs it wants TPROXY'd to the daemon."""

_TABLE = "mangle"
_MULTIPORT_MAX = 15  # iptables multiport accepts at most 15 ports per rule
_CHAIN_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,21}$")  # + "_DIVERT" stays within 28 chars
_IFACE_RE = re.compile(r"^[A-Za-z0-9_.:+-]{1,15}$")
_RESERVED_TABLES = frozenset({0, 253, 254, 255})  # unspec, default, main, local
_COMMAND_TIMEOUT = 15.0

Runner = Callable[..., "subprocess.CompletedProcess[str]"]
"""Something called like :func:`subprocess.run` (tests pass a fake)."""


class InterceptError(RuntimeError):
    """A rule command failed; the message names the command and quotes its stderr."""

    def __init__(self, argv: Sequence[str], returncode: int | None, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr.strip()
        super().__init__(
            f"command {' '.join(self.argv)!r} failed (rc={returncode}): {self.stderr or '-'}"
        )


@dataclass(frozen=True, slots=True)
class InterceptSpec:
    """What to intercept and where to send it. Validated on construction."""

    subscribers: tuple[ipaddress.IPv4Network, ...]
    ports: tuple[int, ...]
    listen_port: int
    queue_num: int = 7
    chain: str = "SWARMCACHE"
    route_table: int = 100
    in_interface: str | None = None
    # NFQUEUE for BitTorrent sensing (see :func:`sense_rules`); None: no sensing rules.
    sense_queue: int | None = None

    def __post_init__(self) -> None:
        if not self.subscribers:
            raise ValueError("at least one subscriber network is required")
        for net in self.subscribers:
            if not isinstance(net, ipaddress.IPv4Network):
                raise ValueError(f"subscriber {net!r} is not an IPv4Network")
        if not self.ports:
            raise ValueError("at least one port is required")
        if len(set(self.ports)) != len(self.ports):
            raise ValueError(f"duplicate ports in {self.ports}")
        for port in (*self.ports, self.listen_port):
            if not 1 <= port <= 65535:
                raise ValueError(f"port {port} out of range 1-65535")
        if not 0 <= self.queue_num <= 65535:
            raise ValueError(f"queue_num {self.queue_num} out of range 0-65535")
        if self.sense_queue is not None and (
            not 0 <= self.sense_queue <= 65535 or self.sense_queue == self.queue_num
        ):
            raise ValueError(f"sense_queue {self.sense_queue} out of range or equal to queue_num")
        if not _CHAIN_RE.match(self.chain):
            raise ValueError(f"chain name {self.chain!r} must match {_CHAIN_RE.pattern}")
        if not 0 < self.route_table < 2**32 or self.route_table in _RESERVED_TABLES:
            raise ValueError(f"route_table {self.route_table} is reserved or out of range")
        if self.in_interface is not None and not _IFACE_RE.match(self.in_interface):
            raise ValueError(f"bad interface name {self.in_interface!r}")

    @property
    def divert_chain(self) -> str:
        return f"{self.chain}_DIVERT"

    @property
    def queue_chain(self) -> str:
        return f"{self.chain}_QUEUE"

    @property
    def sense_chain(self) -> str:
        return f"{self.chain}_SENSE"

    def to_json(self) -> str:
        """Serialise for the watchdog's command line (see :meth:`from_json`)."""
        return json.dumps(
            {
                "subscribers": [str(n) for n in self.subscribers],
                "ports": list(self.ports),
                "listen_port": self.listen_port,
                "queue_num": self.queue_num,
                "chain": self.chain,
                "route_table": self.route_table,
                "in_interface": self.in_interface,
                "sense_queue": self.sense_queue,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> InterceptSpec:
        data: dict[str, Any] = json.loads(text)
        iface = data.get("in_interface")
        sense = data.get("sense_queue")
        return cls(
            subscribers=tuple(ipaddress.IPv4Network(s) for s in data["subscribers"]),
            ports=tuple(int(p) for p in data["ports"]),
            listen_port=int(data["listen_port"]),
            queue_num=int(data.get("queue_num", 7)),
            chain=str(data.get("chain", "SWARMCACHE")),
            route_table=int(data.get("route_table", 100)),
            in_interface=None if iface is None else str(iface),
            sense_queue=None if sense is None else int(sense),
        )


# --------------------------------------------------------------------------- pure builders


def _mask(bits: int) -> str:
    return f"{bits:#x}/{bits:#x}"


def _port_matches(ports: Sequence[int], *, either_side: bool = False) -> list[list[str]]:
    """One match per rule: ``--dport`` for a single port, multiport groups of <= 15 otherwise
    (``either_side``: source or destination port, always multiport)."""
    if len(ports) == 1 and not either_side:
        return [["-m", "tcp", "--dport", str(ports[0])]]
    flag = "--ports" if either_side else "--dports"
    groups = [ports[i : i + _MULTIPORT_MAX] for i in range(0, len(ports), _MULTIPORT_MAX)]
    return [["-m", "multiport", flag, ",".join(map(str, g))] for g in groups]


def _flow_matches(spec: InterceptSpec) -> list[list[str]]:
    """``-s NET -p tcp <dport> --syn`` for every subscriber x port group (+ optional ``-i``)."""
    iface = ["-i", spec.in_interface] if spec.in_interface else []
    return [
        [*iface, "-s", str(net), "-p", "tcp", *ports, "--syn"]
        for net in spec.subscribers
        for ports in _port_matches(spec.ports)
    ]


def _queue_rules(spec: InterceptSpec) -> list[list[str]]:
    # "! --mark 0x2/0x2": a repeated SYN must never be queued a second time, whatever happens
    # to the TPROXY rule in front of it (no verdict loop).
    target = (
        f"-m mark ! --mark {_mask(MARK_INTERCEPT)}"
        f" -j NFQUEUE --queue-num {spec.queue_num} --queue-bypass"
    ).split()
    return [[*m, *target] for m in _flow_matches(spec)]


# u32 tests on the first payload bytes (IHL -> transport header -> payload), so the kernel
# queues only packets that can be what the sensing reader looks for (testbed notes §4a).
_TCP_PAYLOAD = "0>>22&0x3C@12>>26&0x3C@"
_UDP_PAYLOAD = "0>>22&0x3C@8"
_U32_BT_HANDSHAKE = _TCP_PAYLOAD + "0=0x13426974"  # "\x13Bit"
_U32_HTTP_GET = _TCP_PAYLOAD + "0=0x47455420"  # "GET "
# A KRPC dict: "d" and the first key's length digit ("d1:a..." queries, "d2:ip..." replies).
_U32_DHT = _UDP_PAYLOAD + ">>16=0x6431:0x6439"
_U32_TRACKER_CONNECT = "0>>22&0x3C@8=0x417&&0>>22&0x3C@12=0x27101980"  # BEP 15 magic
_U32_TRACKER_ANNOUNCE = "0>>22&0x3C@16=0x1"  # action 1 after the 8-byte connection id
_U32_TRACKER_REPLY = _UDP_PAYLOAD + "=0x1"  # announce response: action 1 first
_U32_UTP_SYN = _UDP_PAYLOAD + ">>24=0x41"  # ST_SYN, version 1
# Packets counted per connection (conntrack, both directions): the handshakes of both sides
# and an HTTP request fall within the first few (SYN, SYN-ACK, ACK, data...); a UDP tracker
# exchange is 4 datagrams, a DHT query and its reply 2. Tested on the jump into the sensing
# chain, so the packets of established flows (nearly all forwarded packets) skip the chain's
# rules after one comparison.
_SENSE_CONNBYTES = "0:16"
# UDP datagrams queued per second at most (then forwarded unseen): the reader handles about
# 10-17k packets/s here, and a flood of DHT traffic must not push it into dropping packets.
_SENSE_UDP_LIMIT = ["-m", "limit", "--limit", "5000/second", "--limit-burst", "10000"]


def sense_rules(spec: InterceptSpec) -> list[list[str]]:
    """Rules of the sensing chain (mangle FORWARD): what the sensing reader is shown."""
    if spec.sense_queue is None:
        return []
    queue = f"-j NFQUEUE --queue-num {spec.sense_queue} --queue-bypass".split()
    out: list[list[str]] = []
    for net in map(str, spec.subscribers):
        for side in ("-s", "-d"):
            out.append([side, net, "-p", "tcp", "-m", "u32", "--u32", _U32_BT_HANDSHAKE])
        out.append(["-s", net, "-p", "tcp", "-m", "u32", "--u32", _U32_HTTP_GET])
        # u32 before limit: only datagrams that match spend the rate limit's tokens.
        udp = ["-p", "udp", "-m", "u32", "--u32"]
        for match in (_U32_DHT, _U32_TRACKER_CONNECT, _U32_TRACKER_ANNOUNCE, _U32_UTP_SYN):
            out.append(["-s", net, *udp, match, *_SENSE_UDP_LIMIT])
        for match in (_U32_DHT, _U32_TRACKER_REPLY):
            out.append(["-d", net, *udp, match, *_SENSE_UDP_LIMIT])
    return [[*rule, *queue] for rule in out]


def _chain_rules(spec: InterceptSpec) -> list[tuple[str, list[str]]]:
    """(chain, rule args) for the contents of our chains, in order."""
    # 1. Packets of flows that already have a *transparent* local socket (the daemon's accepted
    #    connections; also spoofed upstream connections, if the daemon makes them): mark 0x1 so
    #    the policy rule routes them to the local stack. --transparent keeps the box's ordinary
    #    sockets (ssh, the daemon's own non-spoofed upstream sockets) out of it.
    #    Only packets with an intercepted port on either side are looked up: the socket match
    #    costs a lookup per packet, and bulk traffic on other ports (BitTorrent, most of what
    #    a gateway forwards) has nothing to find.
    socket_match = ["-m", "socket", "--transparent", "-j", spec.divert_chain]
    rules = [
        (spec.chain, ["-p", "tcp", *ports, *socket_match])
        for ports in _port_matches(spec.ports, either_side=True)
    ]
    # 2. SYNs the reader has elected (mark 0x2) go to the listener; TPROXY adds mark 0x1.
    #    Placed before the queue jump, so the repeated SYN meets it first.
    tproxy = (
        f"-m mark --mark {_mask(MARK_INTERCEPT)} -j TPROXY --on-port {spec.listen_port}"
        f" --on-ip 0.0.0.0 --tproxy-mark {_mask(MARK_LOCAL)}"
    ).split()
    rules.extend((spec.chain, [*m, *tproxy]) for m in _flow_matches(spec))
    # 3. Unelected SYNs go to the reader, via a chain of their own the watchdog can flush.
    rules.append((spec.chain, ["-p", "tcp", "--syn", "-j", spec.queue_chain]))
    rules.append((spec.divert_chain, f"-j MARK --set-xmark {_mask(MARK_LOCAL)}".split()))
    rules.append((spec.divert_chain, ["-j", "ACCEPT"]))
    rules.extend((spec.queue_chain, r) for r in _queue_rules(spec))
    rules.extend((spec.sense_chain, r) for r in sense_rules(spec))
    return rules


def _chains(spec: InterceptSpec) -> list[str]:
    chains = [spec.chain, spec.divert_chain, spec.queue_chain]
    if spec.sense_queue is not None:
        chains.append(spec.sense_chain)
    return chains


def _sense_jump(spec: InterceptSpec) -> list[str] | None:
    if spec.sense_queue is None:
        return None
    early = (
        f"-m connbytes --connbytes {_SENSE_CONNBYTES} --connbytes-dir both "
        "--connbytes-mode packets"
    ).split()
    return [*early, "-j", spec.sense_chain]


def _jump(spec: InterceptSpec) -> list[str]:
    # Only TCP can be intercepted: everything else skips our chains after one comparison.
    return ["-p", "tcp", "-j", spec.chain]


def _ip_rule(spec: InterceptSpec) -> list[str]:
    # With the mask: a TPROXY'd SYN carries 0x3 (see the module docstring).
    return ["fwmark", _mask(MARK_LOCAL), "lookup", str(spec.route_table)]


def _ip_route(spec: InterceptSpec) -> list[str]:
    return ["local", "0.0.0.0/0", "dev", "lo", "table", str(spec.route_table)]


def _ipt(*args: str) -> list[str]:
    return [IPTABLES, "-w", "-t", _TABLE, *args]


def build_commands(spec: InterceptSpec) -> list[list[str]]:
    """The install as plain argv lists, in order (pure).

    :func:`install` applies the iptables part of this list as one ``iptables-restore --noflush``
    transaction (:func:`build_restore`) instead of one process per rule; the effect is the same.
    The route and policy rule come first: until the iptables rules exist nothing carries 0x1.
    """
    cmds: list[list[str]] = [
        [IP, "route", "replace", *_ip_route(spec)],
        [IP, "rule", "add", *_ip_rule(spec)],
    ]
    cmds.extend(_ipt("-N", chain) for chain in _chains(spec))
    cmds.extend(_ipt("-A", chain, *args) for chain, args in _chain_rules(spec))
    cmds.append(_ipt("-I", "PREROUTING", "1", *_jump(spec)))
    sense = _sense_jump(spec)
    if sense is not None:
        cmds.append(_ipt("-I", "FORWARD", "1", *sense))
    return cmds


def build_restore(spec: InterceptSpec) -> str:
    """``iptables-restore --noflush`` input creating (or flushing and refilling) our chains."""
    lines = [f"*{_TABLE}"]
    lines.extend(f":{chain} - [0:0]" for chain in _chains(spec))
    lines.extend(" ".join(["-A", chain, *args]) for chain, args in _chain_rules(spec))
    lines.append(" ".join(["-I", "PREROUTING", "1", *_jump(spec)]))
    sense = _sense_jump(spec)
    if sense is not None:
        lines.append(" ".join(["-I", "FORWARD", "1", *sense]))
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def build_queue_restore(spec: InterceptSpec) -> str:
    """``iptables-restore --noflush`` input that (re)fills only the queue chains (the SYN
    queue and, with sensing, the sensing chain): idempotent."""
    lines = [f"*{_TABLE}", f":{spec.queue_chain} - [0:0]"]
    lines.extend(" ".join(["-A", spec.queue_chain, *r]) for r in _queue_rules(spec))
    if spec.sense_queue is not None:
        lines.append(f":{spec.sense_chain} - [0:0]")
        lines.extend(" ".join(["-A", spec.sense_chain, *r]) for r in sense_rules(spec))
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class _Step:
    argv: list[str]
    repeat: bool = False  # run again while it succeeds (deletes one duplicate per run)


def _removal_steps(spec: InterceptSpec) -> list[_Step]:
    steps = [_Step(_ipt("-D", "PREROUTING", *_jump(spec)), repeat=True)]
    sense = _sense_jump(spec)
    if sense is not None:
        steps.append(_Step(_ipt("-D", "FORWARD", *sense), repeat=True))
    steps.extend(_Step(_ipt("-F", chain)) for chain in _chains(spec))
    steps.extend(_Step(_ipt("-X", chain)) for chain in _chains(spec))
    steps.append(_Step([IP, "rule", "del", *_ip_rule(spec)], repeat=True))
    steps.append(_Step([IP, "route", "del", *_ip_route(spec)]))
    return steps


def build_removal(spec: InterceptSpec) -> list[list[str]]:
    """Removal argv lists (pure). Deletes of the jump and the policy rule are repeated by
    :func:`remove` until they fail, so duplicates left by racing or crashed runs go too."""
    return [step.argv for step in _removal_steps(spec)]


# --------------------------------------------------------------------------- runners

# stderr of a command whose object is already gone: not an error for removal.
_GONE = re.compile(
    r"does a matching rule exist|No chain/target/match|No such file or directory"
    r"|No such process|doesn't exist|does not exist|not found",
    re.IGNORECASE,
)
_MAX_REPEAT = 32


def _execute(
    run: Runner, argv: Sequence[str], input_text: str | None = None
) -> subprocess.CompletedProcess[str]:
    try:
        return run(
            list(argv),
            input=input_text,
            capture_output=True,
            text=True,
            check=False,
            timeout=_COMMAND_TIMEOUT,
        )
    except FileNotFoundError as exc:
        raise InterceptError(argv, None, f"not installed: {exc}") from exc
    except subprocess.TimeoutExpired as exc:
        raise InterceptError(argv, None, f"timed out after {exc.timeout} s") from exc


def _checked(run: Runner, argv: Sequence[str], input_text: str | None = None) -> None:
    res = _execute(run, argv, input_text)
    if res.returncode != 0:
        raise InterceptError(argv, res.returncode, res.stderr or "")


def remove(spec: InterceptSpec, run: Runner = subprocess.run) -> None:
    """Remove everything :func:`install` adds. Idempotent and best effort: never raises.

    Failures that do not look like "already gone" are logged as warnings.
    """
    for step in _removal_steps(spec):
        for _ in range(_MAX_REPEAT if step.repeat else 1):
            try:
                res = _execute(run, step.argv)
            except InterceptError as exc:
                log.warning("removal step failed: %s", exc)
                break
            if res.returncode != 0:
                err = (res.stderr or "").strip()
                if not _GONE.search(err):
                    log.warning("removal step %r failed: %s", " ".join(step.argv), err or "-")
                break


def install(spec: InterceptSpec, run: Runner = subprocess.run) -> None:
    """Remove leftovers of a previous (crashed) run, then install.

    Raises :class:`InterceptError` naming the failing command; what was installed up to the
    failure is removed again first, so a failed install leaves the box forwarding normally.
    """
    remove(spec, run)
    ipt_restore = [IPTABLES_RESTORE, "-w", "--noflush"]
    try:
        _checked(run, [IP, "route", "replace", *_ip_route(spec)])
        _checked(run, [IP, "rule", "add", *_ip_rule(spec)])
        _checked(run, ipt_restore, build_restore(spec))
    except InterceptError:
        remove(spec, run)
        raise
    log.info(
        "interception installed: %s ports %s -> :%d (queue %d, table %d)",
        ",".join(map(str, spec.subscribers)),
        ",".join(map(str, spec.ports)),
        spec.listen_port,
        spec.queue_num,
        spec.route_table,
    )


def disable_queue(spec: InterceptSpec, run: Runner = subprocess.run) -> None:
    """Stop sending packets to the readers (fail open): flush the queue chains. Idempotent.

    The TPROXY rule stays; it is inert because only the reader sets mark 0x2. Flows already
    accepted by the daemon keep going through it (the socket rule is untouched).
    """
    _checked(run, _ipt("-F", spec.queue_chain))
    if spec.sense_queue is not None:
        _checked(run, _ipt("-F", spec.sense_chain))


def enable_queue(spec: InterceptSpec, run: Runner = subprocess.run) -> None:
    """Refill the queue chain (atomic flush-and-refill, so calling it twice is harmless)."""
    _checked(run, [IPTABLES_RESTORE, "-w", "--noflush"], build_queue_restore(spec))
