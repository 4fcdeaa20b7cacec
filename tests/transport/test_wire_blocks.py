"""Wire format, blocks (``"b"``, protocol 3): round trips in both decode modes, malformed blocks, older payloads."""

from __future__ import annotations

import struct
from array import array
from typing import Any

import msgpack
import numpy as np
import pytest

from coordinator.errors import ProtocolError
from coordinator.transport import wire
from tests.transport.test_frames import frame


def pack(obj: object) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def raw_block(keys: object, steps: list[int], values: list[float]) -> list[Any]:
    """One raw ``[keys, LE steps, LE values (step-major)]`` block."""
    return [keys, struct.pack(f"<{len(steps)}q", *steps), struct.pack(f"<{len(values)}d", *values)]


def batch_with(b: object, m: object = None) -> bytes:
    return pack({"m": [] if m is None else m, "f": [], "t": 1.5, "b": b})


def test_a_block_decodes_as_one_keys_by_steps_block_or_per_key_with_the_same_points() -> None:
    f = frame(("a", "b", "c"), [(4, [1.0, 2.0, 3.0]), (5, [4.0, 5.0, 6.0])])
    payload = wire.encode_chunks([], [("p", ("int", 1))], 2.5, None, [f.block()])
    blk = wire.decode_batch(payload, blocks=True)
    assert blk.metrics == [] and blk.points == 6 and blk.fields == [("p", ("int", 1))]
    [b] = blk.blocks
    assert b.keys == ("a", "b", "c") and list(b.steps) == [4, 5]
    assert b.values.tolist() == [[1.0, 4.0], [2.0, 5.0], [3.0, 6.0]]  # keys x steps
    assert b.values.flags["C_CONTIGUOUS"] and b.values.dtype == np.float64
    per_key = wire.decode_batch(payload, blocks=False)
    assert per_key.blocks == [] and per_key.points == 6
    assert [(k, list(s), list(v)) for k, s, v in per_key.metrics] == [
        ("a", [4, 5], [1.0, 4.0]),
        ("b", [4, 5], [2.0, 5.0]),
        ("c", [4, 5], [3.0, 6.0]),
    ]


def test_blocks_ride_with_chunks_and_texts_and_count_in_points() -> None:
    f = frame(("x", "y"), [(0, [0.5, 1.5])])
    payload = wire.encode_chunks(
        [["k", struct.pack("<q", 9), struct.pack("<d", 9.5)]], [], 1.0, [("t", array("q", [3]), ["hi"])], [f.block()]
    )
    b = wire.decode_batch(payload, blocks=True)
    assert b.points == 1 + 2 + 1
    assert [k for k, _, _ in b.metrics] == ["k"] and b.blocks[0].keys == ("x", "y") and b.texts[0][0] == "t"


def test_a_rows_slice_of_a_frame_is_a_block_of_those_rows() -> None:
    f = frame(("a", "b"), [(s, [float(s), -float(s)]) for s in range(5)])
    b = wire.decode_batch(wire.encode_chunks([], [], 0.0, None, [f.block(1, 3)]), blocks=False)
    assert [(k, list(s), list(v)) for k, s, v in b.metrics] == [("a", [1, 2], [1.0, 2.0]), ("b", [1, 2], [-1.0, -2.0])]


def test_a_one_key_block_is_handed_over_per_key() -> None:
    b = wire.decode_batch(batch_with([raw_block(["solo"], [1, 2], [3.0, 4.0])]), blocks=True)
    assert b.blocks == [] and [(k, list(s), list(v)) for k, s, v in b.metrics] == [("solo", [1, 2], [3.0, 4.0])]


def test_block_keys_are_added_to_the_checked_set_only_when_the_batch_decodes() -> None:
    checked: set[str] = set()
    with pytest.raises(ProtocolError):
        wire.decode_batch(
            batch_with([raw_block(["a", "b"], [0], [1.0, 2.0]), raw_block(["c", "d"], [-1], [0, 0])]), checked
        )
    assert checked == set()
    wire.decode_batch(batch_with([raw_block(["a", "b"], [0], [1.0, 2.0])]), checked)
    assert checked == {"a", "b"}


@pytest.mark.parametrize(
    "b",
    [
        {},
        "x",
        [["a", "b"]],
        [[["a", "b"], b"\x00" * 8]],
        [[["a", "b"], b"\x00" * 8, b"\x00" * 16, b""]],
        [[["a", "b"], b"\x00" * 8, [0.0, 0.0]]],
        [["ab", b"\x00" * 8, b"\x00" * 16]],
        [[["a", 1], b"\x00" * 8, b"\x00" * 16]],
        [[["a", b"b"], b"\x00" * 8, b"\x00" * 16]],
        [[["a", "b"], "\x00" * 8, b"\x00" * 16]],
        [[[], b"", b""]],
        [raw_block(["a", "a"], [0], [1.0, 2.0])],
        [raw_block(["a", "b//c"], [0], [1.0, 2.0])],
        [raw_block(["a", "../x"], [0], [1.0, 2.0])],
        [raw_block(["a", "b"], [0, -1], [1.0, 2.0, 3.0, 4.0])],
        [raw_block(["a", "b"], [], [])],
        [raw_block(["a", "b"], [0], [1.0])],
        [raw_block(["a", "b"], [0], [1.0, 2.0, 3.0])],
        [raw_block(["a", "b"], [0, 1], [1.0, 2.0])],
        [[["a", "b"], b"\x00" * 12, b"\x00" * 24]],
        [[["a", "b"], b"\x00" * 8, b"\x00" * 15]],
        [[["a", "b"], b"\x00" * 8, msgpack.ExtType(1, b"x")]],
    ],
    ids=[
        "map",
        "str",
        "1-elem",
        "2-elem",
        "4-elem",
        "list-values",
        "str-keys",
        "int-key",
        "bytes-key",
        "str-steps",
        "no-keys",
        "repeated-key",
        "bad-key",
        "dotdot-key",
        "negative-step",
        "no-steps",
        "short-values",
        "long-values",
        "values-of-one-row",
        "12-byte-steps",
        "15-byte-values",
        "ext-values",
    ],
)
def test_a_malformed_block_refuses_the_whole_batch(b: object) -> None:
    payload = batch_with(b, m=[["k", struct.pack("<q", 0), struct.pack("<d", 1.0)]])
    for blocks in (True, False):
        checked: set[str] = set()
        with pytest.raises(ProtocolError):
            wire.decode_batch(payload, checked, blocks=blocks)
        assert checked == set()


def test_block_keys_count_against_the_per_batch_key_cap() -> None:
    keys = [f"k{i}" for i in range(60_000)]
    two = [raw_block(keys, [0], [0.0] * len(keys)), raw_block([f"j{i}" for i in range(40_001)], [0], [0.0] * 40_001)]
    with pytest.raises(ProtocolError, match="too many keys"):
        wire.decode_batch(batch_with(two))
    assert wire.decode_batch(batch_with(two[:1]), blocks=True).points == 60_000


def test_protocol_3_refuses_nothing_older_it_can_read_and_sends_3() -> None:
    """A version-2 (and 1) envelope still decodes (spools replay), version 3 is what this side sends."""
    assert wire.PROTOCOL == 3 and wire.READABLE == (1, 2, 3)
    for proto in (1, 2, 3):
        env = wire.decode_envelope(pack([proto, wire.BATCH, "r", 0, 1, 1]))
        assert env.protocol == proto
    assert msgpack.unpackb(wire.encode_envelope(wire.HELLO, "r", 0, 0, 0))[0] == 3
    with pytest.raises(ProtocolError) as ei:
        wire.decode_envelope(pack([4, wire.BATCH, "r", 0, 1, 1]))
    assert ei.value.code == "version"


def test_a_version_2_payload_without_blocks_still_decodes_as_before() -> None:
    """What a protocol-2 rank wrote (chunks, texts, no "b") decodes to the same points in both modes."""
    steps = struct.pack("<2q", 0, 1)
    v2 = pack(
        {
            "m": [["a", steps, struct.pack("<2d", 1.0, 2.0)], ["b", steps, struct.pack("<2d", 3.0, 4.0)]],
            "f": [["p", "str", "x"]],
            "t": 1.0,
            "x": [["t", struct.pack("<q", 0), ["hi"]]],
        }
    )
    flat = wire.decode_batch(v2)
    assert [(k, list(s), list(v)) for k, s, v in flat.metrics] == [("a", [0, 1], [1.0, 2.0]), ("b", [0, 1], [3.0, 4.0])]
    grouped = wire.decode_batch(v2, blocks=True)
    assert grouped.points == flat.points == 5 and grouped.blocks[0].keys == ("a", "b")


def test_shapes_give_a_known_key_tuple_back_as_the_same_object() -> None:
    shapes: wire.KeyShapes = {}
    checked: set[str] = set()
    one = wire.decode_batch(batch_with([raw_block(["a", "b"], [1], [1.0, 2.0])]), checked, blocks=True, shapes=shapes)
    two = wire.decode_batch(batch_with([raw_block(["a", "b"], [2], [3.0, 4.0])]), checked, blocks=True, shapes=shapes)
    assert one.blocks[0].keys == ("a", "b") and two.blocks[0].keys is one.blocks[0].keys
    assert shapes == {("a", "b"): ("a", "b")} and checked == {"a", "b"}
    assert two.blocks[0].values.tolist() == [[3.0], [4.0]]


def test_a_bad_block_or_batch_adds_no_shape() -> None:
    shapes: wire.KeyShapes = {}
    for bad in (
        batch_with([raw_block(["a", "a"], [1], [1.0, 2.0])]),  # a key repeated
        batch_with([raw_block(["a", ""], [1], [1.0, 2.0])]),  # a bad key
        pack({"m": [["k", b"x", b"y"]], "f": [], "t": 1.5, "b": [raw_block(["a", "b"], [1], [1.0, 2.0])]}),
    ):
        with pytest.raises(ProtocolError):
            wire.decode_batch(bad, set(), blocks=True, shapes=shapes)
    assert shapes == {}
