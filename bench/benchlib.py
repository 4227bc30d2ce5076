"""Helpers shared by the benchmark scripts: a namespace testbed that always comes down, tools run
inside it (wrk, curl, nginx), output parsers, process accounting and machine facts.

Why it is built this way:

- Every benchmark builds its *own* testbed with a fresh random prefix (``deploy/testbed.sh``)
  and refuses a prefix whose namespaces already exist, because ``testbed.sh down`` kills every
  process in the namespaces it deletes: reusing somebody else's testbed would kill their work.
- Processes are stopped by the PID we started them with (SIGTERM, then SIGKILL), before the
  namespaces are deleted; the ``down`` step then catches anything a process forked.
- Traffic only ever goes to 10.77.x addresses inside the testbed; the gateway namespace has no
  default route, so nothing can leave it.
- This is a benchmark, not a test: nothing here judges a number. Functional checks (is this
  really a cache hit?) raise :class:`BenchError` with the command and its output.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import secrets
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

__all__ = [
    "CLK_TCK",
    "PROJECT",
    "BenchError",
    "Fetch",
    "Testbed",
    "WrkResult",
    "curl_fetch",
    "loadavg",
    "log",
    "machine_facts",
    "median",
    "metric_deltas",
    "parse_headers",
    "parse_prometheus",
    "parse_wrk",
    "proc_cpu_seconds",
    "proc_status_kib",
    "process_tree",
    "ratio",
    "run_checked",
    "source_facts",
    "stop_process",
    "tail",
    "tree_cpu_seconds",
]

PROJECT = Path(__file__).resolve().parent.parent
TESTBED_SH = PROJECT / "deploy" / "testbed.sh"
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """A benchmark step could not run (not a slow result: a broken one)."""


def tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den == 0:
        return None
    return num / den


# --------------------------------------------------------------------------------------------
# Testbed


@dataclass
class _Spawned:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    stop_signal: int


@dataclass
class Testbed:
    """Three namespaces ``{prefix}sub``, ``{prefix}gw``, ``{prefix}net`` (see deploy/testbed.sh)."""

    prefix: str
    spawned: list[_Spawned] = field(default_factory=list)
    is_up: bool = False

    @classmethod
    def fresh(cls, stem: str = "bh") -> Testbed:
        for _ in range(20):
            prefix = stem + secrets.token_hex(2)
            if not any(Path("/var/run/netns", prefix + s).exists() for s in ("sub", "gw", "net")):
                return cls(prefix)
        raise BenchError("could not find an unused testbed prefix")

    @property
    def sub(self) -> str:
        return self.prefix + "sub"

    @property
    def gw(self) -> str:
        return self.prefix + "gw"

    @property
    def net(self) -> str:
        return self.prefix + "net"

    def up(self) -> None:
        self.is_up = True  # set first: a half-built testbed must still be torn down
        run_checked(["bash", str(TESTBED_SH), "up", self.prefix], timeout=60)

    def down(self) -> list[str]:
        """Stop what we started, then delete the namespaces. Returns problems, never raises."""
        problems: list[str] = []
        for sp in reversed(self.spawned):
            problem = stop_process(sp)
            if problem:
                problems.append(problem)
        self.spawned.clear()
        if self.is_up:
            res = subprocess.run(
                ["bash", str(TESTBED_SH), "down", self.prefix],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            if res.returncode != 0:
                problems.append(f"testbed.sh down {self.prefix}: rc={res.returncode} {res.stderr}")
            left = [
                ns for ns in (self.sub, self.gw, self.net) if Path("/var/run/netns", ns).exists()
            ]
            if left:
                problems.append(f"namespaces still present after teardown: {left}")
            self.is_up = False
        return problems

    def cmd(self, ns: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv]

    def run(
        self, ns: str, argv: Sequence[str], *, timeout: float, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return run_checked(self.cmd(ns, argv), timeout=timeout, check=check)

    def spawn(
        self,
        name: str,
        ns: str,
        argv: Sequence[str],
        log: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        stop_signal: int = signal.SIGTERM,
    ) -> subprocess.Popen[bytes]:
        """Start a long-running process in ``ns``; ``ip netns exec`` execs, so the PID is its."""
        with log.open("ab") as out:
            proc = subprocess.Popen(
                self.cmd(ns, argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,  # a Ctrl-C at the terminal reaches only the harness
            )
        self.spawned.append(_Spawned(name, proc, log, stop_signal))
        return proc


def run_checked(
    argv: Sequence[str], *, timeout: float, check: bool = True
) -> subprocess.CompletedProcess[str]:
    try:
        res = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"timed out after {timeout:.0f}s: {shlex.join(argv)}") from exc
    if check and res.returncode != 0:
        raise BenchError(
            f"command failed (rc={res.returncode}): {shlex.join(argv)}\n"
            f"stdout: {res.stdout.strip()[-2000:]}\nstderr: {res.stderr.strip()[-2000:]}"
        )
    return res


def stop_process(sp: _Spawned, grace: float = 10.0) -> str | None:
    proc = sp.proc
    if proc.poll() is not None:
        return None
    proc.send_signal(sp.stop_signal)
    try:
        proc.wait(timeout=grace)
        return None
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        return f"{sp.name} (pid {proc.pid}) ignored signal {sp.stop_signal} for {grace:.0f}s"


# --------------------------------------------------------------------------------------------
# curl


@dataclass(frozen=True, slots=True)
class Fetch:
    url: str
    status: int
    bytes: int
    seconds: float
    ttfb: float
    headers: dict[str, str]

    @property
    def gbit_s(self) -> float:
        return self.bytes * 8 / self.seconds / 1e9 if self.seconds > 0 else 0.0

    def summary(self) -> dict[str, object]:
        return {
            "status": self.status,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 4),
            "ttfb_s": round(self.ttfb, 4),
            "gbit_s": round(self.gbit_s, 3),
        }


def parse_headers(raw: str) -> dict[str, str]:
    """Header block(s) as dumped by ``curl -D``; the last response wins, names lower-cased."""
    headers: dict[str, str] = {}
    for line in raw.splitlines():
        if line.startswith("HTTP/"):
            headers = {}
        elif ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return headers


def curl_fetch(
    bed: Testbed,
    ns: str,
    url: str,
    header_file: Path,
    *,
    timeout: float = 300,
    extra: Sequence[str] = (),
) -> Fetch:
    argv = [
        "curl",
        "-sS",
        "-o",
        "/dev/null",
        "-D",
        str(header_file),
        "--max-time",
        str(int(timeout)),
        "-w",
        "%{http_code} %{size_download} %{time_total} %{time_starttransfer}",
        *extra,
        url,
    ]
    res = bed.run(ns, argv, timeout=timeout + 10, check=False)
    if res.returncode != 0:
        raise BenchError(
            f"curl failed (rc={res.returncode}) in {ns}: {shlex.join(argv)}\n{res.stderr.strip()}"
        )
    code, size, total, ttfb = res.stdout.split()
    headers = parse_headers(header_file.read_text(errors="replace"))
    return Fetch(url, int(code), int(size), float(total), float(ttfb), headers)


# --------------------------------------------------------------------------------------------
# wrk


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests_per_s: float
    requests: int
    seconds: float
    latency_ms: dict[str, float]
    non_2xx_3xx: int
    socket_errors: dict[str, int]

    def summary(self) -> dict[str, object]:
        return {
            "requests_per_s": round(self.requests_per_s, 1),
            "requests": self.requests,
            "seconds": self.seconds,
            "latency_ms": self.latency_ms,
            "non_2xx_3xx": self.non_2xx_3xx,
            "socket_errors": self.socket_errors,
        }


_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _to_ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * _UNITS_MS[m.group(2)]


def parse_wrk(out: str) -> WrkResult:
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    total = re.search(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m)", out, re.M)
    if not rps or not total:
        raise BenchError(f"cannot parse wrk output:\n{out}")
    latency: dict[str, float] = {}
    avg = re.search(r"^\s*Latency\s+(\S+)", out, re.M)
    if avg:
        latency["avg"] = _to_ms(avg.group(1))
    for pct, value in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", out, re.M):
        latency[f"p{pct}"] = _to_ms(value)
    non2 = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (
        dict(zip(("connect", "read", "write", "timeout"), map(int, sock.groups()), strict=True))
        if sock
        else {}
    )
    return WrkResult(
        requests_per_s=float(rps.group(1)),
        requests=int(total.group(1)),
        seconds=_to_ms(total.group(2) + total.group(3)) / 1e3,
        latency_ms=latency,
        non_2xx_3xx=int(non2.group(1)) if non2 else 0,
        socket_errors=errors,
    )


# --------------------------------------------------------------------------------------------
# Prometheus text


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?)\s+(\S+)")


def parse_prometheus(text: str, prefix: str = "") -> dict[str, float]:
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m and m.group(1).startswith(prefix):
            try:
                samples[m.group(1)] = float(m.group(2))
            except ValueError:
                continue
    return samples


def metric_deltas(
    before: Mapping[str, float], after: Mapping[str, float], names: Iterable[str]
) -> dict[str, float]:
    """after - before for samples whose name starts with one of ``names``; zeros left out."""
    out: dict[str, float] = {}
    wanted = tuple(names)
    for key, value in after.items():
        if key.startswith(wanted):
            delta = value - before.get(key, 0.0)
            if delta:
                out[key] = delta
    return out


# --------------------------------------------------------------------------------------------
# /proc


def proc_status_kib(pid: int, field_name: str) -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    m = re.search(rf"^{field_name}:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) if m else None


def proc_cpu_seconds(pid: int) -> float | None:
    """utime + stime of one process (not its children)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (e.g. an nginx master and its workers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def tree_cpu_seconds(pid: int) -> float:
    return sum(proc_cpu_seconds(p) or 0.0 for p in process_tree(pid))


# --------------------------------------------------------------------------------------------
# Machine facts


def _first_line(argv: Sequence[str], *, need_success: bool = False) -> str | None:
    """First line a version command prints (on either stream; ``nginx -v`` uses stderr)."""
    try:
        res = subprocess.run(list(argv), capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if need_success and res.returncode != 0:
        return None
    text = (res.stdout or res.stderr).strip()
    return text.splitlines()[0] if text else None


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def source_facts(
    packages: Sequence[str] = ("swarmcache", "cache", "interceptor", "swarm"),
) -> dict[str, object]:
    """Which code was measured: commit, uncommitted changes, and a digest of the sources."""
    digest = hashlib.sha256()
    files = sorted(p for pkg in packages for p in (PROJECT / pkg).rglob("*.py"))
    for path in files:
        digest.update(str(path.relative_to(PROJECT)).encode() + b"\0" + path.read_bytes())
    try:  # --no-optional-locks: read-only, never refreshes the index
        res = subprocess.run(
            [
                "git",
                "--no-optional-locks",
                "-C",
                str(PROJECT),
                "status",
                "--porcelain",
                "--",
                *packages,
            ],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        changed: list[str] | None = res.stdout.splitlines() if res.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        changed = None
    return {
        "git_commit": _first_line(
            ["git", "-C", str(PROJECT), "rev-parse", "--short", "HEAD"], need_success=True
        ),
        "uncommitted_changes": changed,
        "source_sha256": digest.hexdigest()[:16],
        "source_files": len(files),
    }


def machine_facts() -> dict[str, object]:
    cpu_model = None
    try:
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu_model = m.group(1) if m else None
    except OSError:
        pass
    mem = re.search(r"^MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text(), re.M)
    return {
        "hostname": platform.node(),
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "mem_total_mib": int(mem.group(1)) // 1024 if mem else None,
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "nginx": _first_line(["nginx", "-v"]),
        "wrk": _first_line(["wrk", "-v"]),
        "curl": _first_line(["curl", "--version"]),
    }


def log(msg: str, stream: IO[str] = sys.stderr) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=stream, flush=True)


def other_namespaces(own_prefix: str | None = None) -> list[str]:
    """Network namespaces that are not ours: a hint that other tests shared the machine."""
    try:
        names = sorted(os.listdir("/var/run/netns"))
    except OSError:
        return []
    return [n for n in names if not (own_prefix and n.startswith(own_prefix))]


def on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally that tears the testbed down


class Harness(Protocol):
    """One benchmark's measurements on a testbed (what :func:`run_benchmark` drives)."""

    @property
    def results(self) -> dict[str, Any]: ...

    @property
    def warnings(self) -> list[str]: ...

    def run(self) -> None: ...

    def cleanup(self) -> None:
        """Stop what the harness started beyond the testbed's own processes."""

    def failure_details(self) -> dict[str, Any]:
        """Extra JSON fields for a failed run (e.g. a daemon log tail)."""


def result_header(name: str, params: Any, started: float) -> dict[str, Any]:
    """The head every benchmark's JSON starts with: what ran, where, from which source."""
    return {
        "schema": f"swarmcache-{name.replace('_', '-')}/1",
        "command": shlex.join(["python", *sys.argv]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "params": asdict(params),
        "machine": machine_facts(),
        "source": source_facts(),
        "load_before": loadavg(),
    }


def run_benchmark(
    *,
    name: str,
    params: Any,
    out: Path,
    scratch_dir: str | None,
    keep_scratch: bool,
    prefix_stem: str,
    make: Callable[[Testbed, Path], Harness],
    summary: Callable[[dict[str, Any]], None],
    failures: tuple[type[BaseException], ...] = (BenchError,),
) -> int:
    """The part every benchmark shares: the JSON document (command, machine, source, load,
    other namespaces, results, warnings, error, duration), a fresh testbed torn down whatever
    happens (error, Ctrl-C, SIGTERM), a scratch directory, and the exit status."""
    if os.geteuid() != 0:
        print(f"{name}: needs root (network namespaces)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, on_sigterm)
    started = time.time()
    doc = result_header(name, params, started)
    doc["other_namespaces_before"] = other_namespaces()
    scratch = Path(tempfile.mkdtemp(prefix=f"swarmcache-{prefix_stem}-", dir=scratch_dir))
    bed = Testbed.fresh(prefix_stem)
    doc["testbed_prefix"] = bed.prefix
    bench = make(bed, scratch)
    rc = 0
    try:
        bench.run()
    except failures as exc:
        doc["error"] = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, subprocess.CalledProcessError):
            doc["error"] += f"\nstdout: {exc.stdout}\nstderr: {exc.stderr}"
        doc.update(bench.failure_details())
        rc = 1
    except KeyboardInterrupt:
        doc["error"] = "interrupted"
        rc = 130
    except SystemExit as exc:
        doc["error"] = f"terminated ({exc.code})"
        rc = 143
    finally:
        doc["load_after"] = loadavg()
        doc["other_namespaces_after"] = other_namespaces(bed.prefix)
        bench.cleanup()
        problems = bed.down()
        doc["teardown_problems"] = problems
        for problem in problems:
            log(f"teardown: {problem}")
        if keep_scratch:
            doc["scratch"] = str(scratch)
        else:
            shutil.rmtree(scratch, ignore_errors=True)
        doc["results"] = bench.results
        doc["warnings"] = bench.warnings
        doc["duration_s"] = round(time.time() - started, 1)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=2) + "\n")
    log(f"wrote {out}")
    for w in doc["warnings"]:
        log(f"warning: {w}")
    if "error" in doc:
        log(f"error: {doc['error']}")
    summary(doc)
    return rc
