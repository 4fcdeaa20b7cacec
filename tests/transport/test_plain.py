"""Bounded msgpack's packing: a large payload packed in slices, and a list's head, are msgpack's own bytes."""

from __future__ import annotations

import os
from typing import Any

import msgpack
import pytest

from coordinator.transport.plain import SLICE_BYTES, list_head, packb, packb_sliced

_SIZES = (0, 1, 255, 256, 65_535, 65_536, 3 * SLICE_BYTES + 17)
"""Byte counts across msgpack's bin8/bin16/bin32 headers and the slice size."""


def _view(n: int) -> memoryview:
    return memoryview(os.urandom(n))


def _payload(sizes: tuple[int, ...], small_chunks: int) -> dict[str, Any]:
    views = [["k", _view(n), b"short"] for n in sizes]
    smalls = [[f"s{i}", b"12345678", b"abcdefgh"] for i in range(small_chunks)]
    return {
        "m": smalls[: small_chunks // 2] + views + smalls[small_chunks // 2 :],
        "f": [["p", "str", "x"], ["q", "bytes", _view(300)]],
        "t": 1.5,
        "b": [[b"keys", _view(70_000), _view(9)], [[1, 2], [_view(5)]]],  # a view one list deeper: packed whole
    }


def _plain(obj: Any) -> Any:
    """``obj`` with every view as bytes: what msgpack packs the same way."""
    if isinstance(obj, memoryview):
        return bytes(obj)
    if isinstance(obj, list):
        return [_plain(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


@pytest.mark.parametrize("small_chunks", [0, 14, 40, 70_000])  # list headers: fixarray, array16, array32
def test_a_payload_packed_in_slices_is_msgpacks_bytes_read_only_with_a_pause_per_slice(small_chunks: int) -> None:
    payload = _payload(_SIZES, small_chunks)
    pauses: list[int] = []
    view = packb_sliced(payload, 1 << 20, lambda: pauses.append(1))
    assert isinstance(view, memoryview) and view.readonly
    expected = msgpack.packb(_plain(payload), use_bin_type=True)
    assert bytes(view) == expected
    assert msgpack.unpackb(view, raw=False) == msgpack.unpackb(expected, raw=False)
    # Every SLICE_BYTES copied are followed by a pause: at least one per slice of the whole.
    assert len(pauses) >= len(expected) // SLICE_BYTES


def test_a_small_payload_is_packed_in_one_call_as_bytes_without_a_pause() -> None:
    payload = {"m": [["k", _view(100), b"x"]], "f": [], "t": 1.0}
    pauses: list[int] = []
    out = packb_sliced(payload, 4096, lambda: pauses.append(1))
    assert isinstance(out, bytes) and out == packb(_plain(payload)) and not pauses


@pytest.mark.parametrize("n", _SIZES)
def test_a_list_head_and_its_last_item_are_the_list_packed(n: int) -> None:
    items: list[Any] = [3, 2**40, b"envelope", "s"]
    last = os.urandom(n)
    assert list_head(items, n) + last == packb([*items, last])
