"""Stores the UI tests read, written by the journal's own writer (``LocalStore.commit``) as the aggregator writes."""

from __future__ import annotations

import math
import random
import time
from array import array
from pathlib import Path

import numpy as np

from coordinator.journal.store import MAIN_RANK, ChunkRow, LocalStore, TextRow, TxnData, run_dir
from coordinator.journal.texts import TEXT_POLICY

TEXT_KEY = "samples/generation"
"""The text series every rank of :func:`write_run` logs: ``text(rank, step)`` at steps 0, 10, ..., 290."""

RESTART_TEXT_STEP = 200
"""Rank 1's second incarnation logs the text series again from this step (its earlier texts there are replaced)."""


def text(rank: int, step: int, incarnation: int = 1) -> str:
    """What ``rank`` logs as its text at ``step`` (markup in it: the page must show it as text)."""
    return f"<b>rank {rank}</b> step {step} & inc {incarnation}"


def rank_value(rank: int, step: int) -> float:
    """Rank ``rank``'s value at ``step`` (ranks apart, so the band is wide)."""
    return rank * 10.0 + math.sin(step / 7.0)


def write_run(
    root: Path,
    run_id: str,
    *,
    project: str = "proj",
    name: str = "ranked",
    ranks: int = 3,
    steps: int = 1000,
    seed: int = 1,
    state: str | None = "finished",
    tags: list[str] | None = None,
    lr: float = 0.1,
) -> None:
    """A run of ``ranks`` ranks logging ``loss`` (chunks of random sizes, a rewound chunk, NaN points),
    ``system/cpu/util`` per rank, a text series per rank (:data:`TEXT_KEY`; rank 1 restarts it), fields,
    senders, events and a report."""
    rng = random.Random(seed)
    s = LocalStore(run_dir(root, run_id) / "run.db")
    try:
        t0 = time.time() - 100
        s.create_run(run_id, project, name, ranks, t0)
        txn = TxnData(key_policies={"loss": "mean", "system/cpu/util": "per_rank", TEXT_KEY: TEXT_POLICY})
        for r in range(ranks):
            a, seq = 0, 0
            while a < steps:
                n = rng.randint(1, 60)
                st = array("q", range(a, min(steps, a + n)))
                vals = array("d", [math.nan if x % 97 == 13 else rank_value(r, x) for x in st])
                seq += 1
                txn.chunks.append(ChunkRow("loss", r, 1, seq, t0 + a / 100, st, vals))
                a += n
            # a rewound chunk: steps already logged, logged again later (the later value wins)
            st = array("q", range(steps // 2, steps // 2 + 30))
            txn.chunks.append(
                ChunkRow("loss", r, 1, seq + 1, t0 + 50, st, array("d", [rank_value(r, x) + 0.5 for x in st]))
            )
            cpu = array("q", range(0, steps, 10))
            txn.chunks.append(ChunkRow("system/cpu/util", r, 1, seq + 2, t0, cpu, array("d", [50.0 + r] * len(cpu))))
            txn.senders[(r, 1)] = (seq + 2, steps, seq + 2, t0, t0 + 90, "closed", 1000 + r, "host")
            t_steps = list(range(0, 300, 10))
            txn.texts.append(TextRow(TEXT_KEY, r, 1, t0 + 1, t_steps, [text(r, x) for x in t_steps]))
            if r == 1:  # a restart that logs the texts again from RESTART_TEXT_STEP
                again = list(range(RESTART_TEXT_STEP, 260, 10))
                txn.texts.append(TextRow(TEXT_KEY, r, 2, t0 + 60, again, [text(r, x, 2) for x in again]))
        for a in range(0, steps, 100):
            st = array("q", range(a, min(steps, a + 100)))
            vals = array("d", [sum(rank_value(r, x) for r in range(ranks)) / ranks for x in st])
            txn.chunks.append(ChunkRow("loss", MAIN_RANK, 0, 0, t0 + a / 100, st, vals, array("i", [ranks]) * len(st)))
        txn.fields += [
            ("parameters/lr", ("float", lr), 0, t0),
            ("sys/tags", ("list", tags or []), -1, t0),
        ]
        txn.events += [
            (t0 + 1, "rank_joined", 0, "incarnation 1"),
            (t0 + 40, "straggler", ranks - 1, "rank lags 12 s behind"),
        ]
        s.commit(txn)
        if state is not None:
            s.finish_run(state, {"points": steps * ranks, "anomalies": {}}, ended=t0 + 95)
    finally:
        s.close()


def brute(
    steps: list[int], values: list[float], lo: int, hi: int, width: int
) -> dict[int, tuple[int, float, float, float, float]]:
    """bucket index -> (n, min, max, first, last), computed point by point (NaN ignored in min/max)."""
    out: dict[int, list[float]] = {}
    for s, v in zip(steps, values, strict=True):
        if lo <= s <= hi:
            b = (s - lo) // width
            real = [] if math.isnan(v) else [v]
            if b not in out:
                out[b] = [1, min(real, default=math.nan), max(real, default=math.nan), v, v]
            else:
                e = out[b]
                e[0] += 1
                e[1] = float(np.fmin(e[1], v))
                e[2] = float(np.fmax(e[2], v))
                e[4] = v
    return {b: (int(e[0]), e[1], e[2], e[3], e[4]) for b, e in out.items()}
