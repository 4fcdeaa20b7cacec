"""Wire format, blocks (``"b"``, protocols 3 and 4): round trips, key blobs, malformed blocks, older payloads."""

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


def test_protocol_4_refuses_nothing_older_it_can_read_and_sends_4() -> None:
    """Versions 1-3 still decode (spools replay), version 4 is what this side sends."""
    assert wire.PROTOCOL == 4 and wire.READABLE == (1, 2, 3, 4)
    for proto in (1, 2, 3, 4):
        env = wire.decode_envelope(pack([proto, wire.BATCH, "r", 0, 1, 1]))
        assert env.protocol == proto
    assert msgpack.unpackb(wire.encode_envelope(wire.HELLO, "r", 0, 0, 0))[0] == 4
    with pytest.raises(ProtocolError) as ei:
        wire.decode_envelope(pack([5, wire.BATCH, "r", 0, 1, 1]))
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


def test_a_block_names_its_keys_by_one_blob_packed_once_that_a_decoder_maps_to_the_checked_tuple() -> None:
    """Protocol 4: the keys travel as a msgpack bin of their array; the second batch's blob is a
    lookup that gives the first batch's tuple back, its keys not decoded or checked again."""
    keys = ("train/a", "train/b", "train/c")
    f1 = frame(keys, [(4, [1.0, 2.0, 3.0])])
    f2 = frame(keys, [(5, [4.0, 5.0, 6.0]), (6, [7.0, 8.0, 9.0])])
    p1 = wire.encode_chunks([], [], 1.0, None, [f1.block()])
    p2 = wire.encode_chunks([], [], 1.0, None, [f2.block()])
    blob = msgpack.unpackb(p1)["b"][0][0]
    assert type(blob) is bytes and msgpack.unpackb(blob) == list(keys)
    assert wire.key_blob(keys) is wire.key_blob(keys), "packed once per key tuple"
    shapes: wire.KeyShapes = {}
    checked: set[str] = set()
    one = wire.decode_batch(p1, checked, blocks=True, shapes=shapes)
    assert shapes[blob] is one.blocks[0].keys == keys and checked == set(keys)
    checked.clear()  # were the keys checked again, they would be noted here
    two = wire.decode_batch(p2, checked, blocks=True, shapes=shapes)
    assert two.blocks[0].keys is one.blocks[0].keys and checked == set()
    assert two.blocks[0].values.tolist() == [[4.0, 7.0], [5.0, 8.0], [6.0, 9.0]]
    flat = wire.decode_batch(p2)
    assert [(k, list(s), list(v)) for k, s, v in flat.metrics] == [
        ("train/a", [5, 6], [4.0, 7.0]),
        ("train/b", [5, 6], [5.0, 8.0]),
        ("train/c", [5, 6], [6.0, 9.0]),
    ]


@pytest.mark.parametrize(
    ("blob", "match"),
    [
        (b"\xc1", "undecodable"),
        (pack({"a": 1}), "not a list"),
        (pack(["a", 1]), "not all str"),
        (pack(["a", "a"]), "repeated"),
        (pack(["a", ""]), "bad metric key"),
        (pack([]), "no keys"),
    ],
)
def test_a_bad_key_blob_is_refused_and_adds_no_shape(blob: bytes, match: str) -> None:
    shapes: wire.KeyShapes = {}
    with pytest.raises(ProtocolError, match=match):
        wire.decode_batch(batch_with([raw_block(blob, [1], [1.0, 2.0])]), set(), blocks=True, shapes=shapes)
    assert shapes == {}


def test_a_key_blob_in_a_batch_that_fails_later_adds_no_shape_and_counts_against_the_key_cap() -> None:
    shapes: wire.KeyShapes = {}
    good = raw_block(wire.key_blob(("a", "b")), [1], [1.0, 2.0])
    with pytest.raises(ProtocolError):
        wire.decode_batch(
            batch_with([good, raw_block(["c", "d"], [-1], [1.0, 2.0])]), set(), blocks=True, shapes=shapes
        )
    assert shapes == {}
    wide = raw_block(pack([f"k{i}" for i in range(100_001)]), [0], [0.0] * 100_001)
    with pytest.raises(ProtocolError, match="too many keys"):
        wire.decode_batch(batch_with([wide]), set(), blocks=True, shapes=shapes)
