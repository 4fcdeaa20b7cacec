"""The rules between a run's series, fields and policies."""

from __future__ import annotations

import pytest

from coordinator.client.keys import KeyRegistry
from coordinator.core.limits import MAX_KEYS_PER_RUN


def test_a_path_is_either_a_series_or_a_field() -> None:
    """A field's path cannot become a series and a series' key cannot be assigned; sys/* is reserved."""
    k = KeyRegistry("r")
    k.fields.add("cfg/lr")
    k.add_series("loss")
    with pytest.raises(ValueError, match="is a field"):
        k.add_series("cfg/lr")
    with pytest.raises(ValueError, match="is a field"):
        k.add_series("sys/state")
    with pytest.raises(ValueError, match="is a series"):
        k.check_fields(["ok", "loss"])
    with pytest.raises(ValueError, match="sys/"):
        k.check_fields(["sys/x"])
    with pytest.raises(TypeError):
        k.check_new(5)
    k.check_fields(["ok"])
    assert k.series == {"loss"}


def test_too_many_series_keys_are_refused_naming_the_run() -> None:
    """Past MAX_KEYS_PER_RUN a new key raises; a known key is still fine."""
    k = KeyRegistry("run-7")
    k.series.update(f"k{i}" for i in range(MAX_KEYS_PER_RUN))
    k.add_series("k0")
    with pytest.raises(ValueError, match="run-7"):
        k.add_series("new")


def test_a_key_keeps_its_first_policy() -> None:
    """The first declaration is new, repeating it is not; another policy, or one after logging, raises."""
    k = KeyRegistry("r")
    assert k.claim_policy("tp", "sum") is True
    assert k.claim_policy("tp", "sum") is False
    with pytest.raises(ValueError, match="first policy"):
        k.claim_policy("tp", "max")
    k.add_series("loss")
    with pytest.raises(ValueError, match="from init_run"):
        k.claim_policy("loss", "max")
    with pytest.raises(ValueError):
        k.claim_policy("a//b", "max")
    assert k.policies == {"tp": "sum"}
