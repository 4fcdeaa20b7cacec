"""ForwarderSettings: defaults are the global settings' forward_* fields; its keys are split from backend options."""

from __future__ import annotations

from dataclasses import fields

import pytest

from coordinator.errors import ConfigError
from coordinator.forward.settings import ForwarderSettings
from coordinator.settings import DEFAULTS


def test_every_default_is_the_global_forward_setting() -> None:
    d = ForwarderSettings()
    for f in fields(ForwarderSettings):
        assert getattr(d, f.name) == getattr(DEFAULTS, f"forward_{f.name}"), f.name


def test_split_types_string_options_and_leaves_the_rest_to_the_backend() -> None:
    s, rest = ForwarderSettings.split(
        {"batch_points": "7", "per_rank": "off", "max_points_per_key_per_s": "2.5", "logdir": "/x"}
    )
    assert (s.batch_points, s.per_rank, s.max_points_per_key_per_s) == (7, False, 2.5)
    assert rest == {"logdir": "/x"}


@pytest.mark.parametrize(
    "options",
    [{"batch_points": 0}, {"max_backoff_s": -1}, {"rank_key": "{key}"}, {"rank_key": "{rank}/{nope}/{key}"}],
)
def test_bad_values_are_config_errors(options: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        ForwarderSettings.split(options)
