"""The aggregator's rank-health snapshot at many ranks, in process.

Once a second the aggregator computes every rank's lag behind the median rank
(``aggregator/health.py``, ``Health.snapshot``) and publishes it as ``sys/ranks/<r>/*`` fields. At
1024 simulated senders (goal 5's load) that took ~9% of the aggregator's CPU in a py-spy recording.
This builds the state such a run keeps (``--ranks`` ranks, 600 steps at 20 steps/s, the last
three steps reached by about half of the ranks, the others stopped three steps behind), times
``snapshot`` (``time.perf_counter``, hot) and checks it: every rank is there, the ranks behind say
so and lag, the others do not.

    python -m benchmarks.health_snapshot [--ranks 1024] [--repeats 20]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from coordinator.aggregator.health import Health

__all__ = ["build", "main", "measure"]

_STEPS = 600


def build(n_ranks: int, seed: int = 1) -> tuple[Health, set[int]]:
    """A Health of ``n_ranks`` ranks after ``_STEPS`` steps; returns it and the ranks left three steps behind."""
    h = Health(n_ranks, 1.0)
    rnd = random.Random(seed)
    behind: set[int] = set()
    for s in range(_STEPS):
        t = s * 0.05
        for r in range(n_ranks):
            if s >= _STEPS - 3 and r in behind:
                continue
            if s == _STEPS - 3 and r and rnd.random() < 0.5:  # rank 0 always reaches the last step
                behind.add(r)
                continue
            h.progress(r, s, t + rnd.random() * 0.01)
    return h, behind


def measure(n_ranks: int, repeats: int) -> list[float]:
    """Seconds per snapshot, one per repeat; every snapshot checked."""
    h, behind = build(n_ranks)
    ranks = set(range(n_ranks))
    out: list[float] = []
    for i in range(repeats):
        now = _STEPS * 0.05 + 5.0 + i
        t0 = time.perf_counter()
        snap = h.snapshot(now, ranks)
        out.append(time.perf_counter() - t0)
        if set(snap) != ranks:
            raise AssertionError("the snapshot lacks ranks")
        for r, v in snap.items():
            if (v["lag_steps"] > 0) != (r in behind) or (r in behind and not v["lag_s"] > 0):
                raise AssertionError(f"rank {r}: {v} (behind: {r in behind})")
    return out


def main() -> None:
    """Run and print the median."""
    ap = argparse.ArgumentParser(prog="benchmarks.health_snapshot", description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    t = measure(args.ranks, args.repeats)
    print(
        f"Health.snapshot at {args.ranks} ranks: median {statistics.median(t) * 1e3:.1f} ms, "
        f"min {min(t) * 1e3:.1f} ms ({args.repeats} repeats)"
    )


if __name__ == "__main__":
    main()
