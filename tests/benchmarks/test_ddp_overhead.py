"""The DDP comparison's choice of variants: baselines added once, missing peers left out."""

from __future__ import annotations

import pytest

from benchmarks.ddp_overhead import coordinator_settings, flush_ms, with_baselines


def test_chosen_variants_get_their_baselines_once_and_lose_the_peers_not_installed() -> None:
    chosen = ["coordinator+wake5ms", "peer:trackio+wake5ms", "peer:wandb+wake5ms", "none", "coordinator"]
    variants, missing = with_baselines(chosen, {"trackio": True, "wandb": False})
    assert variants == ["none", "none+wake5ms", "coordinator+wake5ms", "peer:trackio+wake5ms", "coordinator"]
    assert missing == ["wandb"]


def test_without_a_warm_variant_only_none_is_added() -> None:
    assert with_baselines(["coordinator", "peer:tensorboard"], {"tensorboard": True}) == (
        ["none", "coordinator", "peer:tensorboard"],
        [],
    )


def test_a_flush_variant_names_its_interval_in_ms() -> None:
    assert flush_ms("coordinator-flush5ms") == 5
    assert flush_ms("coordinator-flush200ms") == 200
    for bad in ("coordinator-flush", "coordinator-flush200", "coordinator-flush0ms", "coordinator-flush2.5ms"):
        with pytest.raises(ValueError, match="coordinator-flush<N>ms"):
            flush_ms(bad)


def test_a_mistyped_flush_variant_is_refused_before_the_launch() -> None:
    assert with_baselines(["coordinator-flush200ms+wake5ms"], {})[0] == [
        "none",
        "none+wake5ms",
        "coordinator-flush200ms+wake5ms",
    ]
    with pytest.raises(ValueError, match="coordinator-flush<N>ms"):
        with_baselines(["coordinator-flush200+wake5ms"], {})
    with pytest.raises(ValueError, match="coordinator-disabled"):
        with_baselines(["coordinator-disable"], {})
    assert with_baselines(["coordinator-socket+wake5ms"], {})[0] == [
        "none",
        "none+wake5ms",
        "coordinator-socket+wake5ms",
    ]


def test_each_coordinator_variant_sets_its_own_settings() -> None:
    """``coordinator`` leaves ``rings`` to the library's default (and the environment); the socket's variants,
    the flush intervals' among them (with rings the sender does not flush), set ``rings=False``."""
    assert coordinator_settings("coordinator") == {}
    assert coordinator_settings("coordinator-disabled") == {"mode": "disabled"}
    assert coordinator_settings("coordinator-nolog") == {}
    assert coordinator_settings("coordinator-socket") == {"rings": False}
    assert coordinator_settings("coordinator-flush500ms") == {"rings": False, "flush_interval_s": 0.5}
    assert coordinator_settings("coordinator-flush500ms-copies50ms") == {
        "rings": False,
        "flush_interval_s": 0.5,
        "kill_window_s": 0.05,
    }
    with pytest.raises(ValueError, match="coordinator-socket"):
        coordinator_settings("coordinator-rings")  # no longer a variant: the default is rings
    for bad in (
        "coordinator-flush50ms-copies50ms",
        "coordinator-flush500ms-copies0ms",
        "coordinator-flush500ms-copies",
    ):
        with pytest.raises(ValueError):
            coordinator_settings(bad)
