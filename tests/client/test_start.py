"""init_run: arguments checked before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest

import coordinator


@pytest.mark.parametrize(
    ("kwargs", "fields"),
    [
        ({"mode": "bogus"}, {}),
        ({}, {"max_buffer_points": 0}),
        ({"policies": {"*": "median"}}, {}),
        ({"project": ""}, {}),
        ({}, {"rank": 3, "world_size": 2}),
        ({}, {"flush_interval_s": 0}),
    ],
)
def test_bad_init_arguments_raise_config_error(
    store_dir: Path, kwargs: dict[str, object], fields: dict[str, object]
) -> None:
    """Bad arguments fail at init_run with ConfigError, before anything starts."""
    with pytest.raises(coordinator.ConfigError):
        coordinator.init_run(**kwargs, settings=coordinator.Settings(**fields))  # type: ignore[arg-type]
