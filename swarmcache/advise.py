"""``swarmcache advise``: how much disk the box really needs, from its own access log.

The counting is ``cache/advisor.py`` (sans-IO); this module reads the files, picks the sizes,
prints, and plots. Two passes over the log when no ``--sizes`` are given: the first finds the
working set (the bytes of every distinct object), so the candidate sizes bracket it; the
second replays. Rotated logs (``.gz``) are read as they are. A malformed line is counted and
the first few are quoted; it never stops the replay, since a log cut by a crash or rotated
mid-line is normal.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import sys
from collections.abc import Hashable, Iterator
from dataclasses import asdict
from typing import IO, Any

from cache.advisor import (
    CurvePoint,
    LogLineError,
    LogReader,
    PolicyPoint,
    StackDistances,
    default_sizes,
    simulate_policy,
)
from swarmcache.operator_cli import human_bytes

__all__ = ["add_parser", "parse_size", "run"]

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
# Beyond this many lines the replay is sampled (SHARDS) unless --sample says otherwise.
_AUTO_SAMPLE_LINES = 2_000_000
_MALFORMED_QUOTED = 5


def parse_size(text: str) -> int:
    """``500G``, ``1.5T``, ``4M``, ``1024`` (binary units; a trailing ``B``/``iB`` is allowed)."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = t[-1:] if t[-1:] in _UNITS and t[-1:] != "" and not t[-1:].isdigit() else ""
    number = t[: len(t) - len(unit)]
    try:
        value = float(number)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 500G, 1.5T)") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 500G, 1.5T)")
    if value * _UNITS[unit] < 1:
        raise argparse.ArgumentTypeError(f"size must be at least one byte: {text!r}")
    return int(value * _UNITS[unit])


def _sizes(text: str) -> list[int]:
    return [parse_size(part) for part in text.split(",") if part.strip()]


def _rate(text: str) -> float | None:
    if text == "auto":
        return None
    try:
        rate = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a rate: {text!r} (0 < rate <= 1, or auto)") from None
    if not 0.0 < rate <= 1.0:
        raise argparse.ArgumentTypeError(f"sample rate must be in (0, 1], got {text}")
    return rate


def add_parser(sub: Any) -> None:
    advise = sub.add_parser(
        "advise",
        help="replay the access log: byte hit ratio at a range of disk sizes",
        description="Replay access logs (HTTP and BitTorrent lines) and print the byte hit "
        "ratio and request hit ratio the box would have had with each disk size. The curve "
        "models LRU, computed exactly from stack distances (or estimated by SHARDS sampling "
        "for big logs); the daemon's default policy (TinyLFU + LFU-DA) usually does better "
        "at the same size, see --policy.",
    )
    advise.add_argument(
        "--log",
        action="append",
        required=True,
        metavar="FILE",
        help="access log (repeat for rotated files, oldest first; .gz is read as is)",
    )
    advise.add_argument(
        "--sizes",
        type=_sizes,
        metavar="SIZE[,SIZE]",
        help="disk sizes to evaluate, e.g. 100G,500G,2T (default: a doubling ladder up to "
        "the working set)",
    )
    advise.add_argument(
        "--sample",
        type=_rate,
        default=None,
        metavar="RATE",
        help=f"share of objects replayed (SHARDS); default auto: 1 up to "
        f"{_AUTO_SAMPLE_LINES:,} lines, fewer beyond",
    )
    advise.add_argument(
        "--chunk",
        type=parse_size,
        default=4 << 20,
        metavar="SIZE",
        help="BitTorrent piece range treated as one object (default 4M)",
    )
    advise.add_argument(
        "--max-object",
        type=parse_size,
        default=8 << 30,
        metavar="SIZE",
        help="objects above this are never stored (cache.max_object_bytes; default 8G)",
    )
    advise.add_argument(
        "--policy",
        action="store_true",
        help="also replay the daemon's default policy and LRU at up to 4 of the sizes",
    )
    advise.add_argument("--png", metavar="OUT.png", help="plot the curve (needs matplotlib)")
    advise.add_argument("--json", action="store_true", help="machine-readable output")


def _open(path: str) -> IO[str]:
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def _lines(paths: list[str], *, warn: bool = False) -> Iterator[tuple[str, int, str]]:
    for path in paths:
        with _open(path) as fh:
            try:
                for number, line in enumerate(fh, start=1):
                    if line.strip():
                        yield path, number, line
            except EOFError:
                # A .gz still being written by logrotate, or cut by a crash: what was read
                # counts, like a plain log cut mid-line.
                if warn:
                    print(f"swarmcache advise: {path} ends early (cut short)", file=sys.stderr)


class _Replay:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.malformed = 0
        self.malformed_examples: list[str] = []
        self.http_lines = 0
        self.bt_lines = 0
        self.lines = 0

    def reader(self) -> LogReader:
        return LogReader(chunk_bytes=self.args.chunk, max_object_bytes=self.args.max_object)

    def survey(self) -> dict[Hashable, int]:
        """First pass: the last size of every cacheable object, and the line count."""
        reader = self.reader()
        sizes: dict[Hashable, int] = {}
        for _path, _number, line in _lines(self.args.log):
            self.lines += 1
            try:
                for access in reader.feed(line):
                    if access.cacheable:
                        sizes[access.key] = access.size
            except LogLineError:
                pass  # counted in the second pass
        return sizes

    def replay(self, engine: StackDistances, trace: list[tuple[Hashable, int]] | None) -> None:
        reader = self.reader()
        for path, number, line in _lines(self.args.log, warn=True):
            try:
                accesses = reader.feed(line)
            except LogLineError as exc:
                self.malformed += 1
                if len(self.malformed_examples) < _MALFORMED_QUOTED:
                    self.malformed_examples.append(f"{path}:{number}: {exc}")
                continue
            if line.split(None, 3)[2] == "BT":
                self.bt_lines += 1
            else:
                self.http_lines += 1
            for access in accesses:
                if engine.add(access) and trace is not None:
                    trace.append((access.key, access.size))


def _pick(sizes: list[int], n: int) -> list[int]:
    if len(sizes) <= n:
        return sizes
    return [sizes[round(i * (len(sizes) - 1) / (n - 1))] for i in range(n)]


def _plot(path: str, curve: list[CurvePoint], ceiling: CurvePoint, box: float, rate: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    fig, ax = plt.subplots(figsize=(8, 4.5))
    xs = [p.size for p in curve]
    ax.plot(xs, [p.byte_hit_ratio for p in curve], marker="o", label="byte hit ratio (LRU)")
    ax.plot(xs, [p.hit_ratio for p in curve], marker=".", linestyle="--", label="request hit ratio")
    ax.axhline(ceiling.byte_hit_ratio, color="grey", linestyle=":", label="unlimited disk")
    ax.axhline(box, color="tab:red", linestyle="-.", linewidth=1, label="the box achieved")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: human_bytes(x)))
    ax.set_xticks(xs, [human_bytes(x) for x in xs], rotation=45, fontsize=8)
    ax.set_xlabel("disk size")
    ax.set_ylabel("hit ratio")
    ax.set_ylim(0, 1)
    title = "swarmcache advise: hit ratio by disk size"
    if rate < 1:
        title += f" (SHARDS, rate {rate:g})"
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    if args.png:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print(
                "swarmcache advise: --png needs matplotlib: pip install 'swarmcache[advise]' "
                "(or apt-get install python3-matplotlib)",
                file=sys.stderr,
            )
            return 2
    replay = _Replay(args)
    try:
        survey = replay.survey() if args.sizes is None or args.sample is None else {}
        rate = args.sample
        if rate is None:
            rate = min(1.0, _AUTO_SAMPLE_LINES / replay.lines) if replay.lines else 1.0
        sizes = args.sizes or default_sizes(sum(survey.values()))
        engine = StackDistances(sizes, sample_rate=rate)
        trace: list[tuple[Hashable, int]] | None = [] if args.policy else None
        replay.replay(engine, trace)
    except OSError as exc:
        print(f"swarmcache advise: cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    if engine.requests == 0:
        print(
            f"swarmcache advise: no usable lines ({replay.malformed} malformed)"
            + "".join(f"\n  {e}" for e in replay.malformed_examples),
            file=sys.stderr,
        )
        return 1
    curve = engine.curve()
    ceiling = engine.ceiling
    policy: list[PolicyPoint] = []
    if trace is not None:
        policy = simulate_policy(trace, _pick(engine.sizes, 4), sample_rate=rate)
    if args.png:
        _plot(args.png, curve, ceiling, engine.box_byte_hit_ratio, rate)
    report = {
        "model": "LRU (stack distances)" + (f", SHARDS rate {rate:g}" if rate < 1 else ""),
        "lines": {
            "http": replay.http_lines,
            "bittorrent": replay.bt_lines,
            "malformed": replay.malformed,
            "malformed_examples": replay.malformed_examples,
        },
        "requests": engine.requests,
        "bytes": engine.bytes,
        "uncacheable_bytes": engine.uncacheable_bytes,
        "working_set_bytes": engine.working_set_bytes,
        "box_byte_hit_ratio": engine.box_byte_hit_ratio,
        "unlimited": {"hit_ratio": ceiling.hit_ratio, "byte_hit_ratio": ceiling.byte_hit_ratio},
        "curve": [asdict(p) for p in curve],
        "policy": [asdict(p) for p in policy],
        "png": args.png,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    _print(report, engine, curve, ceiling, policy, rate)
    return 0


def _print(
    report: dict[str, Any],
    engine: StackDistances,
    curve: list[CurvePoint],
    ceiling: CurvePoint,
    policy: list[PolicyPoint],
    rate: float,
) -> None:
    lines = report["lines"]
    print(
        f"replayed {engine.requests:,} requests ({human_bytes(engine.bytes)}) from "
        f"{lines['http']:,} HTTP and {lines['bittorrent']:,} BitTorrent lines"
        + (f", SHARDS sample rate {rate:g}" if rate < 1 else "")
    )
    if lines["malformed"]:
        print(f"skipped {lines['malformed']:,} malformed lines, e.g.:")
        for example in lines["malformed_examples"]:
            print(f"  {example}")
    if engine.bytes:
        share = engine.uncacheable_bytes / engine.bytes
        print(f"never cacheable (PASS, errors, other methods, too big): {share:.1%} of bytes")
    print(f"working set (every distinct object once): {human_bytes(engine.working_set_bytes)}")
    print(f"the box achieved a byte hit ratio of {engine.box_byte_hit_ratio:.3f}")
    print()
    print(f"{'disk size':>12}  {'byte hit ratio':>14}  {'request hit ratio':>17}")
    for p in curve:
        print(f"{human_bytes(p.size):>12}  {p.byte_hit_ratio:>14.3f}  {p.hit_ratio:>17.3f}")
    print(f"{'unlimited':>12}  {ceiling.byte_hit_ratio:>14.3f}  {ceiling.hit_ratio:>17.3f}")
    if policy:
        print()
        print("replayed through the policies (requests weighed by object size):")
        print(f"{'disk size':>12}  {'LRU':>7}  {'default':>7}   (byte hit ratio)")
        for q in policy:
            print(
                f"{human_bytes(q.size):>12}  {q.lru_byte_hit_ratio:>7.3f}  "
                f"{q.default_byte_hit_ratio:>7.3f}"
            )
    print()
    print(
        "Model: LRU with objects larger than the disk passing through. The daemon's default "
        "policy (TinyLFU + LFU-DA) keeps popular objects better and usually does better at "
        "the same size; --policy replays it."
    )
    if report["png"]:
        print(f"plot written to {report['png']}")
