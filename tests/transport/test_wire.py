"""Wire format: envelope and batch round trips, rejection of malformed frames, decoder fuzzing."""

from __future__ import annotations

import math
import struct
from array import array
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinator.core.limits import MAX_FRAME_BYTES
from coordinator.errors import ProtocolError
from coordinator.transport import wire

INT64_MAX = 2**63 - 1
ALL_KINDS = [
    wire.HELLO,
    wire.BATCH,
    wire.PING,
    wire.STATE,
    wire.QUERY,
    wire.BYE,
    wire.WELCOME,
    wire.ACK,
    wire.PONG,
    wire.STATE_REPLY,
    wire.QUERY_REPLY,
    wire.BYE_ACK,
    wire.ERROR,
]


def pack(obj: object) -> bytes:
    """msgpack exactly like a peer of ours would (bin type for bytes)."""
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def raw_batch(m: object = None, f: object = None, t: object = 1.5) -> bytes:
    """A batch payload with arbitrary (possibly invalid) members."""
    return pack({"m": [] if m is None else m, "f": [] if f is None else f, "t": t})


def chunk(key: str, steps: list[int], values: list[float]) -> list[Any]:
    """One raw [key, steps bytes, values bytes] metric chunk (little endian)."""
    return [key, struct.pack(f"<{len(steps)}q", *steps), struct.pack(f"<{len(values)}d", *values)]


def valid_batch() -> bytes:
    """A representative batch with two metric keys and one field of every type."""
    return wire.encode_batch(
        [
            ("train/loss", array("q", [0, 1, 2]), array("d", [1.0, 0.5, 0.25])),
            ("lr", array("q", [7]), array("d", [3e-4])),
        ],
        [
            ("cfg/flag", ("bool", True)),
            ("cfg/n", ("int", -5)),
            ("cfg/x", ("float", 2.5)),
            ("cfg/s", ("str", "héllo")),
            ("cfg/when", ("datetime", 1_700_000_000.25)),
            ("cfg/l", ("list", [1, 2.5, "a", False])),
        ],
        12.5,
    )


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize(
    ("rank", "incarnation", "seq"), [(0, 0, 0), (3, 2**62 - 1, 17), (INT64_MAX, INT64_MAX, INT64_MAX)]
)
def test_envelope_round_trips(kind: int, rank: int, incarnation: int, seq: int) -> None:
    """Every kind and the full int64 range of rank/incarnation/seq survive encode and decode."""
    env = wire.decode_envelope(wire.encode_envelope(kind, "run-é1", rank, incarnation, seq))
    assert env == wire.Envelope(wire.PROTOCOL, kind, "run-é1", rank, incarnation, seq)


def test_envelope_accepts_run_id_of_128_chars() -> None:
    """The longest allowed run id decodes."""
    env = wire.decode_envelope(wire.encode_envelope(wire.PING, "r" * 128, 0, 0, 0))
    assert env.run_id == "r" * 128


def test_batch_round_trips_metrics_and_every_field_type() -> None:
    """Metric columns and fields of every type tag decode to exactly what was encoded."""
    b = wire.decode_batch(valid_batch())
    assert b.ts == 12.5
    assert [(k, list(s), list(v)) for k, s, v in b.metrics] == [
        ("train/loss", [0, 1, 2], [1.0, 0.5, 0.25]),
        ("lr", [7], [3e-4]),
    ]
    assert all(s.typecode == "q" and v.typecode == "d" for _, s, v in b.metrics)
    assert b.fields == [
        ("cfg/flag", ("bool", True)),
        ("cfg/n", ("int", -5)),
        ("cfg/x", ("float", 2.5)),
        ("cfg/s", ("str", "héllo")),
        ("cfg/when", ("datetime", 1_700_000_000.25)),
        ("cfg/l", ("list", [1, 2.5, "a", False])),
    ]
    assert b.points == 4


def test_batch_round_trips_extreme_values() -> None:
    """Steps up to int64 max and non-finite or extreme floats are carried bit for bit."""
    vals = [math.inf, -math.inf, math.nan, 5e-324, -0.0, 1.7976931348623157e308]
    steps = [0, 1, 2, 3, 2**40, INT64_MAX]
    b = wire.decode_batch(wire.encode_batch([("k", array("q", steps), array("d", vals))], [], 0.0))
    ((key, s, v),) = b.metrics
    assert key == "k" and list(s) == steps
    assert v.tobytes() == array("d", vals).tobytes()


def test_empty_batch_round_trips() -> None:
    """A batch without metrics or fields is valid and has zero points."""
    b = wire.decode_batch(wire.encode_batch([], [], 3.0))
    assert (b.metrics, b.fields, b.ts, b.points) == ([], [], 3.0, 0)


def test_control_map_round_trips() -> None:
    """encode_map/decode_map keep a control payload unchanged."""
    payload = {"pid": 12, "host": "n1", "w": ["a", "b"], "x": {"y": 1.5}}
    assert wire.decode_map(wire.encode_map(payload)) == payload


_key = st.from_regex(r"[a-z][a-z0-9_]{0,6}(/[a-z0-9_]{1,6}){0,2}", fullmatch=True)


@settings(max_examples=100, deadline=None)
@given(
    metrics=st.lists(
        st.tuples(
            _key,
            st.lists(
                st.tuples(st.integers(0, INT64_MAX), st.floats(allow_nan=False, width=64)),
                min_size=1,
                max_size=20,
            ),
        ),
        max_size=5,
    ),
    ts=st.floats(allow_nan=False, allow_infinity=False),
)
def test_batch_round_trip_property(metrics: list[tuple[str, list[tuple[int, float]]]], ts: float) -> None:
    """Any valid columnar batch decodes to the same keys, steps and values."""
    cols = [(k, array("q", [s for s, _ in pts]), array("d", [v for _, v in pts])) for k, pts in metrics]
    b = wire.decode_batch(wire.encode_batch(cols, [], ts))
    assert b.ts == ts
    assert [(k, list(s), list(v)) for k, s, v in b.metrics] == [(k, list(s), list(v)) for k, s, v in cols]


# ----------------------------------------------------------------------------- envelope rejection


def test_a_version_1_envelope_still_decodes_so_old_spools_replay() -> None:
    """Protocol 2 only added texts: a spool written by version 1 is read, not refused."""
    env = wire.decode_envelope(pack([1, wire.BATCH, "r", 2, 7, 5]))
    assert (env.kind, env.rank, env.incarnation, env.seq) == (wire.BATCH, 2, 7, 5)


@pytest.mark.parametrize("proto", [0, wire.PROTOCOL + 1, 99, INT64_MAX])
def test_envelope_of_another_protocol_version_is_refused_naming_both(proto: int) -> None:
    """A peer speaking another version gets code 'version' and both versions in the message."""
    with pytest.raises(ProtocolError) as ei:
        wire.decode_envelope(pack([proto, wire.HELLO, "r", 0, 0, 0]))
    assert ei.value.code == "version"
    assert str(proto) in str(ei.value) and str(wire.PROTOCOL) in str(ei.value)


@pytest.mark.parametrize(
    "obj",
    [
        {"p": 1},
        1,
        "envelope",
        b"\x01",
        None,
        [],
        [wire.PROTOCOL, wire.HELLO, "r", 0, 0],
        [wire.PROTOCOL, wire.HELLO, "r", 0, 0, 0, 0],
        [[wire.PROTOCOL], wire.HELLO, "r", 0, 0, 0],
    ],
    ids=["map", "int", "str", "bin", "nil", "empty", "5-elem", "7-elem", "nested"],
)
def test_envelope_that_is_not_a_6_element_array_is_refused(obj: object) -> None:
    """Anything but a 6-element array is a ProtocolError (not a version error)."""
    with pytest.raises(ProtocolError) as ei:
        wire.decode_envelope(pack(obj))
    assert ei.value.code == "bad_frame"


@pytest.mark.parametrize(
    "obj",
    [
        ["1", wire.HELLO, "r", 0, 0, 0],
        [True, wire.HELLO, "r", 0, 0, 0],
        [1.0, wire.HELLO, "r", 0, 0, 0],
        [wire.PROTOCOL, 99, "r", 0, 0, 0],
        [wire.PROTOCOL, 0, "r", 0, 0, 0],
        [wire.PROTOCOL, True, "r", 0, 0, 0],
        [wire.PROTOCOL, "HELLO", "r", 0, 0, 0],
        [wire.PROTOCOL, wire.HELLO, "", 0, 0, 0],
        [wire.PROTOCOL, wire.HELLO, "r" * 129, 0, 0, 0],
        [wire.PROTOCOL, wire.HELLO, b"r", 0, 0, 0],
        [wire.PROTOCOL, wire.HELLO, 7, 0, 0, 0],
        [wire.PROTOCOL, wire.HELLO, "r", -1, 0, 0],
        [wire.PROTOCOL, wire.HELLO, "r", 0, -1, 0],
        [wire.PROTOCOL, wire.HELLO, "r", 0, 0, -1],
        [wire.PROTOCOL, wire.HELLO, "r", -(2**63), 0, 0],
        [wire.PROTOCOL, wire.HELLO, "r", 2**63, 0, 0],
        [wire.PROTOCOL, wire.HELLO, "r", 0, 2**64 - 1, 0],
        [wire.PROTOCOL, wire.HELLO, "r", 0, 0, 2**63],
        [wire.PROTOCOL, wire.HELLO, "r", True, 0, 0],
        [wire.PROTOCOL, wire.HELLO, "r", 0, 1.0, 0],
        [wire.PROTOCOL, wire.HELLO, "r", 0, 0, None],
    ],
)
def test_envelope_with_bad_member_types_or_ranges_is_refused(obj: list[object]) -> None:
    """Non-int or out-of-range members, unknown kinds and bad run ids raise ProtocolError."""
    with pytest.raises(ProtocolError) as ei:
        wire.decode_envelope(pack(obj))
    assert ei.value.code == "bad_frame"


def test_envelope_with_trailing_bytes_is_refused() -> None:
    """Extra data after the envelope object is not silently ignored."""
    with pytest.raises(ProtocolError):
        wire.decode_envelope(wire.encode_envelope(wire.PING, "r", 0, 0, 0) + b"\x00")


def test_truncated_envelope_is_refused_at_every_length() -> None:
    """Every proper prefix of a valid envelope is a ProtocolError."""
    frame = wire.encode_envelope(wire.BATCH, "run-1", 3, 2**40, 1234567)
    for n in range(len(frame)):
        with pytest.raises(ProtocolError):
            wire.decode_envelope(frame[:n])


def test_oversize_envelope_is_refused_before_decoding() -> None:
    """An envelope over 512 bytes is refused with code 'oversize', even if well formed."""
    frame = pack([wire.PROTOCOL, wire.HELLO, "r", 0, 0, 0]) + b"\xc0" * 600
    with pytest.raises(ProtocolError) as ei:
        wire.decode_envelope(frame)
    assert ei.value.code == "oversize"


def test_envelope_with_invalid_utf8_run_id_is_refused() -> None:
    """A run id that is not valid UTF-8 is a ProtocolError, not a UnicodeDecodeError."""
    frame = b"\x96\x01\x01" + b"\xa2\xff\xfe" + b"\x00\x00\x00"
    assert msgpack.unpackb(frame, raw=True)[2] == b"\xff\xfe"  # the frame is well-formed msgpack
    with pytest.raises(ProtocolError):
        wire.decode_envelope(frame)


@pytest.mark.parametrize("code", [0, 5, 127])
def test_envelope_with_ext_type_is_refused_with_code_ext(code: int) -> None:
    """msgpack ext types never reach the caller: code 'ext'."""
    frame = pack([wire.PROTOCOL, wire.HELLO, msgpack.ExtType(code, b"r"), 0, 0, 0])
    with pytest.raises(ProtocolError) as ei:
        wire.decode_envelope(frame)
    assert ei.value.code == "ext"


# ----------------------------------------------------------------------------- batch rejection


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",
        b"\xff" * 16,
        b"\x00\x01\x02",
        b"\x92\x01",
        b"\xde\x00\x01",
        b"\xdd\xff\xff\xff\xff",
        b"\xc6\xff\xff\xff\xff\x00",
        b"\xdf\xff\xff\xff\xff",
        b"\xdb\x7f\xff\xff\xff",
    ],
    ids=[
        "empty",
        "never-used",
        "ff",
        "fixints",
        "short-array",
        "short-map",
        "array32-huge-len",
        "bin32-huge-len",
        "map32-huge-len",
        "str32-huge-len",
    ],
)
def test_garbage_and_huge_declared_lengths_are_refused(data: bytes) -> None:
    """Random bytes and headers declaring gigabytes raise ProtocolError without allocating them."""
    for decode in (wire.decode_envelope, wire.decode_batch, wire.decode_map):
        with pytest.raises(ProtocolError):
            decode(data)


def test_truncated_batch_is_refused_at_every_length() -> None:
    """Every proper prefix of a valid batch is a ProtocolError."""
    frame = valid_batch()
    for n in range(len(frame)):
        with pytest.raises(ProtocolError):
            wire.decode_batch(frame[:n])


@pytest.mark.parametrize(
    "payload",
    [
        pack([]),
        pack(1.5),
        pack({"m": [], "f": []}),
        pack({"m": [], "t": 1.0}),
        pack({"f": [], "t": 1.0}),
        raw_batch(t=1),
        raw_batch(t="1.0"),
        raw_batch(t=None),
        raw_batch(m={}),
        raw_batch(f={}),
        raw_batch(m="x"),
    ],
    ids=["array", "float", "no-t", "no-f", "no-m", "int-t", "str-t", "nil-t", "map-m", "map-f", "str-m"],
)
def test_batch_with_wrong_top_level_shape_is_refused(payload: bytes) -> None:
    """A batch must be a map with m (list), f (list) and t (float)."""
    with pytest.raises(ProtocolError):
        wire.decode_batch(payload)


@pytest.mark.parametrize(
    "item",
    [
        "k",
        ["k", b"\x00" * 8],
        ["k", b"\x00" * 8, b"\x00" * 8, b""],
        [1, b"\x00" * 8, b"\x00" * 8],
        ["k", "\x00" * 8, b"\x00" * 8],
        ["k", b"\x00" * 8, [0.0]],
        ["k", [0], [0.0]],
    ],
    ids=["not-list", "2-elem", "4-elem", "int-key", "str-steps", "list-values", "list-steps"],
)
def test_metric_chunk_with_wrong_shape_or_types_is_refused(item: object) -> None:
    """Each chunk must be [str key, bytes steps, bytes values]."""
    with pytest.raises(ProtocolError):
        wire.decode_batch(raw_batch(m=[item]))


@pytest.mark.parametrize(
    ("steps", "values"),
    [
        (b"", b""),
        (b"\x00" * 16, b"\x00" * 8),
        (b"\x00" * 8, b"\x00" * 16),
        (b"\x00" * 7, b"\x00" * 7),
        (b"\x00" * 12, b"\x00" * 12),
        (b"\x00" * 8, b""),
    ],
    ids=["empty", "more-steps", "more-values", "7-bytes", "12-bytes", "no-values"],
)
def test_metric_chunk_with_mismatched_steps_and_values_is_refused(steps: bytes, values: bytes) -> None:
    """Steps and values must be whole, equally long, non-empty int64/float64 columns."""
    with pytest.raises(ProtocolError):
        wire.decode_batch(raw_batch(m=[["k", steps, values]]))


@pytest.mark.parametrize(
    "steps",
    [[-1], [0, 1, -5], [-(2**63)], [5, 2**63 - 1, -2], [*range(1000), -1], [-7, *range(1000)]],
    ids=["one", "last", "lowest", "after-highest", "long-last", "long-first"],
)
def test_metric_chunk_with_a_negative_step_is_refused(steps: list[int]) -> None:
    """Any negative step in a chunk rejects the whole batch."""
    with pytest.raises(ProtocolError):
        wire.decode_batch(raw_batch(m=[chunk("k", steps, [0.0] * len(steps))]))


BAD_KEYS = [
    "../x",
    "a//b",
    "",
    "/a",
    "a/",
    ".",
    "..",
    "a/./b",
    "a/../b",
    "x" * 513,
    "a\nb",
    "a\x00b",
    "tab\there",
    "bell\x07",
]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_metric_with_bad_key_is_refused(key: str) -> None:
    """Keys with empty/dot components, control characters or over 512 chars are refused."""
    with pytest.raises(ProtocolError):
        wire.decode_batch(raw_batch(m=[chunk(key, [1], [1.0])]))


@pytest.mark.parametrize("key", BAD_KEYS)
def test_field_with_bad_path_is_refused(key: str) -> None:
    """Field paths obey the same rules as metric keys."""
    with pytest.raises(ProtocolError):
        wire.decode_batch(raw_batch(f=[[key, "int", 1]]))


def test_one_bad_chunk_rejects_the_whole_batch() -> None:
    """A bad chunk after good ones is still a ProtocolError (nothing partial is returned)."""
    good = chunk("ok", [1, 2], [1.0, 2.0])
    with pytest.raises(ProtocolError):
        wire.decode_batch(raw_batch(m=[good, good, chunk("../x", [1], [1.0])]))


@pytest.mark.parametrize(
    "item",
    [
        "p",
        ["p", "int"],
        ["p", "int", 1, 2],
        [1, "int", 1],
        [b"p", "int", 1],
        ["p", "complex", 1],
        ["p", None, 1],
        ["p", ["int"], 1],
        ["p", "bool", 1],
        ["p", "int", True],
        ["p", "int", 1.0],
        ["p", "int", "1"],
        ["p", "float", 1],
        ["p", "str", b"s"],
        ["p", "str", None],
        ["p", "datetime", 1],
        ["p", "datetime", "2024-01-01"],
        ["p", "list", "1,2"],
        ["p", "list", {"a": 1}],
        ["p", "list", [[1]]],
        ["p", "list", [None]],
        ["p", "list", [{"a": 1}]],
        ["p", "list", [b"x"]],
    ],
)
def test_field_with_wrong_shape_tag_or_value_type_is_refused(item: object) -> None:
    """A field is [path, known tag, value of exactly that tag's type]."""
    with pytest.raises(ProtocolError):
        wire.decode_batch(raw_batch(f=[item]))


@pytest.mark.parametrize("value", [2**63, 2**64 - 1])
def test_int_field_outside_int64_is_refused(value: int) -> None:
    """An 'int' field is 64-bit signed on the API side, so a larger uint64 from the wire is refused."""
    with pytest.raises(ProtocolError):
        wire.decode_batch(raw_batch(f=[["p", "int", value]]))


@pytest.mark.parametrize("value", [2**63, 2**64 - 1])
def test_list_field_with_int_outside_int64_is_refused(value: int) -> None:
    """Ints inside a 'list' field are 64-bit signed too (to_field_value refuses [2**64] with ValueError)."""
    with pytest.raises(ProtocolError):
        wire.decode_batch(raw_batch(f=[["p", "list", [1, value]]]))


@pytest.mark.parametrize("value", [-(2**63), 2**63 - 1])
def test_int_field_at_int64_bounds_is_accepted(value: int) -> None:
    """The int64 extremes are valid field values."""
    assert wire.decode_batch(raw_batch(f=[["p", "int", value]])).fields == [("p", ("int", value))]


@pytest.mark.parametrize("obj", [{1: 2, "m": [], "f": [], "t": 1.0}, {"a": {2: 3}}, {None: 1}, {1.5: 1}])
def test_map_with_int_float_or_nil_keys_is_refused(obj: dict[Any, Any]) -> None:
    """Non-str map keys at any depth are refused by decode_batch and decode_map."""
    for decode in (wire.decode_batch, wire.decode_map):
        with pytest.raises(ProtocolError):
            decode(pack(obj))


def test_map_with_binary_keys_is_refused() -> None:
    """decode_map promises str keys, so a bin (bytes) key, top-level or nested, is refused."""
    for obj in ({b"pid": 1}, {"q": {b"key": "x"}}):
        with pytest.raises(ProtocolError):
            wire.decode_map(pack(obj))


@pytest.mark.parametrize("where", ["t", "m-values", "f-value", "f-list", "map"])
def test_ext_types_anywhere_are_refused_with_code_ext(where: str) -> None:
    """An ext type anywhere in a payload raises ProtocolError code 'ext'."""
    ext = msgpack.ExtType(7, b"\x00" * 8)
    frame, decode = {
        "t": (raw_batch(t=ext), wire.decode_batch),
        "m-values": (raw_batch(m=[["k", b"\x00" * 8, ext]]), wire.decode_batch),
        "f-value": (raw_batch(f=[["p", "float", ext]]), wire.decode_batch),
        "f-list": (raw_batch(f=[["p", "list", [1, ext]]]), wire.decode_batch),
        "map": (pack({"a": [ext]}), wire.decode_map),
    }[where]
    with pytest.raises(ProtocolError) as ei:
        decode(frame)
    assert ei.value.code == "ext"


def test_timestamp_ext_type_is_refused_by_decode_map() -> None:
    """The msgpack timestamp extension (type -1) is an ext type too and is not let through."""
    frame = pack({"pid": 1, "when": msgpack.Timestamp(1, 0)})
    with pytest.raises(ProtocolError) as ei:
        wire.decode_map(frame)
    assert ei.value.code == "ext"


def test_timestamp_ext_type_in_batch_is_refused() -> None:
    """A timestamp in place of the float t, or as a field value, is a ProtocolError."""
    with pytest.raises(ProtocolError):
        wire.decode_batch(raw_batch(t=msgpack.Timestamp(1, 0)))
    with pytest.raises(ProtocolError):
        wire.decode_batch(raw_batch(f=[["p", "datetime", msgpack.Timestamp(1, 0)]]))


def test_invalid_utf8_in_keys_and_values_is_refused() -> None:
    """Invalid UTF-8 in a metric key, a field path or a str value is a ProtocolError."""
    good = raw_batch(m=[chunk("kk", [1], [1.0])], f=[["pp", "str", "vv"]])
    for needle in (b"\xa2kk", b"\xa2pp", b"\xa2vv"):
        assert good.count(needle) == 1
        bad = good.replace(needle, needle[:1] + b"\xc3\x28")
        with pytest.raises(ProtocolError):
            wire.decode_batch(bad)


def test_oversize_batch_is_refused_with_code_oversize() -> None:
    """A payload over MAX_FRAME_BYTES is refused before decoding; decode_map honours its limit."""
    with pytest.raises(ProtocolError) as ei:
        wire.decode_batch(b"\xc0" * (MAX_FRAME_BYTES + 1))
    assert ei.value.code == "oversize"
    small = wire.encode_map({"x": "y" * 5000})
    with pytest.raises(ProtocolError) as ei:
        wire.decode_map(small, 4096)
    assert ei.value.code == "oversize"
    assert wire.decode_map(small, len(small)) == {"x": "y" * 5000}


@pytest.mark.parametrize("opener", [b"\x91", b"\x81\xa1a"], ids=["arrays", "maps"])
def test_deep_nesting_is_refused(opener: bytes) -> None:
    """Tens of thousands of nested arrays or maps are a ProtocolError, not a RecursionError/crash."""
    frame = opener * 50_000 + b"\xc0"
    for decode in (wire.decode_batch, wire.decode_map):
        with pytest.raises(ProtocolError):
            decode(frame)


def test_deep_nesting_inside_a_field_list_is_refused() -> None:
    """A field list holding a deeply nested value is refused."""
    inner: object = 1
    for _ in range(200):
        inner = [inner]
    with pytest.raises(ProtocolError):
        wire.decode_batch(raw_batch(f=[["p", "list", inner]]))


def test_kind_name_names_known_and_unknown_kinds() -> None:
    """kind_name is readable for known kinds and does not fail on unknown ones."""
    assert wire.kind_name(wire.BATCH) == "BATCH"
    assert wire.kind_name(wire.ERROR) == "ERROR"
    assert wire.kind_name(250) == "kind-250"


# ----------------------------------------------------------------------------- fuzzing


def _check_decoders(data: bytes) -> None:
    """Each decoder either returns a well-typed result or raises ProtocolError; nothing else."""
    try:
        env = wire.decode_envelope(data)
    except ProtocolError:
        pass
    else:
        assert env.protocol in wire.READABLE and type(env.rank) is int and env.rank >= 0
    for blocks in (False, True):
        try:
            b = wire.decode_batch(data, blocks=blocks)
        except ProtocolError:
            continue
        assert type(b.ts) is float
        for k, s, v in b.metrics:
            assert type(k) is str and len(s) == len(v) > 0 and min(s) >= 0
        for blk in b.blocks:
            assert blk.values.shape == (len(blk.keys), len(blk.steps)) and min(blk.steps) >= 0
            assert len(set(blk.keys)) == len(blk.keys) and all(type(k) is str for k in blk.keys)
    try:
        m = wire.decode_map(data)
    except ProtocolError:
        pass
    else:
        assert type(m) is dict


_SEEDS = [
    valid_batch(),
    wire.encode_envelope(wire.BATCH, "run-1", 2, 99, 7),
    wire.encode_map({"pid": 1, "host": "h", "undelivered": 0}),
    raw_batch(m=[chunk("a/b", [0, 1], [0.5, 1.5])], f=[["p", "list", [1, "x"]]]),
    wire.encode_chunks([], [], 1.0, None, [(("a", "b"), struct.pack("<2q", 3, 4), struct.pack("<4d", 1, 2, 3, 4))]),
]


@settings(max_examples=300, deadline=1000, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=700))
def test_fuzz_random_bytes_decode_or_raise_protocol_error(data: bytes) -> None:
    """Random bytes never escape the decoders as anything but ProtocolError."""
    _check_decoders(data)


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    """A valid frame with a few byte flips, insertions, deletions or a truncation."""
    buf = bytearray(draw(st.sampled_from(_SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        if not buf:
            break
        i = draw(st.integers(0, len(buf) - 1))
        if op == "flip":
            buf[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            buf[i] = draw(
                st.sampled_from([0x00, 0x7F, 0x80, 0xC0, 0xC1, 0xC4, 0xC7, 0xD4, 0xD6, 0xDC, 0xDD, 0xDE, 0xDF, 0xFF])
            )
        elif op == "insert":
            buf[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del buf[i : i + draw(st.integers(1, 8))]
        else:
            del buf[i:]
    return bytes(buf)


@pytest.mark.timeout(120)
@settings(max_examples=300, deadline=1000, suppress_health_check=[HealthCheck.too_slow])
@given(_mutated())
def test_fuzz_mutated_valid_frames_decode_or_raise_protocol_error(data: bytes) -> None:
    """Mutations of valid envelopes, batches and maps either decode or raise ProtocolError."""
    _check_decoders(data)


def text_batch(metrics: list[Any], texts: list[tuple[str, list[int], list[Any]]]) -> bytes:
    """A raw batch with metric chunks and text chunks ``(key, steps, texts)``."""
    x = [[k, struct.pack(f"<{len(s)}q", *s), t] for k, s, t in texts]
    return pack({"m": metrics, "f": [], "t": 1.5, "x": x})


def test_checked_keys_are_recorded_only_from_batches_that_decode() -> None:
    """``checked`` gains the metric and text keys of a decoded batch, none of a refused one."""
    checked: set[str] = set()
    b = wire.decode_batch(text_batch([chunk("a/loss", [1], [1.0])], [("notes", [2], ["hi"])]), checked)
    assert [k for k, _, _ in b.metrics] == ["a/loss"] and [k for k, _, _ in b.texts] == ["notes"]
    assert checked == {"a/loss", "notes"}
    with pytest.raises(ProtocolError, match="bad metric key"):
        wire.decode_batch(raw_batch(m=[chunk("fresh", [1], [1.0]), chunk("a//b", [1], [1.0])]), checked)
    with pytest.raises(ProtocolError, match="bad text chunk"):
        wire.decode_batch(text_batch([chunk("fresh", [1], [1.0])], [("../up", [1], ["x"])]), checked)
    with pytest.raises(ProtocolError, match="negative step"):
        wire.decode_batch(raw_batch(m=[chunk("fresh", [1], [1.0]), chunk("later", [-1], [1.0])]), checked)
    assert checked == {"a/loss", "notes"}, "a refused batch adds nothing, not even its good keys"


def test_a_checked_key_is_not_validated_again_and_an_unchecked_one_is() -> None:
    """The set is trusted (the aggregator only fills it from decoded batches): its keys skip check_key."""
    bad = "a//b"
    assert wire.decode_batch(raw_batch(m=[chunk(bad, [1], [1.0])]), {bad}).metrics[0][0] == bad
    assert wire.decode_batch(text_batch([], [(bad, [1], ["t"])]), {bad}).texts[0][0] == bad
    with pytest.raises(ProtocolError, match="bad metric key"):
        wire.decode_batch(raw_batch(m=[chunk(bad, [1], [1.0])]), {"other"})
    with pytest.raises(ProtocolError, match="bad metric key"):
        wire.decode_batch(raw_batch(m=[chunk(bad, [1], [1.0])]))  # no set: every key is checked
    with pytest.raises(ProtocolError, match="bad text chunk"):
        wire.decode_batch(text_batch([], [("t", [1], [1])]), {"t"})  # a checked key's texts are still checked


def test_blocks_group_consecutive_chunks_with_equal_steps() -> None:
    """blocks=True: runs of chunks with byte-equal steps become one block (keys x steps matrix); the rest
    stays per key, and the points are the same as key by key."""
    m = [
        chunk("a", [1, 2], [1.0, 2.0]),
        chunk("b", [1, 2], [3.0, 4.0]),
        chunk("c", [1, 2], [5.0, 6.0]),
        chunk("d", [3], [7.0]),
        chunk("e", [1, 2], [8.0, 9.0]),
        chunk("f", [1, 2], [0.5, -0.5]),
    ]
    plain = wire.decode_batch(raw_batch(m=m))
    b = wire.decode_batch(raw_batch(m=m), blocks=True)
    assert [(blk.keys, list(blk.steps), blk.values.tolist()) for blk in b.blocks] == [
        (("a", "b", "c"), [1, 2], [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]),
        (("e", "f"), [1, 2], [[8.0, 9.0], [0.5, -0.5]]),
    ]
    assert [(k, list(s), list(v)) for k, s, v in b.metrics] == [("d", [3], [7.0])]
    assert b.points == plain.points == 11
    assert not plain.blocks and [k for k, _, _ in plain.metrics] == list("abcdef")


def test_blocks_are_checked_like_chunks() -> None:
    """A block's steps are checked once for all its keys (a negative step is refused), its keys one by one."""
    with pytest.raises(ProtocolError, match="negative step"):
        wire.decode_batch(raw_batch(m=[chunk("a", [-1], [1.0]), chunk("b", [-1], [2.0])]), blocks=True)
    with pytest.raises(ProtocolError, match="bad metric key"):
        wire.decode_batch(raw_batch(m=[chunk("a", [1], [1.0]), chunk("", [1], [2.0])]), blocks=True)
    with pytest.raises(ProtocolError) as ei:
        wire.decode_batch(raw_batch(m=[chunk("a", [1], [1.0]), ["b", msgpack.Timestamp(1, 0), b""]]), blocks=True)
    assert ei.value.code == "ext"


def test_a_full_batch_is_packed_presized_into_the_same_bytes() -> None:
    """A payload past 128 KiB is packed into a buffer of its estimated size: the bytes do not change."""
    steps, values = array("q", range(65_536)).tobytes(), array("d", range(65_536)).tobytes()
    block = (("a", "b"), steps[: 8 * 1000], values[: 16 * 1000])
    chunks: list[list[Any]] = [["loss", steps, values]]
    fields: list[tuple[str, Any]] = [("p", ("str", "x"))]
    payload = wire.encode_chunks(chunks, fields, 1.0, None, [block])
    plain = {"m": chunks, "f": [["p", "str", "x"]], "t": 1.0, "b": [[wire.key_blob(block[0]), *block[1:]]]}
    assert payload == msgpack.packb(plain, use_bin_type=True)
    assert wire.decode_batch(payload, blocks=True).metrics[0][1].tolist() == list(range(65_536))


def test_a_full_batch_packed_as_a_view_is_the_same_bytes_read_only_and_a_small_one_is_bytes() -> None:
    """``encode_chunks_view``: a payload past 128 KiB is a read-only view of the buffer it was copied
    into in slices, with the bytes ``encode_chunks`` gives (from views of the arrays too); a small one
    is plain bytes."""
    steps, values = array("q", range(65_536)), array("d", range(65_536))
    chunks: list[list[Any]] = [["loss", memoryview(steps).cast("B"), memoryview(values).cast("B")]]
    view = wire.encode_chunks_view(chunks, [("p", ("str", "x"))], 1.0)
    assert isinstance(view, memoryview) and view.readonly
    same = wire.encode_chunks([["loss", steps.tobytes(), values.tobytes()]], [("p", ("str", "x"))], 1.0)
    assert bytes(view) == same
    assert wire.decode_batch(view).metrics[0][2].tolist() == list(range(65_536))
    small = wire.encode_chunks_view([["loss", steps[:10].tobytes(), values[:10].tobytes()]], [], 1.0)
    assert isinstance(small, bytes)
