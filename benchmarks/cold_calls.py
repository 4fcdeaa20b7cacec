"""What a paced scalar ``log()`` costs, part by part: the whole call, its ring row alone, and a no-op.

The suite's realistic load (section 1) times calls made between a training loop's sleeps: each runs on
caches the rest of the machine had meanwhile, and costs about 1 µs more than back to back
(``benchmarks.ring_calls``). This takes that paced call apart. One live run with rings (rank 0 and its
aggregator), 50 steps a second; each step logs a 100-key dict, then makes 10 timed scalar calls of one
variant, the variants taking the steps in turn:

* ``run.log``: ``run.log({key: x}, step=s)``, the whole call;
* ``row``: what that call does inside the buffer's lock, ``RingLog.row`` under it (each must go into the
  ring: the benchmark raises otherwise);
* ``noop``: a Python function of ``log()``'s shape that does nothing (the floor of a paced call here).

The 10 calls name 10 keys (10 frames of the ring), as the suite's load does; ``--same-key`` makes them one
key, so that what is left between the two is what a frame untouched since the last step costs.
Afterwards every point of the ``run.log`` and ``row`` steps and of the dicts must be acknowledged.

    python -m benchmarks.cold_calls [--steps 600] [--repeats 2] [--same-key]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import coordinator
from benchmarks.common import med, rings_on

__all__ = ["Paced", "main", "measure"]

VARIANTS = ("run.log", "row", "noop")
_DICT_KEYS = [f"train/metric{i:03d}" for i in range(100)]
_SCALARS = [f"train/scalar_log{i}" for i in range(10)]
_PERIOD_NS = 20_000_000  # 50 steps a second


@dataclass(frozen=True)
class Paced:
    """One repeat: per variant, the p50, p90 and p99 of its calls in µs, and how many were timed."""

    quantiles: dict[str, tuple[float, float, float]]
    calls: int


def _quantiles(samples: array[int]) -> tuple[float, float, float]:
    v = sorted(samples)
    n = len(v)
    return v[n // 2] / 1e3, v[int(n * 0.9)] / 1e3, v[int(n * 0.99)] / 1e3


def measure(steps: int, store: Path, same_key: bool = False) -> Paced:
    """One run of ``steps`` timed steps (after 100 untimed ones); raises unless every point was acknowledged."""
    settings = coordinator.Settings(dir=str(store), rings=True, system_metrics_interval_s=0)
    with rings_on():  # CI's socket step sets COORDINATOR_RINGS=0: this takes the ring apart all the same
        run = coordinator.init_run(project="cold", name="calls", settings=settings)
    ring = run._ring
    if ring is None:
        run.stop()
        raise RuntimeError("the run took no ring: nothing to take apart")
    lock = run._buf.lock
    missed = 0

    def row(d: dict[str, Any], step: int) -> None:
        nonlocal missed
        with lock:
            missed += not ring.row(d, step)

    def noop(d: dict[str, Any], step: int | None = None) -> None:
        return None

    def log(d: dict[str, Any], step: int) -> None:
        run.log(d, step=step)

    calls: dict[str, Callable[[dict[str, Any], int], None]] = {"run.log": log, "row": row, "noop": noop}
    out = {v: array("q") for v in VARIANTS}
    expected = 0
    pc = time.perf_counter_ns
    try:
        t_next = pc()
        for s in range(100 + steps):
            variant = VARIANTS[s % len(VARIANTS)]
            run.log(dict(zip(_DICT_KEYS, [s + i * 1e-3 for i in range(100)], strict=True)), step=s)
            expected += len(_DICT_KEYS) + (len(_SCALARS) if variant != "noop" else 0)
            call, o = calls[variant], out[variant]
            for j, key in enumerate(_SCALARS):
                d = {_SCALARS[0] if same_key else key: s * 0.25}
                t0 = pc()
                call(d, s * len(_SCALARS) + j)  # a new step of its key: one point each
                t1 = pc()
                if s >= 100:
                    o.append(t1 - t0)
            t_next += _PERIOD_NS
            delay = t_next - pc()
            if delay > 0:
                time.sleep(delay / 1e9)
        run.wait(60)
        st = run.stats()
    finally:
        run.stop()
    if missed:
        raise RuntimeError(f"{missed} ring rows were refused: their points were not stored")
    if st["acked"] != expected or st["lost"] or st["pending"] or st.get("dropped"):
        raise RuntimeError(f"expected {expected} points acknowledged, none lost: {st}")
    return Paced({v: _quantiles(out[v]) for v in VARIANTS}, sum(len(o) for o in out.values()))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--steps", type=int, default=600, help="timed steps a repeat (a third of them each variant's)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--same-key", action="store_true", help="the 10 scalar calls of a step name one key")
    args = ap.parse_args(argv)
    runs = []
    with tempfile.TemporaryDirectory(prefix="cold-calls-") as tmp:
        for r in range(args.repeats):
            p = measure(args.steps, Path(tmp) / str(r), args.same_key)
            runs.append(p)
            print(
                f"repeat {r + 1}: "
                + ", ".join(f"{v} p50 {q[0]:.2f} / p90 {q[1]:.2f} / p99 {q[2]:.2f} µs" for v, q in p.quantiles.items())
            )
    keys = "one key" if args.same_key else f"{len(_SCALARS)} keys"
    print(
        f"paced scalar calls ({keys}), median of {args.repeats} p50s: "
        + ", ".join(f"{v} {med([p.quantiles[v][0] for p in runs]):.2f} µs" for v in VARIANTS)
    )


if __name__ == "__main__":
    main()
