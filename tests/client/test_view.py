"""The rank's local view: decoding wire values, nested fetch, state answers."""

from __future__ import annotations

import datetime as dt

import pytest

from coordinator.client.view import LocalView, field_from_wire


def test_wire_values_decode_to_what_the_user_assigned() -> None:
    """Artifacts become a record dict, datetimes an aware datetime at the same instant; others pass through."""
    rec = field_from_wire("artifact", ["a.pt", 3, "ab" * 32, True, "/x/ab"])
    assert rec == {"name": "a.pt", "size": 3, "sha256": "ab" * 32, "copied": True, "path": "/x/ab"}
    when = field_from_wire("datetime", 1_700_000_000.5)
    assert when.tzinfo is not None and when.timestamp() == 1_700_000_000.5
    assert field_from_wire("int", 7) == 7 and field_from_wire("list", [1, 2]) == [1, 2]


def test_fetch_reads_fields_then_last_values_then_nests_a_prefix() -> None:
    """A field wins; a series gives its last value; a prefix gives the fields under it as a nested dict."""
    v = LocalView(rank=2)
    v.fields.update({"p/lr": 0.1, "p/opt/name": "sgd", "p/opt/m": 0.9, "loss": "field"})
    v.last.update({"loss": (3, 1.5), "acc": (4, 0.75)})
    assert v.fetch("loss") == "field"
    assert v.fetch("acc") == 0.75
    assert v.fetch("p") == {"lr": 0.1, "opt": {"name": "sgd", "m": 0.9}}
    assert v.fetch_last("acc") == 0.75
    with pytest.raises(KeyError, match="rank 2"):
        v.fetch("pp")
    with pytest.raises(KeyError, match="sync"):
        v.fetch_last("p/lr")


def test_a_state_answer_updates_fields_last_values_and_rank_states() -> None:
    """apply_state decodes fields, keeps own writes it does not mention, and replaces the rank states."""
    v = LocalView(rank=0)
    v.fields["mine"] = 1
    v.ranks = {"5": "live"}
    v.apply_state(
        {
            "fields": {"t": ("datetime", 0.0), "n": ("str", "x")},
            "last": {"loss": [7, 0.5]},
            "ranks": {"0": "live", "1": "lost"},
        }
    )
    assert v.fields["mine"] == 1 and v.fields["n"] == "x"
    assert v.fields["t"] == dt.datetime.fromtimestamp(0.0).astimezone()
    assert v.last == {"loss": (7, 0.5)}
    assert v.rank_states() == {0: "live", 1: "lost"}
    v.apply_state({})
    assert v.rank_states() == {} and v.last == {"loss": (7, 0.5)}
