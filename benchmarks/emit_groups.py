"""A training loop's key groups emitted and summarised, one by one and together, in process; every result checked.

The suite's realistic step (a dict, then scalars logged alone) gives the aggregator one key group
per scalar key: each of the rank's frames arrives as its own block. At each ring read (once a
second in the paced job) every group is emitted and its main-series points summarised for their
chunk rows. This times both for ``--groups`` one-key groups and one ``--wide``-key group, fed by
``--ranks`` ranks in step with ``--steps`` steps each round:

* ``emit``: each group's own :meth:`~coordinator.aggregator.blocks.KeyGroup.emit` (``alone``)
  against :func:`~coordinator.aggregator.fused.emit_groups` (``together``);
* ``rows``: the emitted blocks' chunk-row parameters, each block summarised on its own (``alone``)
  against :func:`~coordinator.journal.blockrows.shared_summaries` first (``together``).

Rounds alternate the two ways and, with ``--cold``, touch 32 MiB between rounds (the aggregator's
once-a-second work runs on caches the training processes had). Every round's blocks and rows are
compared, value for value: a difference fails the run.

    python -m benchmarks.emit_groups [--groups 20] [--wide 100] [--ranks 4] [--steps 50] [--rounds 200] [--cold]
"""

from __future__ import annotations

import argparse
import statistics
import time
from array import array
from typing import Any

import numpy as np

from coordinator.aggregator.blocks import EmittedBlock, KeyGroup
from coordinator.aggregator.fused import emit_groups
from coordinator.journal.blockrows import block_params, shared_summaries
from coordinator.journal.records import StagedBlock

__all__ = ["main", "measure"]


def _groups(n_one: int, wide: int, ranks: int) -> list[KeyGroup]:
    out = [KeyGroup((f"scalar{i}",), ("mean",), ranks, 0.0) for i in range(n_one)]
    if wide:
        out.append(KeyGroup(tuple(f"dict/k{i}" for i in range(wide)), ("mean",) * wide, ranks, 0.0))
    return out


def _feed(groups: list[KeyGroup], ranks: int, step0: int, steps: int, rng: np.random.Generator) -> None:
    run = array("q", range(step0, step0 + steps))
    for g in groups:
        for r in range(ranks):
            g.add(r, run, rng.normal(size=(len(g.keys), steps)), 1.0)


def _rows(blocks: list[EmittedBlock], together: bool) -> list[tuple[Any, ...]]:
    staged = [StagedBlock(b.keys, -1, 0, 0, 1.0, b.steps, b.values, b.counts) for b in blocks]
    known = shared_summaries(staged) if together else {}
    return [r for b in staged for r in block_params(b, len, known.get(id(b)))]  # any int per key will do


def _comparable(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return [tuple(bytes(x) if isinstance(x, memoryview) else x for x in r) for r in rows]


def measure(
    n_one: int, wide: int, ranks: int, steps: int, rounds: int, cold: bool, seed: int = 0
) -> dict[str, dict[str, list[float]]]:
    """µs per round of each part (``emit``, ``rows``) and way (``alone``, ``together``); checks every round."""
    rng = np.random.default_rng(seed)
    ways = {"alone": _groups(n_one, wide, ranks), "together": _groups(n_one, wide, ranks)}
    times: dict[str, dict[str, list[float]]] = {p: {w: [] for w in ways} for p in ("emit", "rows")}
    junk = np.zeros(4 << 20)
    world = frozenset(range(ranks))
    for i in range(rounds):
        seed_i = int(rng.integers(1 << 31))
        got: dict[str, tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]] = {}
        for way in ways if i % 2 == 0 else list(ways)[::-1]:
            groups = ways[way]
            _feed(groups, ranks, i * steps, steps, np.random.default_rng(seed_i))
            if cold:
                junk += 1.0
            t0 = time.perf_counter_ns()
            if way == "together":
                blocks = emit_groups(groups, 2.0, set(), world, 10.0, False)
            else:
                blocks = [b for g in groups if (b := g.emit(2.0, set(), world, 10.0, False)) is not None]
            t1 = time.perf_counter_ns()
            rows = _rows(blocks, way == "together")
            t2 = time.perf_counter_ns()
            times["emit"][way].append((t1 - t0) / 1e3)
            times["rows"][way].append((t2 - t1) / 1e3)
            got[way] = (sorted((b.keys, b.values.tobytes(), b.counts.tobytes()) for b in blocks), _comparable(rows))
        assert got["alone"] == got["together"], f"round {i}: the groups emitted together differ from one by one"
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="benchmarks.emit_groups", description=__doc__.splitlines()[0])
    ap.add_argument("--groups", type=int, default=20, help="one-key groups (default 20)")
    ap.add_argument("--wide", type=int, default=100, help="keys of the one wide group, 0 for none (default 100)")
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--steps", type=int, default=50, help="steps per round (default 50: a second at 50 steps/s)")
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--cold", action="store_true", help="touch 32 MiB before each timed round")
    args = ap.parse_args(argv)
    t = measure(args.groups, args.wide, args.ranks, args.steps, args.rounds, args.cold)
    print(
        f"{args.groups} one-key groups{f' and a {args.wide}-key group' if args.wide else ''}, {args.ranks} ranks, "
        f"{args.steps} steps a round, "
        f"{args.rounds} rounds{', cold' if args.cold else ''}; µs a round, median (p90):"
    )
    for part, by_way in t.items():
        cells = [f"{w} {statistics.median(v[10:]):,.0f} ({np.percentile(v[10:], 90):,.0f})" for w, v in by_way.items()]
        print(f"  {part}: " + ", ".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
