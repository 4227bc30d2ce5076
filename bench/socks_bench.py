"""SOCKS5 relay throughput: a transfer through the box's SOCKS listener vs the same transfer
forwarded directly, alternating in one run (issue 5: "SOCKS relay throughput as a ratio to a
direct transfer").

The origin is the HTTP benchmark's nginx in ``net``; its port 8081 is not an HTTP port of the
SOCKS listener, so through SOCKS the bytes take the plain relay (no cache); "direct" is the same
URL forwarded by the gateway's kernel. The named peer is Dante (``danted``, Debian's SOCKS
server) on the same gateway: a relay written in C, the figure a SOCKS relay can expect to reach.
curl in ``sub`` is the client every time.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchlib import (
    PROJECT,
    BenchError,
    Testbed,
    curl_fetch,
    log,
    median,
    ratio,
    run_benchmark,
    tail,
)
from http_bench import DIRECT_PORT, ORIGIN
from http_bench import Bench as HttpBench
from http_bench import Params as HttpParams

SOCKS = "10.77.1.1:1080"
DANTE = "10.77.1.1:1081"
DANTE_CONF = """logoutput: stderr
internal: 10.77.1.1 port = 1081
external: 10.77.2.1
clientmethod: none
socksmethod: none
user.privileged: root
user.unprivileged: nobody
client pass { from: 10.77.1.0/24 to: 0.0.0.0/0 }
socks pass { from: 10.77.1.0/24 to: 0.0.0.0/0 }
"""


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
        self.start_dante()
        paths = ("socks", "dante", "direct")
        proxies = {"socks": ("--socks5", SOCKS), "dante": ("--socks5", DANTE), "direct": ()}
        runs: dict[str, list[dict[str, object]]] = {path: [] for path in paths}
        for r in range(self.socks_params.rounds):
            order = paths[r % 3 :] + paths[: r % 3]
            for path in order:
                url = f"http://{ORIGIN}:{DIRECT_PORT}/cold-{r}.bin"
                extra = proxies[path]
                fetch = curl_fetch(self.bed, self.bed.sub, url, self.scratch / "h.txt", extra=extra)
                if fetch.status != 200 or fetch.bytes != self.socks_params.mib << 20:
                    raise BenchError(f"{path} fetch of {url}: HTTP {fetch.status}, {fetch.bytes} B")
                if "x-cache" in fetch.headers:
                    raise BenchError("the SOCKS relay answered from the cache: not a relay")
                runs[path].append({"round": r, **fetch.summary()})
                log(f"round {r} {path}: {fetch.gbit_s:.2f} Gbit/s")
        rate = {p: median([float(x["gbit_s"]) for x in runs[p]]) for p in paths}  # type: ignore[arg-type]
        self.results["relay"] = {
            "method": "curl in sub fetching a cold object from nginx on net:8081, through "
            f"--socks5 {SOCKS} (the box's relay), through Dante at {DANTE}, or forwarded "
            "directly by the kernel; rotating order",
            "object_mib": self.socks_params.mib,
            "socks_gbit_s": rate["socks"],
            "dante_gbit_s": rate["dante"],
            "direct_gbit_s": rate["direct"],
            "ratio_socks_over_dante": ratio(rate["socks"], rate["dante"]),
            "ratio_socks_over_direct": ratio(rate["socks"], rate["direct"]),
            "runs": runs,
        }

    def start_dante(self) -> None:
        if shutil.which("danted") is None:
            raise BenchError("danted not found: apt-get install dante-server")
        conf = self.scratch / "danted.conf"
        conf.write_text(DANTE_CONF)
        self.bed.spawn(
            "danted", self.bed.gw, ["danted", "-f", str(conf)], self.scratch / "dante.log"
        )
        url = f"http://{ORIGIN}:{DIRECT_PORT}/1k.bin"
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            f = curl_fetch(
                self.bed, self.bed.sub, url, self.scratch / "h.txt", extra=("--socks5", DANTE)
            )
            if f.status == 200:
                return
            time.sleep(0.2)
        raise BenchError(f"danted did not relay within 15s:\n{tail(self.scratch / 'dante.log')}")


def print_summary(doc: dict[str, Any]) -> None:
    relay = doc.get("results", {}).get("relay")
    if relay:
        print(
            f"SOCKS relay {relay['object_mib']} MiB: swarmcache {relay['socks_gbit_s']} Gbit/s, "
            f"dante {relay['dante_gbit_s']} Gbit/s, direct {relay['direct_gbit_s']} Gbit/s; "
            f"ratio to dante {relay['ratio_socks_over_dante']}, "
            f"to direct {relay['ratio_socks_over_direct']}"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=PROJECT / "bench" / "results" / "socks.json")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 round, 32 MiB")
    ap.add_argument("--scratch-dir", default=None)
    ap.add_argument("--keep-scratch", action="store_true")
    ap.add_argument("--python", default=sys.executable)
    args = ap.parse_args(argv)
    params = Params(quick=args.quick, rounds=3 if args.quick else 6, mib=32 if args.quick else 256)
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
