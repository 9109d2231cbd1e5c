"""WorkDirs: finished runs' work dirs off their path in batches, the empty
ones kept as spares for later runs."""

from __future__ import annotations

from pathlib import Path

import trio

from jobserver.workdirs import SPARES, WorkDirs, take_over


def _dirs(root: Path, n: int) -> list[Path]:
    """`n` job dirs under `root`, the first with a file left in it."""
    made = []
    for i in range(n):
        path = root / f"job-{i}"
        path.mkdir(parents=True)
        made.append(path)
    (made[0] / "left-behind.txt").write_text("a file the job did not remove")
    return made


async def _swept(dirs: WorkDirs, count: int) -> None:
    with trio.fail_after(5):
        while dirs.removed < count:
            await trio.sleep(0.01)


async def test_dirs_discarded_together_go_in_one_trip(tmp_path: Path) -> None:
    dirs = WorkDirs(tmp_path, delay=0.05)
    paths = _dirs(tmp_path, 3)
    async with trio.open_nursery() as nursery:
        await nursery.start(dirs.run)
        assert all(dirs.discard(p) for p in paths)
        assert all(p.exists() for p in paths)  # not yet: the run goes on at once
        await _swept(dirs, 3)
        nursery.cancel_scope.cancel()
    assert not any(p.exists() for p in paths)
    assert dirs.sweeps == 1
    # The two empty ones are spares now; the one with a file is gone.
    assert sorted(p.name for p in (tmp_path / SPARES).iterdir()) == ["0", "1"]


async def test_a_spare_becomes_a_new_runs_dir(tmp_path: Path) -> None:
    dirs = WorkDirs(tmp_path, delay=0.01, max_spares=1)
    paths = _dirs(tmp_path, 3)
    async with trio.open_nursery() as nursery:
        await nursery.start(dirs.run)
        for path in paths:
            assert dirs.discard(path)
        await _swept(dirs, 3)
        spare = dirs.take_spare()
        assert spare is not None and dirs.take_spare() is None  # one kept at most
        inode = spare.stat().st_ino
        new = tmp_path / "job-new"
        assert take_over(spare, new)
        assert new.stat().st_ino == inode and not list(new.iterdir()) and not spare.exists()
        assert not take_over(None, tmp_path / "job-other")
        nursery.cancel_scope.cancel()
    assert not any(p.exists() for p in paths)


async def test_the_spares_of_an_earlier_start_are_removed(tmp_path: Path) -> None:
    old = tmp_path / SPARES / "7"
    old.mkdir(parents=True)
    dirs = WorkDirs(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(dirs.run)
        assert dirs.take_spare() is None
        nursery.cancel_scope.cancel()
    assert not old.exists() and (tmp_path / SPARES).is_dir()


async def test_a_dir_reclaimed_before_its_sweep_is_left_to_the_caller(tmp_path: Path) -> None:
    dirs = WorkDirs(tmp_path, delay=0.05)
    kept, other = _dirs(tmp_path, 2)
    async with trio.open_nursery() as nursery:
        await nursery.start(dirs.run)
        assert dirs.discard(kept) and dirs.discard(other)
        assert await dirs.reclaim(kept)  # the job runs again: its dir is its own again
        assert not await dirs.reclaim(tmp_path / "never-discarded")
        await _swept(dirs, 1)
        nursery.cancel_scope.cancel()
    assert kept.exists() and not other.exists() and dirs.removed == 1


async def test_a_full_queue_or_a_stopped_one_refuses(tmp_path: Path) -> None:
    dirs = WorkDirs(tmp_path, delay=60, max_pending=1)
    first, second = _dirs(tmp_path, 2)
    assert not dirs.discard(first)  # not running: the run removes its own
    async with trio.open_nursery() as nursery:
        await nursery.start(dirs.run)
        assert dirs.discard(first)
        assert not dirs.discard(second)
        nursery.cancel_scope.cancel()
    assert not first.exists() and second.exists()  # flushed on the way out


async def test_the_pending_dirs_go_on_the_way_out(tmp_path: Path) -> None:
    dirs = WorkDirs(tmp_path, delay=60)
    paths = _dirs(tmp_path, 3)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(dirs.run)
            for path in paths:
                assert dirs.discard(path)
            await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    assert not any(p.exists() for p in paths)
    assert not list((tmp_path / SPARES).iterdir())  # removed, not kept, at the end
    assert not dirs.discard(tmp_path)  # stopped
