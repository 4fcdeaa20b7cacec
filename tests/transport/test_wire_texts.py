"""Text chunks on the wire: round trip, and every malformed one refused (nothing of the batch used)."""

from __future__ import annotations

from array import array

import msgpack
import pytest

from coordinator.errors import ProtocolError
from coordinator.transport import wire


def test_texts_round_trip_with_metrics_and_count_as_points() -> None:
    frame = wire.encode_batch(
        [("loss", array("q", [1]), array("d", [0.5]))], [], 2.0, [("gen", array("q", [3, 4]), ["a", "ü ✓"])]
    )
    b = wire.decode_batch(frame)
    assert b.texts == [("gen", array("q", [3, 4]), ["a", "ü ✓"])] and b.points == 3
    assert wire.decode_batch(wire.encode_batch([], [], 1.0)).texts == []


@pytest.mark.parametrize(
    "x",
    [
        "not a list",
        [["gen", b"\0" * 8]],
        [[1, b"\0" * 8, ["a"]]],
        [["gen", b"\0" * 8, "a"]],
        [["gen", b"\0" * 16, ["a"]]],
        [["gen", b"", []]],
        [["gen", b"\0" * 8, [1]]],
        [["gen", b"\0" * 8, ["x" * (64 * 1024 + 1)]]],
        [["gen", b"\xff" * 8, ["a"]]],
        [["../bad", b"\0" * 8, ["a"]]],
    ],
)
def test_malformed_text_chunks_are_refused(x: object) -> None:
    frame = msgpack.packb({"m": [], "f": [], "t": 1.0, "x": x}, use_bin_type=True)
    with pytest.raises(ProtocolError):
        wire.decode_batch(frame)
