"""Section 1's runs: the unmarked loads at the library's default for rings, the socket loads with ``rings=False``."""

from __future__ import annotations

from pathlib import Path

from benchmarks.hotpath import _settings
from coordinator.settings import Settings


def test_a_default_run_leaves_rings_to_the_library_and_a_socket_run_turns_them_off(tmp_path: Path) -> None:
    default, socket = _settings(tmp_path), _settings(tmp_path, socket=True)
    assert "rings" not in default.explicit() and default.rings is Settings().rings
    assert socket.explicit()["rings"] is False
    # rings=False is a field that differs from the default: it wins over the environment; the default does not.
    assert Settings.resolve(socket, environ={"COORDINATOR_RINGS": "1"}).rings is False
    assert Settings.resolve(default, environ={"COORDINATOR_RINGS": "0"}).rings is False
    assert Settings.resolve(default, environ={}).rings is Settings().rings
    for s in (default, socket):  # the rest as before: one rank, no system sampler
        assert (s.rank, s.world_size, s.system_metrics_interval_s, s.dir) == (0, 1, 0, str(tmp_path))
