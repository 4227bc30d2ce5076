"""SOCKS5 relay throughput: a transfer through the box's SOCKS listener vs the same transfer
forwarded directly, alternating in one run (issue 5: "SOCKS relay throughput as a ratio to a
direct transfer").

The origin is the HTTP benchmark's nginx in ``net``; its port 8081 is not an HTTP port of the
SOCKS listener, so through SOCKS the bytes take the plain relay (no cache); "direct" is the same
URL forwarded by the gateway's kernel. curl in ``sub`` is the client both times.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchlib import PROJECT, BenchError, Testbed, curl_fetch, log, median, ratio, run_benchmark
from http_bench import DIRECT_PORT, ORIGIN
from http_bench import Bench as HttpBench
from http_bench import Params as HttpParams

SOCKS = "10.77.1.1:1080"


@dataclass(frozen=True, slots=True)
class Params:
    quick: bool
    rounds: int
    mib: int


class Bench(HttpBench):
    def __init__(self, bed: Testbed, scratch: Path, params: Params, python: str) -> None:
        http = HttpParams(
            quick=params.quick, rounds=params.rounds, wrk_seconds=0, wrk_threads=0,
            wrk_connections=0, big_mib=params.mib, big_fetches=1, nginx_workers="1",
            swarmcache=True,
        )  # fmt: skip
        super().__init__(bed, scratch, http, python)
        config = scratch / "socks.toml"
        config.write_text(f'[socks]\nlisten = "{SOCKS}"\n')
        self.daemon_extra = ("--no-intercept", "--config", str(config))
        self.socks_params = params

    def run(self) -> None:
        self.make_files()
        self.bed.up()
        self.start_origin()
        self.start_daemon()
        runs: dict[str, list[dict[str, object]]] = {"socks": [], "direct": []}
        for r in range(self.socks_params.rounds):
            order = ("socks", "direct") if r % 2 == 0 else ("direct", "socks")
            for path in order:
                url = f"http://{ORIGIN}:{DIRECT_PORT}/cold-{r}.bin"
                extra = ("--socks5", SOCKS) if path == "socks" else ()
                fetch = curl_fetch(
                    self.bed, self.bed.sub, url, self.scratch / "h.txt", extra=extra
                )
                if fetch.status != 200 or fetch.bytes != self.socks_params.mib << 20:
                    raise BenchError(f"{path} fetch of {url}: HTTP {fetch.status}, {fetch.bytes} B")
                if "x-cache" in fetch.headers:
                    raise BenchError("the SOCKS relay answered from the cache: not a relay")
                runs[path].append({"round": r, **fetch.summary()})
                log(f"round {r} {path}: {fetch.gbit_s:.2f} Gbit/s")
        socks = median([float(x["gbit_s"]) for x in runs["socks"]])  # type: ignore[arg-type]
        direct = median([float(x["gbit_s"]) for x in runs["direct"]])  # type: ignore[arg-type]
        self.results["relay"] = {
            "method": "curl in sub fetching a cold object from nginx on net:8081, through "
            f"--socks5 {SOCKS} (the box's relay) or forwarded directly; alternating order",
            "object_mib": self.socks_params.mib,
            "socks_gbit_s": socks,
            "direct_gbit_s": direct,
            "ratio_socks_over_direct": ratio(socks, direct),
            "runs": runs,
        }


def print_summary(doc: dict[str, Any]) -> None:
    relay = doc.get("results", {}).get("relay")
    if relay:
        print(
            f"SOCKS relay {relay['object_mib']} MiB: socks {relay['socks_gbit_s']} Gbit/s, "
            f"direct {relay['direct_gbit_s']} Gbit/s, ratio {relay['ratio_socks_over_direct']}"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=PROJECT / "bench" / "results" / "socks.json")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 round, 32 MiB")
    ap.add_argument("--scratch-dir", default=None)
    ap.add_argument("--keep-scratch", action="store_true")
    ap.add_argument("--python", default=sys.executable)
    args = ap.parse_args(argv)
    params = Params(quick=args.quick, rounds=2 if args.quick else 6, mib=32 if args.quick else 256)
    return run_benchmark(
        name="socks_bench",
        params=params,
        out=args.out,
        scratch_dir=args.scratch_dir,
        keep_scratch=args.keep_scratch,
        prefix_stem="sk",
        make=lambda bed, scratch: Bench(bed, scratch, params, args.python),
        summary=print_summary,
    )


if __name__ == "__main__":
    sys.exit(main())
