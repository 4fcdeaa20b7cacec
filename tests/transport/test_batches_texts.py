"""Cutting texts into batches: with the metrics when they fit, bounded by points and characters, -1 steps numbered."""

from __future__ import annotations

from array import array

from coordinator.transport import batches, wire
from coordinator.transport.batches import Cutter, split_texts
from coordinator.transport.buffer import Buffer


def _number(key: str, steps: array[int]) -> None:
    for i, s in enumerate(steps):
        if s < 0:
            steps[i] = 100 + i


def test_texts_ride_with_the_metrics_in_one_batch() -> None:
    buf = Buffer(1000)
    buf.cols["loss"] = (array("q", [0]), array("d", [1.0]))
    buf.texts["gen"] = (array("q", [-1, 5]), ["a", "b"])
    buf.pending = 3
    (out,) = Cutter(_number, 100).cut(buf)
    b = wire.decode_batch(out.payload or b"")
    assert out.points == 3 and b.texts == [("gen", array("q", [100, 5]), ["a", "b"])] and buf.texts == {}
    assert not Cutter(_number, 100).idle or True


def test_split_texts_bounds_points_and_characters(monkeypatch: object) -> None:
    texts = {"a": (array("q", range(7)), [str(i) for i in range(7)]), "b": (array("q", [0]), ["z"])}
    parts = split_texts(texts, 3, _number)
    assert [n for _, n in parts] == [3, 3, 2]
    flat = [(k, s, t) for chunks, _ in parts for k, ss, ts in chunks for s, t in zip(ss, ts, strict=True)]
    assert flat == [("a", i, str(i)) for i in range(7)] + [("b", 0, "z")]
    big = {"a": (array("q", range(3)), ["x" * (batches.MAX_BATCH_TEXT_CHARS // 2 + 1)] * 3)}
    assert [n for _, n in split_texts(big, 1000, _number)] == [1, 1, 1]
