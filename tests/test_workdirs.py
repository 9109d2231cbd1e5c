"""WorkDirs: finished runs' work dirs removed in batches, off the runs' path."""

from __future__ import annotations

from pathlib import Path

import trio

from jobserver.workdirs import WorkDirs


def _dirs(root: Path, n: int) -> list[Path]:
    made = []
    for i in range(n):
        path = root / f"job-{i}"
        path.mkdir()
        made.append(path)
    (made[0] / "left-behind.txt").write_text("a file the job did not remove")
    return made


async def test_dirs_discarded_together_go_in_one_trip(tmp_path: Path) -> None:
    dirs = WorkDirs(delay=0.05)
    paths = _dirs(tmp_path, 3)
    async with trio.open_nursery() as nursery:
        await nursery.start(dirs.run)
        assert all(dirs.discard(p) for p in paths)
        assert all(p.exists() for p in paths)  # not yet: the run goes on at once
        with trio.fail_after(5):
            while dirs.removed < 3:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert not any(p.exists() for p in paths)
    assert dirs.sweeps == 1


async def test_a_dir_reclaimed_before_its_sweep_is_left_to_the_caller(tmp_path: Path) -> None:
    dirs = WorkDirs(delay=0.05)
    kept, other = _dirs(tmp_path, 2)
    async with trio.open_nursery() as nursery:
        await nursery.start(dirs.run)
        assert dirs.discard(kept) and dirs.discard(other)
        assert await dirs.reclaim(kept)  # the job runs again: its dir is its own again
        assert not await dirs.reclaim(tmp_path / "never-discarded")
        with trio.fail_after(5):
            while other.exists():
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert kept.exists() and dirs.removed == 1


async def test_a_full_queue_or_a_stopped_one_refuses(tmp_path: Path) -> None:
    dirs = WorkDirs(delay=60, max_pending=1)
    first, second = _dirs(tmp_path, 2)
    assert not dirs.discard(first)  # not running: the run removes its own
    async with trio.open_nursery() as nursery:
        await nursery.start(dirs.run)
        assert dirs.discard(first)
        assert not dirs.discard(second)
        nursery.cancel_scope.cancel()
    assert not first.exists() and second.exists()  # flushed on the way out


async def test_the_pending_dirs_go_on_the_way_out(tmp_path: Path) -> None:
    dirs = WorkDirs(delay=60)
    paths = _dirs(tmp_path, 2)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(dirs.run)
            for path in paths:
                assert dirs.discard(path)
            await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    assert not any(p.exists() for p in paths)
    assert not dirs.discard(tmp_path)  # stopped
