"""A rank's RSS while the aggregator is frozen, per backpressure policy, against the bound its settings imply.

Issue #12, goal 6: "a rank's RSS bounded by its settings under every backpressure policy,
measured". For each policy (``spool``, ``block``, ``drop_oldest``) one rank process starts a run
(``init_run``, its own real aggregator), logs for a second and waits for the acks (the baseline),
freezes the aggregator with SIGSTOP, logs a 50-key dict per step as fast as ``log()`` returns for
``freeze`` seconds (under ``block`` it waits in ``log()``, which is the policy), samples its own
RSS every 0.25 s, resumes the aggregator, waits for every ack and checks the delivery counters
(acked + dropped = accepted >= logged; nothing dropped but under ``drop_oldest``, nothing lost).
The rank sends every point over the socket (``rings=False``): backpressure is that path's.

The bound is the one ``tests/transport/test_backpressure.py`` asserts for the spool policy:
points held in memory are at most the window (``max_window_batches`` x ``max_batch_points``)
and the buffer (``max_buffer_points``), 16 bytes a point, each counted twice (a batch exists as
columns and as its encoded frame), plus 16 MiB of slack. This is a benchmark, not a test: the
figures are printed and kept, nothing is asserted on time.

``python -m benchmarks.rank_rss [--freeze 20] [--json FILE]``; ``_rank '<json>'`` is the internal
rank sub-command.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, child_env, log, mib

__all__ = ["SETTINGS", "bound_bytes", "main", "rank_main", "rank_rss_trial"]

POLICIES = ("spool", "block", "drop_oldest")
SETTINGS: dict[str, Any] = {
    "max_buffer_points": 200_000,
    "max_window_batches": 32,
    "max_batch_points": 8192,
    "ack_timeout_s": 1.0,
    "flush_interval_s": 0.05,
    "rings": False,
}
"""Smaller than the defaults so a 20 s freeze reaches every limit (default bound: ~208 MiB); every point over
the socket (``rings=False``), whose buffer, window and spool the backpressure policies govern (with rings, the
library's default, the rows would go into the rank's ring instead, and only a full ring's into the buffer)."""
_KEYS = [f"k{i:02d}" for i in range(50)]


def bound_bytes(s: dict[str, Any]) -> int:
    """The RSS growth the settings allow: window and buffer at 16 bytes a point, twice, plus 16 MiB."""
    window = int(s["max_window_batches"]) * int(s["max_batch_points"]) * 16
    return 2 * window + 2 * int(s["max_buffer_points"]) * 16 + 16 * 1024**2


def rank_main(cfg: dict[str, Any]) -> int:
    """``_rank '<json>'``: one rank, one policy; prints one JSON line with its RSS series and counters."""
    import psutil

    import coordinator

    me = psutil.Process()
    series: list[tuple[float, int]] = []
    stop = threading.Event()
    step = 0
    logged = 0

    def log_until(end: float) -> None:
        nonlocal step, logged
        while time.monotonic() < end:
            run.log({k: float(step) for k in _KEYS}, step=step)
            step += 1
            logged += len(_KEYS)

    settings = coordinator.Settings(backpressure=cfg["policy"], **SETTINGS)
    with coordinator.init_run(project="bench", name=f"rss-{cfg['policy']}", settings=settings) as run:
        log_until(time.monotonic() + 1.0)
        run.wait(60)
        base = me.memory_info().rss
        assert run._agg is not None and run._agg.pid is not None  # rank 0 started the aggregator
        agg = psutil.Process(run._agg.pid)
        t0 = time.monotonic()

        def sample() -> None:
            while not stop.wait(0.25):
                series.append((round(time.monotonic() - t0, 2), me.memory_info().rss))

        sampler = threading.Thread(target=sample, name="bench-rss", daemon=True)
        agg.suspend()
        sampler.start()
        try:
            # Under block, log() waits once the buffer is full: a producer thread keeps the
            # sampler and the clock going, and the freeze ends on time either way.
            producer = threading.Thread(target=log_until, args=(t0 + cfg["freeze"],), daemon=True)
            producer.start()
            producer.join(cfg["freeze"] + 0.5)
        finally:
            agg.resume()
        producer.join(120)
        stop.set()
        sampler.join(5)
        t_resume = time.monotonic()
        run.wait(300)
        drain_s = time.monotonic() - t_resume
        st = dict(run.stats())
        assert run._sender is not None  # an async run has a sender thread
        spool = run._sender.spool
    print(
        json.dumps(
            {
                "policy": cfg["policy"],
                "base": base,
                "series": series,
                "logged": logged,
                "stats": st,
                "drain_s": drain_s,
                "spool_bytes_left": None if spool is None else spool.size_bytes,
            }
        ),
        flush=True,
    )
    return 0


def rank_rss_trial(policy: str, freeze: float, tmp: Path) -> dict[str, Any]:
    """One rank process under ``policy``; its RSS growth over the freeze against the settings' bound."""
    d = tmp / policy
    d.mkdir(parents=True)
    cfg = {"policy": policy, "freeze": freeze}
    p = subprocess.run(
        [sys.executable, "-m", "benchmarks.rank_rss", "_rank", json.dumps(cfg)],
        cwd=ROOT,
        env=child_env(d),
        capture_output=True,
        text=True,
        timeout=freeze + 600,
        check=False,
    )
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        return {"policy": policy, "ok": False, "problems": [f"exit {p.returncode}: {p.stderr[-800:]}"]}
    r: dict[str, Any] = json.loads(lines[-1])
    st = r["stats"]
    peak = max((v for _, v in r["series"]), default=r["base"])
    bound = bound_bytes(SETTINGS)
    problems = []
    if peak - r["base"] > bound:
        problems.append(f"RSS grew {mib(peak - r['base'])} MiB, over the bound {mib(bound)} MiB")
    dropped = int(st.get("dropped", 0))
    # accepted also counts what the run logs itself (its system series): at least what was logged here
    accepted = int(st.get("accepted", 0))
    if int(st.get("acked", 0)) + dropped != accepted or accepted < r["logged"] or int(st.get("lost", 0)):
        problems.append(f"counters do not add up: logged {r['logged']}, stats {st}")
    if dropped and policy != "drop_oldest":
        problems.append(f"{dropped} points dropped under {policy}")
    r.update(peak=peak, growth=peak - r["base"], bound=bound, problems=problems, ok=not problems)
    return r


def main(argv: list[str] | None = None) -> int:
    """Every policy once (or the internal ``_rank`` sub-command); prints the figures."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "_rank":
        return rank_main(json.loads(argv[1]))
    ap = argparse.ArgumentParser(prog="python -m benchmarks.rank_rss", description=__doc__.split("\n\n")[0])
    ap.add_argument("--freeze", type=float, default=20.0, help="seconds the aggregator stays SIGSTOPped")
    ap.add_argument("--policy", choices=POLICIES, action="append", help="only this policy (repeatable)")
    ap.add_argument("--json", type=Path, help="write the results (RSS series included) here")
    args = ap.parse_args(argv)
    out = []
    with tempfile.TemporaryDirectory(prefix="coord-rankrss-") as tmp:
        for policy in args.policy or POLICIES:
            log(f"rank RSS: {policy}, aggregator frozen {args.freeze:.0f} s, settings {SETTINGS}")
            r = rank_rss_trial(policy, args.freeze, Path(tmp))
            out.append(r)
            if "growth" not in r:
                print(f"{policy}: FAILED {r['problems']}", flush=True)
                continue
            by5 = [mib(v - r["base"]) for t, v in r["series"] if abs(t - round(t / 5) * 5) < 0.13]
            print(
                f"{policy}: {r['logged']:,} points logged during the freeze; RSS {mib(r['base'])} MiB before, "
                f"peak {mib(r['peak'])} MiB: growth {mib(r['growth'])} MiB vs bound {mib(r['bound'])} MiB "
                f"(growth every ~5 s: {by5}); dropped {r['stats'].get('dropped', 0):,}, drained in "
                f"{r['drain_s']:.1f} s; {'ok' if r['ok'] else 'FAILED ' + str(r['problems'])}",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0 if all(r["ok"] for r in out) else 1


if __name__ == "__main__":
    sys.exit(main())
