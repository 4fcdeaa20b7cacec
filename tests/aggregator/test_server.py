"""The socket loop: its sweeps (the open-file limit it raises: test_fdlimit.py)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import coordinator
from coordinator.journal.store import LocalStore, list_runs


def _process_wake_ups(pid: int) -> int:
    """A process's main thread's voluntary context switches so far (each time it slept and was woken)."""
    for line in Path(f"/proc/{pid}/task/{pid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    raise AssertionError(f"no voluntary_ctxt_switches for {pid}")


@pytest.mark.integration
def test_an_idle_aggregator_wakes_only_for_its_sweeps(store_dir: Path) -> None:
    """With nothing arriving the loop sleeps until its next sweep (one a second), not every 50 ms (~80 in 4 s).

    Four sweeps a second (until round 30 of docs/performance.md) made 19-26 wake-ups in 4 s here.
    """
    with coordinator.init_run() as run:
        run.log({"x": 0.0}, step=0)
        run.wait(60)
        assert run._agg is not None and run._agg.pid is not None
        pid = run._agg.pid
        time.sleep(0.5)
        before = _process_wake_ups(pid)
        time.sleep(4.0)
        woke = _process_wake_ups(pid) - before
        # 4 sweeps, the heartbeats (PINGs) and their replies: 8-11 on the development VM.
        assert woke <= 14, f"the idle aggregator woke up {woke} times in 4 s"
        run.log({"x": 1.0}, step=1)
        run.wait(60)
    [info] = list_runs(store_dir)
    s = LocalStore(info.path / "run.db", readonly=True)
    try:
        assert s.values("x", 0) == [(0, 0.0), (1, 1.0)]
    finally:
        s.close()


@pytest.mark.integration
def test_a_sweep_writes_the_main_series_it_emits(store_dir: Path) -> None:
    """A rank logging 20 steps a second: the store's main series is never more than ~1.1 s behind (1.75 here).

    A sweep (one a second) emits the complete groups and writes them with what it held, in the
    next commit (the rank's next batch, within the 100 ms light window). Had the sweep held what
    it emitted until the next one, the main series would fall 2-3 s behind (measured). Nothing
    here reads the main series through the aggregator (no sync, no wait(): those write it at once).
    """
    lags: list[float] = []
    with coordinator.init_run() as run:
        run.log({"x": 0.0}, step=0)
        run.wait(60)
        [info] = list_runs(store_dir)
        s = LocalStore(info.path / "run.db", readonly=True)
        try:
            logged_at = {0: time.monotonic()}
            step = 0
            start = time.monotonic()
            while time.monotonic() - start < 4.5:
                step += 1
                run.log({"x": float(step)}, step=step)
                logged_at[step] = time.monotonic()
                time.sleep(0.05)
                if time.monotonic() - start > 1.5:  # the first sweeps after the wait() are behind us
                    last = s.values("x")[-1][0]
                    lags.append(time.monotonic() - logged_at[last + 1] if last < step else 0.0)
        finally:
            s.close()
    assert lags and max(lags) < 1.75, f"the main series fell {max(lags):.2f} s behind: {sorted(lags)[-5:]}"
