"""Section 6, scale and soak: one aggregator fed by many simulated senders.

The aggregator is the real one (``python -m coordinator.aggregator``), started here through
``coordinator.transport.launcher.AggregatorProcess`` (the launcher ``init_run`` uses) with
``world_size`` = number of senders. The senders are simulated: a few processes each open
many ZeroMQ DEALER sockets and speak the coordinator's wire protocol
(``coordinator.transport.wire``) exactly as a rank's sender thread does — HELLO, numbered columnar
BATCHes with a bounded window of unacknowledged batches, BYE — so the aggregator cannot tell
them from real ranks, while 1024 of them fit on two cores (a real ``Run`` is a thread, a
ZeroMQ context and a flush timer each). The sender processes are ``benchmarks.scale_sim``.

Every sender has its own rank; each batch carries ``keys`` keys x ``steps_per_batch`` steps
(fresh, increasing steps; value = step * 8 + rank). After the run every rank's per-key point
count is read back from the store and compared with what was acknowledged.

* scale: every sender pushes as fast as its window allows; points/s = acknowledged points /
  time until the last ack; aggregator RSS sampled every 0.1 s (peak, end).
* paced (``--full``; issue #12's ack-latency goals): the senders are paced to offer a fixed load
  (1,000,000 points/s from 1024 senders, 500,000 from 4096) and the ack latency is measured at
  that load. Unpaced, a full window per sender makes the latency the points in flight over the
  throughput (Little's law), whatever the aggregator does.
* soak: the senders are paced (``rate`` batches/s each) for a fixed time; the aggregator's RSS
  is sampled every second; reported at the start (after a short warm-up) and at the end.

One part alone (``benchmarks.scale_cli``): ``python -m benchmarks.scale --senders 1024``,
``--senders 1024 --offered 1000000``, ``--soak 600``. ``python -m benchmarks.scale _sim '<json>'``
is the internal sender-process sub-command.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks.common import child_env
from benchmarks.workers import Worker
from coordinator.aggregator.counters import PROBLEMS

__all__ = ["Aggregator", "main", "raise_fd_limit", "scale_trial"]

# ============================================================================ parent side


def raise_fd_limit() -> tuple[int, int]:
    """Raise this process's soft open-file limit to its hard limit; the children inherit it.

    Every simulated sender is a TCP connection: one descriptor in its process and one in the
    aggregator's, plus ZeroMQ's own per socket. The usual soft limit (1024) is below 1024 senders'
    needs; the aggregator raises its own as well, this covers the sender processes. Returns
    (soft, hard) after the change.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        new = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


class Aggregator:
    """A real aggregator for ``world`` senders, started by this benchmark through ``init_run``'s own launcher."""

    def __init__(self, d: Path, world: int) -> None:
        import psutil

        from coordinator.errors import CoordinatorError
        from coordinator.transport.launcher import AggregatorProcess

        self.run_id = f"scale-{uuid.uuid4().hex[:10]}"
        self.store = d / "store"
        self.store_path = self.store / "runs" / self.run_id / "run.db"
        self.store_path.parent.mkdir(parents=True)
        # The fields init_run sets that matter here; the rest keep the aggregator's defaults.
        # endpoint and parent_pid (this process) are filled in by AggregatorProcess.
        cfg = {
            "store_path": str(self.store_path),
            "world_size": world,
            "project": "bench",
            "name": "scale",
            "liveness_timeout_s": 60.0,
            "stop_grace_s": 5.0,
            "spool_root": "",
        }
        self.proc = AggregatorProcess(self.run_id, cfg, stderr_path=str(d / "aggregator.log"))
        try:
            self.proc.start(60)
        except BaseException as e:  # as init_run does: no half-started aggregator left behind
            self.proc.kill()
            self.proc.cleanup()
            if isinstance(e, CoordinatorError):
                raise RuntimeError(f"aggregator did not start: {e}; see {d / 'aggregator.log'}") from e
            raise
        self.endpoint = self.proc.endpoint
        assert self.proc.pid is not None
        self.ps = psutil.Process(self.proc.pid)

    def rss(self) -> int | None:
        """Its resident set size now (None once it is gone)."""
        import psutil

        try:
            return int(self.ps.memory_info().rss)
        except psutil.Error:
            return None

    def cpu(self) -> float | None:
        """CPU seconds (user + system) it used so far (None once it is gone)."""
        import psutil

        try:
            c = self.ps.cpu_times()
            return float(c.user + c.system)
        except psutil.Error:
            return None

    def close(self, timeout: float) -> int | None:
        """Wait for its exit (it finishes once every sender said BYE); past ``timeout``, SIGTERM then SIGKILL (None)."""
        code = self.proc.wait(timeout)
        if code is None:
            self.proc.terminate(10)
        self.proc.cleanup()
        return code


def _count_store(store_path: Path) -> tuple[dict[int, int], dict[str, Any], str]:
    from coordinator.journal.store import LocalStore

    st = LocalStore(str(store_path), readonly=True)
    try:
        per_rank: dict[int, int] = {}
        for s in st.series_summary():
            for r, n in s["per_rank"].items():
                per_rank[int(r)] = per_rank.get(int(r), 0) + int(n)
        info = st.run_info()
        return per_rank, info.report or {}, info.state
    finally:
        st.close()


def scale_trial(
    senders: int,
    tmp: Path,
    label: str,
    *,
    procs: int = 2,
    keys: int = 10,
    steps_per_batch: int = 100,
    batches: int = 4,
    window: int = 4,
    rate: float | None = None,
    duration: float | None = None,
    rss_every: float = 0.1,
    timeout: float = 600,
    aligned: bool = False,
) -> dict[str, Any]:
    """One aggregator, ``senders`` simulated ranks spread over ``procs`` processes."""
    d = tmp / label
    d.mkdir(parents=True)
    env = child_env(d)
    res: dict[str, Any] = {
        "senders": senders,
        "label": label,
        "keys": keys,
        "steps_per_batch": steps_per_batch,
        "window": window,
        "rate": rate,
        "duration": duration,
        "procs": procs,
        "aligned": aligned,
        "problems": [],
    }
    raise_fd_limit()
    agg: Aggregator | None = None
    workers: list[Worker] = []
    samples: list[tuple[float, int]] = []
    stop_evt = threading.Event()
    try:
        agg = Aggregator(d, senders)
        res["rss_idle"] = agg.rss()
        per = -(-senders // procs)
        for i in range(procs):
            r0, r1 = i * per, min(senders, (i + 1) * per)
            if r0 >= r1:
                break
            cfg = {
                "rank": i,
                "rank0": r0,
                "rank1": r1,
                "world": senders,
                "run_id": agg.run_id,
                "endpoint": agg.endpoint,
                "keys": keys,
                "steps_per_batch": steps_per_batch,
                "batches": batches,
                "window": window,
                "rate": rate,
                "duration": duration,
                "timeout": timeout,
                "aligned": aligned,
            }
            workers.append(Worker(cfg, env, d / f"sim{i}.stderr", module="benchmarks.scale", sub="_sim"))
        for w in workers:
            w.expect("READY", time.monotonic() + 180)
        res["rss_connected"] = agg.rss()
        cpu0 = agg.cpu()
        t_start = time.monotonic() + 0.3

        def sample() -> None:
            while not stop_evt.wait(rss_every):
                v = agg.rss() if agg is not None else None
                if v is not None:
                    samples.append((time.monotonic() - t_start, v))

        th = threading.Thread(target=sample, name="bench-rss", daemon=True)
        th.start()
        for w in workers:
            w.send(f"GO {t_start!r}")
        done = [w.expect("DONE", time.monotonic() + timeout + 60) for w in workers]
        stop_evt.set()
        th.join(5)
        cpu1 = agg.cpu()
        t_end = max(x["t_end"] for x in done)
        acked = sum(x["acked_points"] for x in done)
        elapsed = t_end - t_start
        res.update(
            elapsed=elapsed,
            acked_points=acked,
            pps=acked / elapsed if elapsed > 0 else 0.0,
            agg_cpu=None if cpu0 is None or cpu1 is None else cpu1 - cpu0,
            ack_p50_ms=max((x["ack_p50_ms"] or 0) for x in done),
            ack_p99_ms=max((x["ack_p99_ms"] or 0) for x in done),
            rss_end=agg.rss(),
            rss_peak=max((v for _, v in samples), default=None),
            rss_series=[(round(t, 2), v) for t, v in samples],
        )
        for x in done:
            if x["n_errors"]:
                res["problems"].append(f"{x['n_errors']} error replies, e.g. {x['errors'][:2]}")
        expected = {int(r): n for x in done for r, n in x["per_rank_points"].items()}
        for w in workers:
            w.send("STOP")
        for w in workers:
            w.expect("STOPPED", time.monotonic() + 120)
        code = agg.close(120)
        if code != 0:
            res["problems"].append(f"aggregator exit code {code}")
        agg = None
        per_rank, rep, state = _count_store(_store_path(d))
        bad = [(r, per_rank.get(r, 0), n * keys) for r, n in expected.items() if per_rank.get(r, 0) != n * keys]
        if bad:
            res["problems"].append(f"{len(bad)} ranks with a wrong point count in the store, e.g. {bad[:3]}")
        res["stored_points"] = sum(per_rank.values())
        res["state"] = state
        for c in PROBLEMS:
            if rep.get(c):
                res["problems"].append(f"aggregator report: {c}={rep[c]}")
        if state != "finished":
            res["problems"].append(f"run state {state}: {rep.get('reasons')}")
    except Exception as e:
        res["problems"].append(f"scale trial failed: {type(e).__name__}: {e}")
    finally:
        stop_evt.set()
        for w in workers:
            code = w.close(60)
            if code not in (0, None) and not res["problems"]:
                res["problems"].append(f"{w.stderr_path.name}: exit code {code}: {w.stderr_tail(400)}")
        if agg is not None:
            agg.close(10)
    log = d / "aggregator.log"
    if log.exists():
        warn = [ln for ln in log.read_text(errors="replace").splitlines() if " WARNING " in ln or " ERROR " in ln]
        if warn:
            res["agg_warnings"] = len(warn)
            res["agg_warning_sample"] = warn[:3]
    res["ok"] = not res["problems"]
    return res


def _store_path(d: Path) -> Path:
    found = list((d / "store" / "runs").glob("*/run.db"))
    if len(found) != 1:
        raise RuntimeError(f"expected one run under {d / 'store'}, found {len(found)}")
    return found[0]


def main(argv: list[str] | None = None) -> int:
    """``--senders N`` / ``--soak SECONDS`` (see ``benchmarks.scale_cli``), or the internal ``_sim`` worker."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "_sim":
        with contextlib.suppress(KeyboardInterrupt):
            from benchmarks.scale_sim import sim_main

            return sim_main(json.loads(argv[1]))
        return 130
    from benchmarks.scale_cli import cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
