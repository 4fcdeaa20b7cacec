"""The DDP comparison's choice of variants: baselines added once, missing peers left out."""

from __future__ import annotations

from benchmarks.ddp_overhead import with_baselines


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
