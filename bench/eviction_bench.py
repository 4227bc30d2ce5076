"""Eviction throughput and serving latency while evicting (issue 6: "eviction throughput
(objects/s) and serving latency while evicting").

Everything runs in this process against a real :class:`cache.store.Store` on disk, wired as the
daemon wires it: the :class:`cache.evictor.Evictor` observes the store and, attached to an
asyncio loop, evicts in its own thread. A daemon and curl would add sockets and HTTP parsing
that are the same with or without eviction; what eviction can slow is the store work of a hit
(index read, blob open, read, touch) on the event loop, through the GIL and the locks it
shares. So "serving" here is that work, done by a coroutine on the loop, hit after hit.

* **Throughput**: N objects of 4-64 KiB are stored, the quota is set to keep about 40 % of them,
  and one eviction run (index deletes in batched transactions, blob unlinks) is timed alone:
  objects/s and MiB/s. Start-up rebuild (index scan into the policy) is timed too.
* **Latency**: the store is filled again with the same N objects plus a hot set (200 objects
  with prior hits, so the policy keeps them); hits on the hot set are timed with no eviction
  (the named peer: the same loop, same store, same moment), then while an eviction run of the
  same size goes on in the evictor's thread, then without again. Reported: p50/p99 of each and
  the ratio while-evicting / not-evicting.

Writes JSON to ``bench/results/eviction.json``. Nothing here judges a number.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchlib import PROJECT, loadavg, log, ratio, result_header

from cache.eviction import Quota
from cache.evictor import Evictor
from cache.store import ObjectMeta, Store

HOT = 200
KEEP = 0.4  # share of the cold objects' bytes the quota keeps


@dataclass(frozen=True, slots=True)
class Params:
    objects: int
    hits_per_phase: int
    seed: int
    scratch: str


def _meta(url: bytes, ref: Any) -> ObjectMeta:
    now = time.time()
    return ObjectMeta(
        url=url,
        status=200,
        reason=b"OK",
        headers=(),
        request_time=now,
        response_time=now,
        blob=ref,
        stored_at=now,
    )


def fill(store: Store, n: int, rng: random.Random, prefix: bytes) -> int:
    """Store ``n`` objects of 4-64 KiB; returns their bytes."""
    total = 0
    for i in range(n):
        size = rng.randrange(4 << 10, 64 << 10)
        url = b"http://bench.example/%s/%d" % (prefix, i)
        with store.begin_blob() as writer:
            writer.write(rng.randbytes(size))
            ref = writer.commit(fsync=False)
        store.put(url, _meta(url, ref))
        total += size
    return total


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(latencies: list[float]) -> dict[str, Any]:
    return {
        "hits": len(latencies),
        "p50_us": round(percentile(latencies, 0.5) * 1e6, 1),
        "p99_us": round(percentile(latencies, 0.99) * 1e6, 1),
        "mean_us": round(statistics.fmean(latencies) * 1e6, 1),
    }


async def serve_hits(store: Store, keys: list[bytes], count: int, stop: Any = None) -> list[float]:
    """The store work of ``count`` hits (or until ``stop()``): get, open, read, touch."""
    out: list[float] = []
    for i in range(count):
        if stop is not None and stop():
            break
        key = keys[i % len(keys)]
        t0 = time.perf_counter()
        meta = store.get(key)
        assert meta is not None, f"hot object {key!r} was evicted"
        fd = store.open_blob(meta.blob)
        try:
            data = os.pread(fd, meta.blob.size, 0)
        finally:
            os.close(fd)
        store.touch(key, time.time())
        out.append(time.perf_counter() - t0)
        assert len(data) == meta.blob.size
        if i % 32 == 31:
            await asyncio.sleep(0)  # let the loop run other callbacks, as it would
    return out


def make_evictor(store: Store, limit: int) -> Evictor:
    evictor = Evictor(store, Quota(limit, high=0.95, low=0.9), admission=False)
    evictor.install()
    evictor.rebuild()
    return evictor


def throughput(params: Params, directory: Path) -> dict[str, Any]:
    rng = random.Random(params.seed)
    with Store(directory, map_size=4 << 30) as store:
        log(f"throughput: storing {params.objects} objects")
        total = fill(store, params.objects, rng, b"cold")
        # The daemon fsyncs each body as it commits it; without this the first index sync of
        # the run would pay for writing back the whole fill (ext4 data=ordered).
        os.sync()
        t0 = time.perf_counter()
        evictor = make_evictor(store, int(total * KEEP / 0.9))
        rebuild_s = time.perf_counter() - t0
        before = store.stats()
        t0 = time.perf_counter()
        freed = evictor.run()
        seconds = time.perf_counter() - t0
        after = store.stats()
    evicted = before.objects - after.objects
    return {
        "objects_stored": params.objects,
        "bytes_stored": total,
        "rebuild_seconds": round(rebuild_s, 3),
        "rebuild_objects_per_s": round(params.objects / rebuild_s),
        "evicted_objects": evicted,
        "evicted_bytes": freed,
        "eviction_seconds": round(seconds, 3),
        "evicted_objects_per_s": round(evicted / seconds),
        "evicted_mib_per_s": round(freed / seconds / (1 << 20), 1),
    }


async def latency(params: Params, directory: Path) -> dict[str, Any]:
    rng = random.Random(params.seed + 1)
    with Store(directory, map_size=4 << 30) as store:
        log(f"latency: storing {params.objects} objects and {HOT} hot ones")
        total = fill(store, params.objects, rng, b"cold")
        hot_bytes = fill(store, HOT, rng, b"hot")
        hot = [b"http://bench.example/hot/%d" % i for i in range(HOT)]
        for key in hot:
            for _ in range(20):
                store.touch(key, time.time())
        store.flush_touches()
        os.sync()
        evictor = make_evictor(store, int((total * KEEP + hot_bytes) / 0.9))
        loop = asyncio.get_running_loop()
        log("latency: hits without eviction")
        quiet = await serve_hits(store, hot, params.hits_per_phase)
        before = store.stats().objects
        t0 = time.perf_counter()
        evictor.attach(loop)  # over the high watermark: the run starts in its thread now
        task = evictor._task
        assert task is not None, "the eviction run did not start"
        log("latency: hits while evicting")
        busy = await serve_hits(store, hot, 10**9, stop=task.done)
        await task
        seconds = time.perf_counter() - t0
        evicted = before - store.stats().objects
        log("latency: hits without eviction, again")
        quiet_after = await serve_hits(store, hot, params.hits_per_phase)
        await evictor.close()
    base = quiet + quiet_after
    out: dict[str, Any] = {
        "not_evicting": summary(base),
        "evicting": summary(busy),
        "evicted_objects": evicted,
        "eviction_seconds_under_load": round(seconds, 3),
        "evicted_objects_per_s_under_load": round(evicted / seconds),
    }
    out["p50_ratio_evicting_vs_not"] = ratio(
        out["evicting"]["p50_us"], out["not_evicting"]["p50_us"]
    )
    out["p99_ratio_evicting_vs_not"] = ratio(
        out["evicting"]["p99_us"], out["not_evicting"]["p99_us"]
    )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--objects", type=int, default=10_000, help="objects stored (default 10000)")
    ap.add_argument("--hits", type=int, default=20_000, help="timed hits per quiet phase")
    ap.add_argument("--quick", action="store_true", help="2000 objects, 5000 hits")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--scratch-dir", default="/var/tmp", help="where the stores are created")
    ap.add_argument("--out", type=Path, default=PROJECT / "bench" / "results" / "eviction.json")
    args = ap.parse_args()
    objects, hits = (2000, 5000) if args.quick else (args.objects, args.hits)
    params = Params(objects, hits, args.seed, args.scratch_dir)
    scratch = Path(tempfile.mkdtemp(prefix="swarmcache-evict-", dir=args.scratch_dir))
    started = time.time()
    doc = result_header("eviction", params, started)
    try:
        doc["throughput"] = throughput(params, scratch / "throughput")
        doc["latency"] = asyncio.run(latency(params, scratch / "latency"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        doc["load_after"] = loadavg()
        doc["duration_s"] = round(time.time() - started, 1)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=2) + "\n")
    t, lat = doc["throughput"], doc["latency"]
    print(
        f"eviction: {t['evicted_objects_per_s']} objects/s ({t['evicted_mib_per_s']} MiB/s) alone, "
        f"{lat['evicted_objects_per_s_under_load']} objects/s under load; rebuild "
        f"{t['rebuild_objects_per_s']} objects/s\n"
        f"hit store work p50 {lat['not_evicting']['p50_us']} -> {lat['evicting']['p50_us']} us "
        f"(x{lat['p50_ratio_evicting_vs_not']}), p99 {lat['not_evicting']['p99_us']} -> "
        f"{lat['evicting']['p99_us']} us (x{lat['p99_ratio_evicting_vs_not']})\n"
        f"written to {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
