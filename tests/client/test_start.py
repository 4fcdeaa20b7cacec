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


def _aggregators_of_this_process() -> list[int]:
    """Live child processes of this one running the aggregator (from /proc)."""
    import os

    me = str(os.getpid())
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            stat = (p / "stat").read_text()
            cmd = (p / "cmdline").read_bytes()
        except OSError:  # gone meanwhile
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[1] == me and fields[0] != "Z" and b"coordinator.aggregator" in cmd:
            out.append(int(p.name))
    return out


@pytest.mark.parametrize(
    ("where", "world"),
    [("the first WELCOME", 1), ("the endpoint's publish", 2)],
)
def test_ctrl_c_during_init_run_leaves_the_run_interrupted_and_no_aggregator(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch, where: str, world: int
) -> None:
    """A KeyboardInterrupt after rank 0 started its aggregator, while the run awaits its first WELCOME
    or while rank 0 publishes the endpoint to the other ranks: the aggregator is stopped at once
    (not left running until this process exits: a notebook's kernel), and the run is stored
    `interrupted`, not `running`."""
    import coordinator.client.start as start
    from coordinator.transport.discovery import Rendezvous

    def interrupted(*_: object, **__: object) -> None:
        raise KeyboardInterrupt

    if where == "the first WELCOME":
        monkeypatch.setattr(start, "Run", interrupted)
    else:
        monkeypatch.setattr(Rendezvous, "publish", interrupted)
    with pytest.raises(KeyboardInterrupt):
        coordinator.init_run(project="p", settings=coordinator.Settings(rank=0, world_size=world))
    assert _aggregators_of_this_process() == []
    s = open_store(store_dir)
    try:
        info = s.run_info()
    finally:
        s.close()
    assert info.state == "interrupted"
    # Every rank of the run is interrupted: rank 1, which never came, too.
    assert info.report is not None and list(info.report["interrupted_ranks"]) == [str(r) for r in range(world)]
