"""API-boundary validation: keys, steps, metric values, field values and field flattening."""

from __future__ import annotations

import datetime as dt
import math
from collections import OrderedDict
from decimal import Decimal
from fractions import Fraction
from types import MappingProxyType

import pytest

from coordinator.core.limits import MAX_FIELD_STR_BYTES, MAX_KEY_CHARS
from coordinator.core.values import (
    check_field,
    check_key,
    check_step,
    flatten_fields,
    is_finite,
    to_field_value,
    to_metric_value,
)
from tests.untyped import bad

# ----------------------------------------------------------------------------- check_key


@pytest.mark.parametrize(
    "key",
    [
        "loss",
        "train/loss",
        "a/b/c/d",
        "x" * MAX_KEY_CHARS,
        "with space",
        "ünï/cødé",
        "a.b",
        "...a",
        "a-b_c:1",
        "x'; DROP TABLE keys;--",
        "100%",
        "a/.b",
        "a../b",
    ],
)
def test_check_key_accepts_namespaced_printable_paths(key: str) -> None:
    """Printable, non-empty paths without empty/'.'/'..' components come back unchanged."""
    assert check_key(key) is key


@pytest.mark.parametrize("key", [None, 1, 1.5, b"loss", ["a"], ("a",), object()])
def test_check_key_rejects_non_str_with_type_error(key: object) -> None:
    """A key that is not a str is a TypeError naming the type."""
    with pytest.raises(TypeError, match=type(key).__name__):
        check_key(key)


def test_check_key_rejects_str_subclass_with_type_error() -> None:
    """Only exact str is accepted (a subclass could override split/isprintable)."""

    class S(str):
        pass

    with pytest.raises(TypeError):
        check_key(S("loss"))


@pytest.mark.parametrize(
    "key",
    [
        "",
        "x" * (MAX_KEY_CHARS + 1),
        "../x",
        "a//b",
        "/a",
        "a/",
        ".",
        "..",
        "a/./b",
        "a/../b",
        "a\nb",
        "a\rb",
        "a\tb",
        "a\x00b",
        "a\x07b",
        "a\u2028b",
        "a\x7fb",
    ],
)
def test_check_key_rejects_malformed_paths_with_value_error(key: str) -> None:
    """Empty, too long, dot components, empty components and control characters are ValueErrors."""
    with pytest.raises(ValueError):
        check_key(key)


def test_check_key_names_what_was_checked() -> None:
    """The error message uses the 'what' label."""
    with pytest.raises(ValueError, match="field path"):
        check_key("a//b", "field path")


# ----------------------------------------------------------------------------- check_step


@pytest.mark.parametrize("step", [0, 1, 2**31, 2**63 - 1])
def test_check_step_accepts_int64_range(step: int) -> None:
    """Non-negative ints up to 2**63-1 are returned as ints."""
    out = check_step(step)
    assert out == step and type(out) is int


class _Index:
    """An object with __index__ (like numpy integers)."""

    def __init__(self, v: int) -> None:
        self.v = v

    def __index__(self) -> int:
        return self.v


def test_check_step_accepts_index_objects() -> None:
    """Objects with __index__ are converted to a plain int."""
    out = check_step(_Index(7))
    assert out == 7 and type(out) is int


@pytest.mark.parametrize("step", [True, False, 1.0, 0.0, "1", None, b"1", [1], Decimal(1), Fraction(1)])
def test_check_step_rejects_non_ints_with_type_error(step: object) -> None:
    """bools, floats, strings and other non-integers are TypeErrors."""
    with pytest.raises(TypeError):
        check_step(step)


@pytest.mark.parametrize("step", [-1, -(2**63), 2**63, 10**30])
def test_check_step_rejects_out_of_range_with_value_error(step: int) -> None:
    """Negative steps and steps beyond int64 are ValueErrors."""
    with pytest.raises(ValueError):
        check_step(step)


def test_check_step_range_applies_to_index_objects() -> None:
    """An __index__ object converting to a negative int is a ValueError."""
    with pytest.raises(ValueError):
        check_step(_Index(-3))


# ----------------------------------------------------------------------------- to_metric_value


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1, 1.0),
        (-2.5, -2.5),
        (True, 1.0),
        (False, 0.0),
        (2**63, 9.223372036854775808e18),
        (Decimal("0.5"), 0.5),
        (Fraction(1, 4), 0.25),
        (math.inf, math.inf),
        (-math.inf, -math.inf),
    ],
)
def test_to_metric_value_converts_numbers_to_float(value: object, expected: float) -> None:
    """Numbers and bools become plain floats."""
    out = to_metric_value("k", value)
    assert out == expected and type(out) is float


def test_to_metric_value_keeps_nan() -> None:
    """NaN is a valid metric value (non-finite values are not rejected here)."""
    assert math.isnan(to_metric_value("k", math.nan))


@pytest.mark.parametrize("value", ["1.0", b"1", bytearray(b"1"), None, [1.0], (1.0,), {}, {"a": 1}, object(), 1j])
def test_to_metric_value_rejects_non_numeric_with_type_error(value: object) -> None:
    """Strings, None, containers, complex and arbitrary objects are TypeErrors naming the key."""
    with pytest.raises(TypeError, match="'my/key'"):
        to_metric_value("my/key", value)


@pytest.mark.parametrize("value", [10**400, -(10**400), Fraction(10**400, 3)])
def test_to_metric_value_rejects_numbers_beyond_float64_with_value_error(value: object) -> None:
    """Numbers too large for a float64 are ValueErrors, never a bare OverflowError."""
    with pytest.raises(ValueError, match="'k'"):
        to_metric_value("k", value)


class _FakeTensor:
    """Minimal stand-in for a torch tensor: numel() and item()."""

    def __init__(self, *vals: float) -> None:
        self.vals = vals

    def numel(self) -> int:
        return len(self.vals)

    def item(self) -> float:
        if len(self.vals) != 1:
            raise RuntimeError("a Tensor with more than one element cannot be converted to Scalar")
        return self.vals[0]


def test_to_metric_value_accepts_one_element_tensor() -> None:
    """A 1-element tensor-like object is unwrapped with item()."""
    assert to_metric_value("k", _FakeTensor(0.25)) == 0.25


@pytest.mark.parametrize("n", [0, 2, 5])
def test_to_metric_value_rejects_multi_element_tensor_with_type_error(n: int) -> None:
    """A tensor-like object with other than one element is a TypeError naming the size."""
    with pytest.raises(TypeError, match=f"{n} elements"):
        to_metric_value("k", _FakeTensor(*([1.0] * n)))


def test_to_metric_value_numpy_scalars_and_arrays() -> None:
    """numpy scalars and 1-element arrays convert; larger, empty and str arrays are TypeErrors."""
    np = pytest.importorskip("numpy")
    for v, want in [
        (np.float32(1.5), 1.5),
        (np.float64(-2.0), -2.0),
        (np.int64(3), 3.0),
        (np.uint8(255), 255.0),
        (np.bool_(True), 1.0),
        (np.array(2.5), 2.5),
        (np.array([4.0]), 4.0),
    ]:
        out = to_metric_value("k", v)
        assert out == want and type(out) is float, v
    for wrong in (np.array([1.0, 2.0]), np.array([]), np.str_("x"), np.complex128(1j), np.zeros((2, 2))):
        with pytest.raises(TypeError):
            to_metric_value("k", wrong)


# ----------------------------------------------------------------------------- to_field_value


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, ("bool", True)),
        (False, ("bool", False)),
        (0, ("int", 0)),
        (-(2**63), ("int", -(2**63))),
        (2**63 - 1, ("int", 2**63 - 1)),
        (1.5, ("float", 1.5)),
        (math.inf, ("float", math.inf)),
        ("", ("str", "")),
        ("héllo ✓", ("str", "héllo ✓")),
        ("x" * MAX_FIELD_STR_BYTES, ("str", "x" * MAX_FIELD_STR_BYTES)),
        ([], ("list", [])),
        ([1, 2.5, "a", True], ("list", [1, 2.5, "a", True])),
        ((1, "b"), ("list", [1, "b"])),
        (dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC), ("datetime", 1704164645.0)),
        (dt.datetime(2024, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=2))), ("datetime", 1704060000.0)),
    ],
)
def test_to_field_value_tags_supported_values(value: object, expected: tuple[str, object]) -> None:
    """Each supported value maps to its (type tag, payload) with the payload's exact type."""
    out = to_field_value("p", value)
    assert out == expected
    assert type(out[1]) is type(expected[1])


def test_to_field_value_bool_is_not_int() -> None:
    """True is tagged 'bool', never 'int' (bool is an int subclass)."""
    assert to_field_value("p", True)[0] == "bool"
    assert to_field_value("p", [True])[1] == [True] and type(to_field_value("p", [True])[1][0]) is bool


def test_to_field_value_naive_datetime_is_local_time() -> None:
    """A naive datetime is interpreted in local time, like datetime.timestamp()."""
    naive = dt.datetime(2024, 6, 1, 12, 0, 0)
    assert to_field_value("p", naive) == ("datetime", naive.timestamp())


@pytest.mark.parametrize(
    "value",
    [
        None,
        object(),
        b"bytes",
        {1, 2},
        dt.date(2024, 1, 1),
        dt.timedelta(1),
        1j,
        [[1]],
        [(1,)],
        [None],
        [dt.datetime(2024, 1, 1)],
        [{"a": 1}],
        [b"x"],
        {"a": 1},
    ],
)
def test_to_field_value_rejects_unsupported_types_with_type_error(value: object) -> None:
    """None, objects, bytes, sets, dates, nested or mixed lists and dicts are TypeErrors."""
    with pytest.raises(TypeError, match=r"field 'p(\[\d+\])?'"):
        to_field_value("p", value)


@pytest.mark.parametrize(
    "value",
    [
        2**63,
        -(2**63) - 1,
        10**40,
        [1, 2**64],
        "x" * (MAX_FIELD_STR_BYTES + 1),
        "é" * (MAX_FIELD_STR_BYTES // 2 + 1),
        "bad \ud800 surrogate",
        ["ok", "\udfff"],
    ],
)
def test_to_field_value_rejects_out_of_range_values_with_value_error(value: object) -> None:
    """Ints beyond 64 bits, strings over 64 KiB (UTF-8 bytes) and unencodable strings are ValueErrors."""
    with pytest.raises(ValueError):
        to_field_value("p", value)


def test_to_field_value_numpy_scalars() -> None:
    """numpy scalars and 0-d arrays are unwrapped to plain Python payloads; arrays are TypeErrors."""
    np = pytest.importorskip("numpy")
    cases = [
        (np.float32(1.5), ("float", 1.5)),
        (np.float64(2.5), ("float", 2.5)),
        (np.int64(-3), ("int", -3)),
        (np.int32(7), ("int", 7)),
        (np.bool_(False), ("bool", False)),
        (np.array(4), ("int", 4)),
        ([np.int64(1), np.float32(0.5)], ("list", [1, 0.5])),
    ]
    for v, want in cases:
        out = to_field_value("p", v)
        assert out == want, v
        payload = out[1] if out[0] != "list" else out[1][0]
        assert type(payload) in (bool, int, float), (v, type(payload))
    with pytest.raises(TypeError):
        to_field_value("p", np.array([1, 2]))
    with pytest.raises(ValueError):
        to_field_value("p", np.uint64(2**64 - 1))


# ----------------------------------------------------------------------------- flatten_fields


def test_flatten_fields_single_value() -> None:
    """A scalar at a path yields one (path, value) pair."""
    assert flatten_fields("cfg/lr", 0.1) == [("cfg/lr", ("float", 0.1))]


def test_flatten_fields_flattens_nested_dicts_in_order() -> None:
    """Nested mappings become '/'-joined sub-paths, in insertion order."""
    value = {"lr": 0.1, "opt": {"name": "adam", "betas": [0.9, 0.99]}, "n": 3}
    assert flatten_fields("cfg", value) == [
        ("cfg/lr", ("float", 0.1)),
        ("cfg/opt/name", ("str", "adam")),
        ("cfg/opt/betas", ("list", [0.9, 0.99])),
        ("cfg/n", ("int", 3)),
    ]


def test_flatten_fields_accepts_any_mapping() -> None:
    """OrderedDict and read-only mapping proxies are flattened like dicts."""
    assert flatten_fields("m", OrderedDict(a=1)) == [("m/a", ("int", 1))]
    assert flatten_fields("m", MappingProxyType({"b": True})) == [("m/b", ("bool", True))]


def test_flatten_fields_key_with_slash_nests() -> None:
    """A dict key containing '/' makes a deeper path."""
    assert flatten_fields("a", {"b/c": 1}) == [("a/b/c", ("int", 1))]


@pytest.mark.parametrize(
    ("path", "value", "exc"),
    [
        (1, 1, TypeError),
        ("a//b", 1, ValueError),
        ("../x", 1, ValueError),
        ("", 1, ValueError),
        ("cfg", {}, ValueError),
        ("cfg", {"a": {}}, ValueError),
        ("cfg", {1: "x"}, TypeError),
        ("cfg", {"": 1}, ValueError),
        ("cfg", {"..": 1}, ValueError),
        ("cfg", {"a\n": 1}, ValueError),
        ("cfg", {"x" * MAX_KEY_CHARS: 1}, ValueError),
        ("cfg", {"a": None}, TypeError),
        ("cfg", {"a": 2**64}, ValueError),
        ("cfg", {"a": [[1]]}, TypeError),
    ],
)
def test_flatten_fields_rejects_bad_entries(path: object, value: object, exc: type[Exception]) -> None:
    """Bad paths, empty dicts, non-str keys and bad values raise the precise exception type."""
    with pytest.raises(exc):
        flatten_fields(bad(path), value)


def test_flatten_fields_is_all_or_nothing() -> None:
    """A bad entry after good ones raises, so no partial list can be used."""
    with pytest.raises(TypeError):
        flatten_fields("cfg", {"a": 1, "b": 2, "c": None})


def test_is_finite() -> None:
    """is_finite is false exactly for NaN and infinities."""
    assert is_finite(1.0) and is_finite(-0.0)
    assert not any(is_finite(v) for v in (math.nan, math.inf, -math.inf))


@pytest.mark.parametrize(
    ("tag", "val"),
    [
        ("bool", True),
        ("int", -(2**63)),
        ("float", 1.5),
        ("str", "x"),
        ("datetime", 1.7e9),
        ("list", [1, 2.0, "a", False]),
        ("artifact", ["m.pt", 10, "ab" * 32, True, "/x/m.pt"]),
    ],
)
def test_check_field_admits_a_value_of_its_tag(tag: str, val: object) -> None:
    """What to_field_value produces, check_field admits unchanged (the receiving side)."""
    assert check_field("a/b", tag, val) == ("a/b", (tag, val))


@pytest.mark.parametrize(
    ("path", "tag", "val"),
    [
        (1, "int", 1),
        ("a//b", "int", 1),
        ("a", "pickle", b"x"),
        ("a", "int", 2**63),
        ("a", "int", True),
        ("a", "float", 1),
        ("a", "list", [[1]]),
        ("a", "artifact", ["m.pt", 10, "ab", True]),
    ],
)
def test_check_field_refuses_a_value_that_does_not_match_its_tag(path: object, tag: str, val: object) -> None:
    """A wrong path, an unknown tag or a value of another type raises TypeError/ValueError."""
    with pytest.raises((TypeError, ValueError)):
        check_field(path, tag, val)
