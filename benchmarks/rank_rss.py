"""A rank's RSS while the aggregator is frozen, per backpressure policy, against the bound its settings imply.

Issue #12, goal 6: "a rank's RSS bounded by its settings under every backpressure policy,
measured". For each policy (``spool``, ``block``, ``drop_oldest``) one rank process starts a run
(``init_run``, its own real aggregator), logs for a second and waits for the acks (the baseline),
freezes the aggregator with SIGSTOP, logs a 50-key dict per step as fast as ``log()`` returns for
``freeze`` seconds (under ``block`` it waits in ``log()``, which is the policy), samples its own
RSS every 0.25 s, resumes the aggregator, waits for every ack and checks the delivery counters
(acked + dropped = accepted = logged, with the ring's points among them; nothing dropped but under
``drop_oldest``, and then only points that went over the socket; nothing pending, nothing lost).

Each policy runs in two variants. The plain one is the library's default, rings (``spool``): each row
goes into the rank's ring, a mapped file in ``/dev/shm`` that the aggregator reads, until the frozen
aggregator leaves it full; from then on rows go over the socket, into the buffer, window and spool the
policy governs (``ring_full`` counts the rows refused for room, each frame's first; ``ring_held`` the rows
after it, which follow its write over the socket while that is unacknowledged, ``client/ringlog.py``).
``COORDINATOR_RINGS=1`` is set for it, so that an environment that turns rings off cannot make it the
socket variant. The ``socket`` variant (``spool, socket``) sends every point over the socket
(``rings=False``), as a rank on another node does.

The bound is the one ``tests/transport/test_backpressure.py`` asserts for the spool policy:
points held in memory are at most the window (``max_window_batches`` x ``max_batch_points``)
and the buffer (``max_buffer_points``), 16 bytes a point, each counted twice (a batch exists as
columns and as its encoded frame), plus 16 MiB of slack. This is a benchmark, not a test: the
figures are printed and kept, nothing is asserted on time. With rings the bound also holds the
ring's bytes (:func:`bound_bytes`).

``python -m benchmarks.rank_rss [--freeze 20] [--policy P] [--rings | --socket] [--json FILE]``: every
policy in both variants (rings first) unless told; ``_rank '<json>'`` is the internal rank sub-command.
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
from coordinator.settings import RING_BYTES

__all__ = [
    "SETTINGS",
    "bound_bytes",
    "counter_problems",
    "main",
    "rank_main",
    "rank_rss_trial",
    "trial_line",
    "variant",
]

POLICIES = ("spool", "block", "drop_oldest")
SETTINGS: dict[str, Any] = {
    "max_buffer_points": 200_000,
    "max_window_batches": 32,
    "max_batch_points": 8192,
    "ack_timeout_s": 1.0,
    "flush_interval_s": 0.05,
    "system_metrics_interval_s": 0.0,
}
"""Smaller than the defaults so a 20 s freeze reaches every limit (default bound: ~208 MiB); the same in both
variants, which differ only in ``rings``. No system metrics: the run logs nothing itself, so the points accepted
are exactly those logged here. With rings (the library's default) the rows go into the rank's ring
first, and only once it is full into the buffer, window and spool the backpressure policies govern."""
_KEYS = [f"k{i:02d}" for i in range(50)]


def variant(policy: str, rings: bool) -> str:
    """A trial's name, as the suite labels its variants: the policy at the library's default (rings), or
    ``<policy>, socket`` (``rings=False``)."""
    return policy if rings else f"{policy}, socket"


def bound_bytes(s: dict[str, Any], rings: bool = False) -> int:
    """The RSS growth the settings allow: window and buffer at 16 bytes a point, twice, plus 16 MiB; with
    ``rings``, plus the ring's bytes (``s["ring_bytes"]``, else the library's 16 MiB).

    The ring is a shared mapping of a file in ``/dev/shm``, whose pages count in the rank's RSS (as shared
    memory) once touched. It is made with ``MAP_POPULATE``, so they are mostly in the baseline already (taken
    after a second of logging); the bound still allows all of them, since a ring the kernel did not populate
    in full (or pages it reclaimed) would be touched by the writes during the freeze.
    """
    window = int(s["max_window_batches"]) * int(s["max_batch_points"]) * 16
    ring = int(s.get("ring_bytes", RING_BYTES)) if rings else 0
    return 2 * window + 2 * int(s["max_buffer_points"]) * 16 + 16 * 1024**2 + ring


def rank_main(cfg: dict[str, Any]) -> int:
    """``_rank '<json>'``: one rank, one policy, rings on or off; prints one JSON line with its RSS series and
    counters."""
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

    rings = bool(cfg["rings"])
    settings = coordinator.Settings(dir=cfg["dir"], backpressure=cfg["policy"], rings=rings, **SETTINGS)
    name = f"rss-{cfg['policy']}" + ("" if rings else "-socket")
    with coordinator.init_run(project="bench", name=name, settings=settings) as run:
        log_until(time.monotonic() + 1.0)
        run.wait(60)
        base = me.memory_info().rss
        logged_before = logged
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
                "rings": rings,
                "variant": variant(cfg["policy"], rings),
                "base": base,
                "series": series,
                "logged": logged,
                "logged_before": logged_before,
                "stats": st,
                "drain_s": drain_s,
                "spool_bytes_left": None if spool is None else spool.size_bytes,
            }
        ),
        flush=True,
    )
    return 0


def rank_rss_trial(policy: str, freeze: float, tmp: Path, rings: bool = True) -> dict[str, Any]:
    """One rank process under ``policy``, with its ring (``rings``, the library's default) or every point over
    the socket; its RSS growth over the freeze against the settings' bound."""
    name = variant(policy, rings)
    d = tmp / name.replace(", ", "-")
    d.mkdir(parents=True)
    cfg = {"policy": policy, "freeze": freeze, "rings": rings, "dir": str(d / "store")}  # its store and spool
    env = child_env(d)
    # Settings(rings=True) equals the default, so it does not override the environment: a COORDINATOR_RINGS=0
    # there (CI's socket step) would make this variant the socket's. The ring's size is the one the bound names.
    env["COORDINATOR_RINGS"] = "1" if rings else "0"
    env.pop("COORDINATOR_RING_BYTES", None)
    p = subprocess.run(
        [sys.executable, "-m", "benchmarks.rank_rss", "_rank", json.dumps(cfg)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=freeze + 600,
        check=False,
    )
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        why = f"exit {p.returncode}: {p.stderr[-800:]}"
        return {"policy": policy, "rings": rings, "variant": name, "ok": False, "problems": [why]}
    r: dict[str, Any] = json.loads(lines[-1])
    st = r["stats"]
    peak = max((v for _, v in r["series"]), default=r["base"])
    bound = bound_bytes(SETTINGS, rings)
    problems = []
    if peak - r["base"] > bound:
        problems.append(f"RSS grew {mib(peak - r['base'])} MiB, over the bound {mib(bound)} MiB")
    problems.extend(counter_problems(policy, rings, r["logged"], st))
    r.update(peak=peak, growth=peak - r["base"], bound=bound, problems=problems, ok=not problems)
    return r


def counter_problems(policy: str, rings: bool, logged: int, st: dict[str, Any]) -> list[str]:
    """What does not add up in a trial's ``run.stats()`` (``st``) after its last ack, ``logged`` points logged.

    With rings, ``accepted`` and ``acked`` count the ring's points too (``ring_points``; acked once a commit
    read them), so one equation holds for both variants: every point logged was accepted, and each was acked
    or (under ``drop_oldest`` only) dropped; none pending, none lost. Points are dropped from the buffer only:
    never more than went over the socket. A ring's points are whole rows, and a rings trial must have used its
    ring; a socket trial has none.
    """
    n = {k: int(st.get(k, 0)) for k in ("accepted", "acked", "dropped", "pending", "lost")}
    out = []
    if n["accepted"] != logged or n["acked"] + n["dropped"] != logged or n["pending"] or n["lost"]:
        out.append(f"counters do not add up: logged {logged:,}, stats {st}")
    if n["dropped"] and policy != "drop_oldest":
        out.append(f"{n['dropped']:,} points dropped under {policy}")
    if rings != ("ring_points" in st):
        out.append(f"rings={rings} but the stats {'lack' if rings else 'have'} ring counters: {st}")
    elif rings:
        ring = int(st["ring_points"])
        if not 0 < ring <= logged or ring % len(_KEYS):
            out.append(f"{ring:,} ring points of {logged:,} logged, not whole rows of {len(_KEYS)} keys")
        if n["dropped"] > n["accepted"] - ring:
            out.append(f"{n['dropped']:,} dropped, more than the {n['accepted'] - ring:,} that went over the socket")
    return out


def main(argv: list[str] | None = None) -> int:
    """Every policy in each variant asked for (or the internal ``_rank`` sub-command); prints the figures."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "_rank":
        return rank_main(json.loads(argv[1]))
    ap = argparse.ArgumentParser(prog="python -m benchmarks.rank_rss", description=__doc__.split("\n\n")[0])
    ap.add_argument("--freeze", type=float, default=20.0, help="seconds the aggregator stays SIGSTOPped")
    ap.add_argument("--policy", choices=POLICIES, action="append", help="only this policy (repeatable)")
    ap.add_argument("--json", type=Path, help="write the results (RSS series included) here")
    only = ap.add_mutually_exclusive_group()
    only.add_argument("--rings", action="store_true", help="only the library's default, rings (the plain variant)")
    only.add_argument("--socket", action="store_true", help="only the socket variant (rings=False)")
    args = ap.parse_args(argv)
    ways = (True,) if args.rings else (False,) if args.socket else (True, False)
    out = []
    with tempfile.TemporaryDirectory(prefix="coord-rankrss-") as tmp:
        for policy in args.policy or POLICIES:
            for rings in ways:
                name = variant(policy, rings)
                log(f"rank RSS: {name}, aggregator frozen {args.freeze:.0f} s, settings {SETTINGS}, rings={rings}")
                r = rank_rss_trial(policy, args.freeze, Path(tmp), rings=rings)
                out.append(r)
                print(trial_line(r), flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0 if all(r["ok"] for r in out) else 1


def trial_line(r: dict[str, Any]) -> str:
    """A trial's figures in one line, named by its variant."""
    if "growth" not in r:
        return f"{r['variant']}: FAILED {r['problems']}"
    st = r["stats"]
    by5 = [mib(v - r["base"]) for t, v in r["series"] if abs(t - round(t / 5) * 5) < 0.13]
    ring = (
        f"; ring_points {st['ring_points']:,}, ring_full {st['ring_full']:,} rows, ring_held {st['ring_held']:,}"
        if "ring_points" in st
        else ""
    )
    return (
        f"{r['variant']}: {r['logged']:,} points logged ({r['logged'] - r['logged_before']:,} during the freeze); "
        f"RSS {mib(r['base'])} MiB before, peak {mib(r['peak'])} MiB: growth {mib(r['growth'])} MiB vs bound "
        f"{mib(r['bound'])} MiB (growth every ~5 s: {by5}); dropped {st.get('dropped', 0):,}{ring}, drained in "
        f"{r['drain_s']:.1f} s; {'ok' if r['ok'] else 'FAILED ' + str(r['problems'])}"
    )


if __name__ == "__main__":
    sys.exit(main())
