"""Fill semantics readers rely on: woken per append, ended at *complete*, cut off on failure."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cache.fill import Fill, FillAborted, FillHead

_HEAD = FillHead(
    status=200,
    reason=b"OK",
    headers=(),
    length=6,
    request_time=0.0,
    response_time=0.0,
    vary=(),
    vary_key=b"",
)


def _fill(tmp_path: Path) -> Fill:
    path = tmp_path / "body"
    path.write_bytes(b"")
    return Fill(_HEAD, str(path))


async def test_a_reader_ends_when_the_body_is_complete_before_it_is_indexed(
    tmp_path: Path,
) -> None:
    fill = _fill(tmp_path)
    seen: list[int] = []

    async def reader() -> None:
        offset = 0
        while True:
            size = await fill.wait_past(offset)
            if size > offset:
                seen.append(size)
                offset = size
            elif fill.complete:
                return

    task = asyncio.create_task(reader(), name="reader")
    await asyncio.sleep(0)
    fill.grow(3)
    await asyncio.sleep(0)
    fill.grow(6)
    fill.mark_complete()
    # The reader must finish although finish() (hash, fsync, index) has not happened yet.
    await asyncio.wait_for(task, 1.0)
    assert seen == [3, 6]
    assert not fill.done


async def test_a_truncated_body_aborts_its_readers(tmp_path: Path) -> None:
    fill = _fill(tmp_path)
    fill.grow(3)
    fill.abort(ConnectionResetError("origin went away"))
    with pytest.raises(FillAborted, match="origin went away"):
        await fill.wait_past(0)


async def test_a_failed_commit_after_completion_still_serves_the_complete_body(
    tmp_path: Path,
) -> None:
    fill = _fill(tmp_path)
    fill.grow(6)
    fill.mark_complete()
    fill.abort(OSError("no space left on device"))
    assert await fill.wait_past(2) == 6
    assert await fill.wait_past(6) == 6
