"""``swarmcache advise`` on log files: JSON parsed back, malformed lines counted, the PNG, and the
figures matching an independent LRU replay of the same requests."""

from __future__ import annotations

import gzip
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from cache.eviction import LRU, simulate, zipf_trace
from swarmcache.cli import main

IH = "5a" * 20


def _write_log(path: Path) -> list[tuple[str, int]]:
    """HTTP misses then hits for a Zipf workload, a few BitTorrent batches, and junk."""
    trace = zipf_trace(200, 3000, seed=7, median_size=50_000, sigma=1.0)
    seen: set[int] = set()
    lines: list[str] = []
    requests: list[tuple[str, int]] = []
    for i, (obj, size) in enumerate(trace):
        url = f"http://origin.example/obj/{obj}"
        result = "HIT" if obj in seen else "MISS"
        seen.add(obj)
        lines.append(f'{1700000000 + i}.000 10.0.0.9 GET "{url}" 200 {size} {result} 0 0.4')
        requests.append((url, size))
        if i % 500 == 0:
            lines.append("truncated line")
    lines.append('1700009999.000 10.0.0.9 POST "http://origin.example/form" 200 700 PASS 700 2.0')
    lines.append(f"1700010000.000 10.0.0.8 BT {IH} 262144 0-15 4194304 4194304 2.0")
    lines.append(f"1700010001.000 10.0.0.7 BT {IH} 262144 0-15 4194304 0 1.5")
    path.write_text("\n".join(lines) + "\n")
    return requests


def test_json_report_matches_an_lru_replay(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "access.log"
    requests = _write_log(log)
    code = main(["advise", "--log", str(log), "--sizes", "1M,4M,16M", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert report["lines"]["malformed"] == 6
    assert "expected 9 fields" in report["lines"]["malformed_examples"][0]
    assert report["lines"]["bittorrent"] == 2
    assert report["uncacheable_bytes"] == 700
    total = sum(s for _, s in requests) + 700 + 2 * 4194304
    assert report["bytes"] == total
    for point in report["curve"]:
        lru = simulate(LRU(), requests, point["size"])
        # BitTorrent: the second batch re-reads the 4 MiB range the first one brought in.
        bt_hit = 4194304 if point["size"] >= 4194304 else 0
        expected = (lru.bytes_hit + bt_hit) / total
        assert point["byte_hit_ratio"] == pytest.approx(expected, rel=1e-12), point
    ratios = [p["byte_hit_ratio"] for p in report["curve"]]
    assert ratios == sorted(ratios) and ratios[-1] > 0.5


def test_text_report_and_gzip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "access.log"
    _write_log(log)
    rotated = tmp_path / "access.log.1.gz"
    rotated.write_bytes(gzip.compress(log.read_bytes()))
    code = main(["advise", "--log", str(rotated), "--log", str(log), "--policy"])
    out = capsys.readouterr().out
    assert code == 0
    assert "byte hit ratio" in out and "unlimited" in out and "skipped 12 malformed" in out
    assert "default" in out  # the policy replay table


def test_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip(reason="matplotlib not installed (pip install 'swarmcache[advise]')")
    log = tmp_path / "access.log"
    _write_log(log)
    png = tmp_path / "curve.png"
    assert main(["advise", "--log", str(log), "--png", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_png_without_matplotlib_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import now raises ImportError
    log = tmp_path / "access.log"
    _write_log(log)
    assert main(["advise", "--log", str(log), "--png", str(tmp_path / "x.png")]) == 2
    assert "needs matplotlib" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_unreadable_and_empty_logs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["advise", "--log", str(tmp_path / "missing.log")]) == 2
    assert "cannot read" in capsys.readouterr().err
    junk = tmp_path / "junk.log"
    junk.write_text("not a log\nat all\n")
    assert main(["advise", "--log", str(junk)]) == 1
    assert "no usable lines (2 malformed)" in capsys.readouterr().err


def test_bad_sizes_are_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["advise", "--log", "x", "--sizes", "lots"])
    assert exc.value.code == 2
    assert "not a size: 'lots'" in capsys.readouterr().err


@pytest.mark.parametrize("size", ["inf", "nan", "1e400", "0.5"])
def test_sizes_that_are_not_a_byte_count_are_usage_errors(
    size: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["advise", "--log", "x", "--sizes", size])
    assert exc.value.code == 2
    assert repr(size) in capsys.readouterr().err


def test_a_rotated_log_cut_short_is_read_up_to_the_cut(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A .gz being written by logrotate (or cut by a crash) ends early: the lines before the
    cut count, and the replay goes on with the next log."""
    log = tmp_path / "access.log"
    _write_log(log)
    whole = gzip.compress(log.read_bytes())
    cut = tmp_path / "access.log.1.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    code = main(["advise", "--log", str(cut), "--log", str(log), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    assert report["requests"] > 3000  # all of access.log and part of the cut copy
    assert "access.log.1.gz" in captured.err  # the operator is told which file was cut
