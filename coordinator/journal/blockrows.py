"""Chunk-row parameters of a block (keys sharing their steps), one row per key, summarised at once.

A materialization writes a rank's held block of K keys as K chunk rows, and a write of the held
main series a key group's emitted points as K rows (with their contributor counts). Split key by
key, each row cost a copy of the steps, a copy of its values and a
:func:`~coordinator.journal.summary.summarize` pass (about 40% of a paced aggregator's
materialization, then once a second). The keys of a block share
their steps, so the steps' summary (range, first, last, order) and blob are computed once, and the
values' first, last, smallest and largest are taken for every key at once with numpy. The rows are
exactly what per-key chunk rows would be (tests/journal/test_blockrows.py checks them against
``summarize``, NaN and signed zeros included).

Blocks of a few keys each (a training loop's scalars logged alone: a block per key, per rank and per
emission) would still pay that fixed count of numpy calls each, ~17 µs a one-key block where a
20-key block costs 26 µs in all; :func:`shared_summaries` summarises the small blocks of one
commit that share their steps together (docs/performance.md, round 60).
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from coordinator.core.columns import to_le
from coordinator.journal.records import StagedBlock
from coordinator.journal.stepblobs import encode_steps
from coordinator.journal.summary import Summary, first_zeros, step_order, summarize

__all__ = ["SMALL_BLOCK_KEYS", "block_params", "block_summaries", "shared_summaries"]

SMALL_BLOCK_KEYS = 8
"""Blocks of at most this many keys are summarised together when they share their steps (:func:`shared_summaries`)."""

_SHARED_VALUES = 1 << 16
"""The most values summarised in one call (the stacked copy they need stays small)."""

Known = tuple[list[Summary], Any]
"""A block's summaries, one per key, and its steps blob, as :func:`shared_summaries` found them."""


def _nums(a: np.ndarray[Any, np.dtype[np.float64]]) -> list[float | None]:
    """Python floats, NaN as None (SQLite stores NaN as NULL; say so explicitly)."""
    return [None if math.isnan(v) else v for v in a.tolist()]


def block_summaries(b: StagedBlock) -> list[Summary]:
    """The summary of each key's chunk of ``b``, as :func:`summarize` gives it for that key's steps and values."""
    steps = b.steps
    n = len(steps)
    v = np.ascontiguousarray(b.values, dtype=np.float64)
    if n == 0:
        return [summarize(steps, array("d")) for _ in b.keys]
    ordered, lo, hi = step_order(steps)
    # fmin/fmax skip NaN (NaN only where a whole row is NaN), as summarize's NaN rule does.
    vmin, vmax = np.fmin.reduce(v, axis=1), np.fmax.reduce(v, axis=1)
    zmin, zmax = vmin == 0.0, vmax == 0.0
    if zmin.any() or zmax.any():  # 0.0 or -0.0: min()/max() keep the row's first zero
        rows = np.flatnonzero(zmin | zmax)
        zeros = np.zeros(len(v))
        zeros[rows] = first_zeros(v[rows])
        vmin, vmax = np.where(zmin, zeros, vmin), np.where(zmax, zeros, vmax)
    first, last = _nums(v[:, 0]), _nums(v[:, -1])
    mins, maxs = _nums(vmin), _nums(vmax)
    return [
        (lo, hi, steps[0], steps[-1], f, la, mn, mx, int(ordered))
        for f, la, mn, mx in zip(first, last, mins, maxs, strict=True)
    ]


def shared_summaries(blocks: Iterable[StagedBlock]) -> dict[int, Known]:
    """The summaries and steps blob of each small block (:data:`SMALL_BLOCK_KEYS`) among ``blocks`` that shares
    its steps with another, by ``id(block)``: one :func:`block_summaries` call for all of them."""
    same: dict[bytes, list[StagedBlock]] = {}
    for b in blocks:
        if 0 < len(b.keys) <= SMALL_BLOCK_KEYS and len(b.steps):
            same.setdefault(b.steps.tobytes(), []).append(b)
    known: dict[int, Known] = {}
    for bl in same.values():
        if len(bl) < 2:
            continue  # a lone block is summarised on its own, by block_params
        per_call = max(1, _SHARED_VALUES // (SMALL_BLOCK_KEYS * len(bl[0].steps)))
        for i in range(0, len(bl), per_call):
            part = bl[i : i + per_call]
            keys = tuple(k for b in part for k in b.keys)
            values = np.concatenate([b.values for b in part], axis=0)
            sums = block_summaries(StagedBlock(keys, 0, 0, 0, 0.0, part[0].steps, values))
            sb = encode_steps(part[0].steps, sums[0])
            at = 0
            for b in part:
                known[id(b)] = (sums[at : at + len(b.keys)], sb)
                at += len(b.keys)
    return known


def block_params(b: StagedBlock, key_id: Callable[[str], int], known: Known | None = None) -> list[tuple[Any, ...]]:
    """The ``chunks`` insert parameters of ``b``: one row per key (its steps blob shared), summaries included
    (``known``: as :func:`shared_summaries` gave them)."""
    n = len(b.steps)
    if known is not None:
        sums, sb = known
    else:
        sums = block_summaries(b)
        sb = encode_steps(b.steps, sums[0]) if sums else to_le(b.steps)
    vb = np.ascontiguousarray(b.values, dtype="<f8").data.cast("B")  # each key's row a slice of it, no copy
    cb = None if b.counts is None else to_le(b.counts)
    w = 8 * n
    return [
        (key_id(k), b.rank, b.incarnation, b.seq, n, b.ts, sb, vb[i * w : (i + 1) * w], cb, *s)
        for i, (k, s) in enumerate(zip(b.keys, sums, strict=True))
    ]
