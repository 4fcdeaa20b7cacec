"""init_run: arguments checked before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest

import coordinator
from tests.client.helpers import open_store
from tests.untyped import bad


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
        coordinator.init_run(**bad(kwargs), settings=coordinator.Settings(**bad(fields)))


def test_ctrl_c_during_init_run_leaves_the_run_interrupted_and_no_aggregator(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A KeyboardInterrupt after rank 0 started its aggregator: the run is stored `interrupted`, not `running`."""
    import coordinator.client.start as start

    def interrupted(*_: object, **__: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(start, "Run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        coordinator.init_run(project="p", name="interrupted-at-start")
    s = open_store(store_dir)
    try:
        info = s.run_info()
    finally:
        s.close()
    assert info.state == "interrupted"
    assert info.report is not None and list(info.report["interrupted_ranks"]) == ["0"]
