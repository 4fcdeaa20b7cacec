"""Item 9: a 20-million-point series is restarted on, fetched live and read-only, and shown, in bounded memory.

The store is built directly (big chunks through ``LocalStore.commit``), as a run that ended.
Then a real run resumes it (``init_run(with_id=...)``): its aggregator restarts on the store,
rank 0 logs 100 more points, ``fetch_values`` pages the whole series out of the live aggregator;
the run ends, is reopened read-only and fetched again; ``coordinator show`` summarises it. Each
answer is checked point for point; the aggregator's and the CLI's RSS are sampled with psutil
the whole time and must stay under 300 MB (the old code loaded every point into Python lists:
several GB).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from array import array
from collections.abc import Callable, Iterable
from pathlib import Path

import psutil
import pytest

from coordinator.journal.store import MAIN_RANK, ChunkRow, LocalStore, TxnData, run_dir

pytestmark = [pytest.mark.slow, pytest.mark.integration]

N = 20_000_000
CHUNK = 65_536
EXTRA = 100
RSS_LIMIT = 300 * 1024 * 1024
RUN = "big-series-20m"
ROOT = Path(__file__).resolve().parents[2]


def _build(root: Path) -> None:
    """20M points of ``loss`` for rank 0 and the main series (value = step / 2), as a finished run."""
    s = LocalStore(run_dir(root, RUN) / "run.db")
    try:
        s.create_run(RUN, "big", "big", 1, time.time() - 60)
        for lo in range(0, N, CHUNK * 16):
            txn = TxnData(key_policies={"loss": "mean"} if lo == 0 else {})
            for a in range(lo, min(N, lo + CHUNK * 16), CHUNK):
                steps = array("q", range(a, min(N, a + CHUNK)))
                vals = array("d", [x * 0.5 for x in steps])
                txn.chunks.append(ChunkRow("loss", 0, 1, a // CHUNK + 1, 1.0, steps, vals))
                txn.chunks.append(ChunkRow("loss", MAIN_RANK, 0, 0, 1.0, steps, vals, array("i", [1]) * len(steps)))
            s.commit(txn)
        last = N // CHUNK + (1 if N % CHUNK else 0)
        s.commit(TxnData(senders={(0, 1): (last, N, last, 1.0, 2.0, "closed", None, None)}))
        s.finish_run("finished", {"points": N})
    finally:
        s.close()


def _hwm(pid: int) -> int:
    """The process's RSS high-water mark (VmHWM, bytes): peaks between two samples count too."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


class PeakRss:
    """Samples the RSS (and its high-water mark) of processes every 20 ms with psutil; ``peak`` is the largest seen."""

    def __init__(self, find: Callable[[], Iterable[psutil.Process]]) -> None:
        self._find = find
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, name="test-peak-rss", daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            for p in self._find():
                try:
                    self.peak = max(self.peak, p.memory_info().rss, _hwm(p.pid))
                    self.samples += 1
                except (psutil.Error, OSError):
                    continue

    def stop(self) -> int:
        self._stop.set()
        self._t.join(10)
        return self.peak


def _aggregators() -> list[psutil.Process]:
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(p.cmdline())
        except psutil.Error:
            continue
        if "coordinator.aggregator" in cmd:
            out.append(p)
    return out


def _check(steps: object, values: object, n: int) -> None:
    import numpy as np

    assert isinstance(steps, np.ndarray) and isinstance(values, np.ndarray)
    assert len(steps) == n and len(values) == n
    assert np.array_equal(steps, np.arange(n, dtype=np.int64))
    assert np.array_equal(values, np.arange(n, dtype=np.int64) * 0.5)


def test_twenty_million_points_restart_fetch_and_show_in_bounded_memory(store_dir: Path) -> None:
    pytest.importorskip("numpy")
    import coordinator

    _build(store_dir)
    total = N + EXTRA
    agg = PeakRss(_aggregators)
    try:
        with coordinator.init_run(with_id=RUN) as run:  # the aggregator restarts on the 20M-point store
            for s in range(N, total):
                run.log({"loss": s * 0.5}, step=s)
            run.wait(120)
            deadline = time.monotonic() + 60
            while (main := run["loss"].fetch_values(timeout=300, as_numpy=True))[0].size < total:
                assert time.monotonic() < deadline, "the main series never reached the new points"
                time.sleep(0.2)  # the last groups are emitted at the next sweep
            _check(*main, total)
            del main
            _check(*run["loss"].fetch_values(rank=0, timeout=300, as_numpy=True), total)
    finally:
        agg_peak = agg.stop()
    assert agg.samples > 10
    print(f"aggregator peak RSS {agg_peak / 2**20:.0f} MB over {agg.samples} samples")
    assert agg_peak < RSS_LIMIT, f"aggregator peak RSS {agg_peak / 2**20:.0f} MB"

    ro = coordinator.init_run(with_id=RUN, mode="read-only")
    try:
        _check(*ro["loss"].fetch_values(as_numpy=True), total)
        _check(*ro["loss"].fetch_values(rank=0, as_numpy=True), total)
    finally:
        ro.stop()

    # The CLI's own high-water mark (VmHWM: this process image's, unlike ru_maxrss, which keeps the
    # forking parent's) besides psutil's samples.
    code = (
        "import re, sys; from pathlib import Path; from coordinator.cli.main import main; "
        "rc = main(['show', sys.argv[1], '--json']); "
        "hwm = re.search(r'VmHWM:\\s+(\\d+) kB', Path('/proc/self/status').read_text()); "
        "sys.stderr.write(f'PEAK {hwm.group(1)}\\n'); sys.exit(rc)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, RUN],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    cli = PeakRss(lambda: [psutil.Process(proc.pid)] if proc.poll() is None else [])
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        cli_peak = cli.stop()
    assert proc.returncode == 0, err
    print(f"CLI peak RSS {cli_peak / 2**20:.0f} MB (psutil), high-water mark {err.rsplit('PEAK ', 1)[1].split()[0]} kB")
    self_peak = int(err.rsplit("PEAK ", 1)[1].split()[0]) * 1024
    assert max(cli_peak, self_peak) < RSS_LIMIT, f"CLI peak RSS {max(cli_peak, self_peak) / 2**20:.0f} MB"
    [series] = [s for s in json.loads(out)["series"] if s["key"] == "loss"]
    assert series["points"] == total and series["per_rank"] == {"0": total}
    assert series["first"] == [0, 0.0] and series["last"] == [total - 1, (total - 1) * 0.5]
    assert (series["min"], series["max"]) == (0.0, (total - 1) * 0.5)
