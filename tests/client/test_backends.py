"""A run's trackers: the forward_* settings become each backend's default options."""

from __future__ import annotations

import dataclasses

import pytest

from coordinator.client.backends import FORWARD_OPTIONS, run_backends
from coordinator.errors import ConfigError
from coordinator.forward.settings import ForwarderSettings
from coordinator.settings import Settings


def test_every_forwarder_option_has_a_forward_setting() -> None:
    """FORWARD_OPTIONS is exactly ForwarderSettings' fields, each with a Settings.forward_<name>."""
    assert set(FORWARD_OPTIONS) == {f.name for f in dataclasses.fields(ForwarderSettings)}
    names = {f.name for f in dataclasses.fields(Settings)}
    assert all(f"forward_{o}" in names for o in FORWARD_OPTIONS)


def test_changed_forward_settings_are_defaults_and_a_backend_option_wins() -> None:
    """Only settings that differ from the defaults are added; a backend's own option is kept."""
    s = Settings(
        backend=("tensorboard", "mlflow"),
        backend_options={"tensorboard": {"logdir": "/tmp/x", "batch_points": 7}, "mlflow": {}},
        forward_batch_points=123,
        forward_per_rank=False,
        forward_max_points_per_key_per_s=2.5,
    )
    got = run_backends(s)
    defaults = {"per_rank": False, "max_points_per_key_per_s": 2.5}
    assert got == {
        "tensorboard": {"logdir": "/tmp/x", "batch_points": 7, **defaults},
        "mlflow": {"batch_points": 123, **defaults},
    }


def test_no_backend_means_no_forwarding_and_the_environment_is_not_read_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Settings without a backend give {} even if $COORDINATOR_BACKEND is set (the settings already took it in)."""
    monkeypatch.setenv("COORDINATOR_BACKEND", "tensorboard")
    assert run_backends(Settings()) == {}
    assert run_backends(Settings(backend=("tensorboard",))) == {"tensorboard": {}}
    with pytest.raises(ConfigError, match="unknown backend"):
        run_backends(Settings(backend=("nope",)))
