"""A block's chunk rows, summarised at once: the same rows as per-key chunks, NaN and signed zeros included."""

from __future__ import annotations

import math
from array import array
from pathlib import Path

import numpy as np
import pytest

from coordinator.journal.blockrows import SMALL_BLOCK_KEYS, block_params, block_summaries, shared_summaries
from coordinator.journal.records import ChunkRow, StagedBlock
from coordinator.journal.store import LocalStore, TxnData
from coordinator.journal.summary import summarize, summarize_small

NAN = math.nan


def _block(rows: list[list[float]], steps: list[int]) -> StagedBlock:
    keys = tuple(f"k{i}" for i in range(len(rows)))
    return StagedBlock(keys, 2, 3, 7, 1.5, array("q", steps), np.array(rows, dtype=np.float64))


def _same(a: object, b: object) -> bool:
    """Equal, NaN equal to NaN, and -0.0 told from 0.0."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    return a == b and type(a) is type(b)


@pytest.mark.parametrize(
    ("rows", "steps"),
    [
        ([[1.0, 2.0, 3.0], [3.0, -1.0, 2.0]], [4, 5, 6]),
        ([[NAN, 2.0, 1.0], [NAN, NAN, NAN], [1.0, NAN, -4.0]], [0, 1, 2]),
        ([[0.0, -0.0], [-0.0, 0.0], [-0.0, 1.0], [0.0, -1.0]], [3, 9]),
        ([[math.inf, -math.inf], [5.0, 5.0]], [2, 2]),
        ([[1.0, 2.0, 3.0], [6.0, 5.0, 4.0]], [9, 3, 5]),
        ([[7.0], [NAN]], [11]),
    ],
)
def test_block_summaries_are_what_summarize_gives_each_key(rows: list[list[float]], steps: list[int]) -> None:
    b = _block(rows, steps)
    got = block_summaries(b)
    want = [summarize(array("q", steps), array("d", r)) for r in rows]
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert all(_same(x, y) for x, y in zip(g, w, strict=True)), (g, w)


def test_random_blocks_match_summarize() -> None:
    rng = np.random.default_rng(5)
    for _ in range(50):
        k, n = int(rng.integers(1, 6)), int(rng.integers(1, 8))
        v = rng.choice([0.0, -0.0, 1.0, -2.5, NAN, math.inf], size=(k, n))
        steps = sorted(rng.integers(0, 20, size=n).tolist()) if rng.random() < 0.7 else rng.integers(0, 20, n).tolist()
        b = _block(v.tolist(), steps)
        for g, r in zip(block_summaries(b), v.tolist(), strict=True):
            w = summarize(array("q", steps), array("d", r))
            assert all(_same(x, y) for x, y in zip(g, w, strict=True)), (g, w)


def test_block_params_are_one_row_per_key_with_its_values(tmp_path: Path) -> None:
    b = _block([[1.0, 2.0], [3.0, 4.0]], [5, 6])
    ids = {"k0": 10, "k1": 11}
    p = block_params(b, ids.__getitem__)
    assert [r[:6] for r in p] == [(10, 2, 3, 7, 2, 1.5), (11, 2, 3, 7, 2, 1.5)]
    assert [bytes(r[7]) for r in p] == [array("d", [1.0, 2.0]).tobytes(), array("d", [3.0, 4.0]).tobytes()]
    assert all(bytes(r[6]) == array("q", [5, 6]).tobytes() and r[8] is None for r in p)


def test_a_block_and_its_per_key_chunks_store_the_same_rows(tmp_path: Path) -> None:
    """The store writes rank rows (blocks and chunks) in order, before the main-series chunks."""
    cols = "rank, incarnation, seq, n, ts, steps, vals, counts, step_min, step_max, v_min, v_max, ordered"
    b = _block([[1.0, NAN, 3.0], [-0.0, 0.0, 2.0]], [7, 8, 9])
    chunks = [
        ChunkRow(k, b.rank, b.incarnation, b.seq, b.ts, array("q", b.steps), array("d", row.tobytes()))
        for k, row in zip(b.keys, b.values, strict=True)
    ]
    got = []
    for name, txn in (
        ("blocks", TxnData(rank_rows=[b, chunks[0]], chunks=[chunks[1]])),
        ("chunks", TxnData(chunks=[*chunks, *chunks])),
    ):
        s = LocalStore(tmp_path / name / "run.db")
        s.create_run("r", "p", "n", 3, 1.0)
        txn.key_policies = {"k0": "mean", "k1": "mean"}
        s.commit(txn)
        sql = f"SELECT k.key, {cols} FROM chunks c JOIN keys k ON k.id = c.key_id ORDER BY c.id"  # constant columns
        got.append(
            [tuple(bytes(x) if isinstance(x, (bytes, memoryview)) else x for x in r) for r in s._db.execute(sql)]
        )
        s.close()
    assert len(got[0]) == 4 and got[0] == got[1], "rank rows first, in order, then the other chunks"


def test_long_blocks_with_zeros_match_the_definition() -> None:
    """Rows of 64+ points, zeros of both signs, NaN and infinities: each row's summary is summarize_small's."""
    rng = np.random.default_rng(11)
    for _ in range(40):
        k, n = int(rng.integers(1, 12)), int(rng.integers(64, 400))
        v = rng.choice([0.0, -0.0, 1.0, -2.5, NAN, math.inf, -math.inf, 3e-310], size=(k, n))
        if rng.random() < 0.5:  # mostly ordinary values, a zero somewhere
            v = np.where(rng.random((k, n)) < 0.95, rng.uniform(0.0, 9.0, (k, n)), v)
        steps = list(range(n)) if rng.random() < 0.7 else rng.integers(-30, 30, n).tolist()
        b = _block(v.tolist(), steps)
        for g, r in zip(block_summaries(b), v.tolist(), strict=True):
            w = summarize_small(array("q", steps), array("d", r))
            assert all(_same(x, y) for x, y in zip(g, w, strict=True)), (g, w)


def _bytes_row(row: tuple[object, ...]) -> tuple[object, ...]:
    return tuple(bytes(x) if isinstance(x, memoryview) else x for x in row)


def test_small_blocks_sharing_steps_are_summarised_together_with_the_same_rows() -> None:
    """Blocks of 1-8 keys (some sharing their steps, some not, NaN, zeros of both signs, unordered steps)
    and wider ones: the rows from shared summaries are, row by row and byte for byte, each block's own;
    the small blocks that share steps get them, the wide ones and the lone ones do not."""
    rng = np.random.default_rng(17)
    for _ in range(40):
        runs = [sorted(rng.integers(0, 99, size=int(rng.integers(1, 60))).tolist()) for _ in range(3)]
        runs.append(rng.integers(0, 99, size=5).tolist())  # not increasing
        blocks = []
        for _ in range(int(rng.integers(2, 30))):
            k = int(rng.choice([1, 1, 2, 8, 9, 30]))
            steps = runs[int(rng.integers(0, len(runs)))]
            v = rng.choice([0.0, -0.0, 1.5, -2.0, NAN, math.inf, 3.25], size=(k, len(steps)))
            blocks.append(StagedBlock(tuple(f"k{i}" for i in range(k)), 1, 0, 0, 1.0, array("q", steps), v))
        ids = {f"k{i}": i for i in range(30)}.__getitem__
        known = shared_summaries(blocks)
        for b in blocks:
            small = len(b.keys) <= SMALL_BLOCK_KEYS
            shares = sum(1 for o in blocks if len(o.keys) <= SMALL_BLOCK_KEYS and o.steps == b.steps) > 1
            assert (id(b) in known) == (small and shares)
            got = [_bytes_row(r) for r in block_params(b, ids, known.get(id(b)))]
            want = [_bytes_row(r) for r in block_params(b, ids)]
            assert len(got) == len(want)
            for g, w in zip(got, want, strict=True):
                assert all(_same(x, y) for x, y in zip(g, w, strict=True)), (g, w)


def test_many_small_blocks_are_summarised_in_bounded_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ten thousand one-key blocks of 50 shared steps: summarised in calls of at most 65,536 values each
    (the stacked copy stays small), every block's summaries found."""
    from coordinator.journal import blockrows

    sizes: list[int] = []
    real = blockrows.block_summaries

    def counting(b: StagedBlock) -> list[tuple[object, ...]]:
        sizes.append(b.values.size)
        return real(b)

    monkeypatch.setattr(blockrows, "block_summaries", counting)
    steps = array("q", range(50))
    blocks = [StagedBlock((f"k{i}",), 0, 0, 0, 0.0, steps, np.full((1, 50), float(i))) for i in range(10_000)]
    known = blockrows.shared_summaries(blocks)
    assert len(known) == 10_000 and max(sizes) <= 65_536 and sum(sizes) == 500_000
    assert [known[id(b)][0][0][4] for b in blocks[:3]] == [0.0, 1.0, 2.0]  # each key's first value
