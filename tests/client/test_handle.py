"""``Handle.fetch_values``: a series asked for page by page and assembled (issue 11, item 9)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

import coordinator
import coordinator.client.delivery as delivery
import coordinator.client.modes as modes
from coordinator.transport import wire
from coordinator.transport.requests import Request
from tests.untyped import bad

np = pytest.importorskip("numpy")

N = 5_500


def _log_series(run: coordinator.Run) -> None:
    for s in range(N):
        run.log({"loss": s * 0.5}, step=s)
    run.wait(60)


def test_fetch_values_pages_through_the_aggregator_and_assembles_the_series(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(delivery, "PAGE_POINTS", 1000)
    with coordinator.init_run() as run:
        _log_series(run)
        queries: list[dict[str, Any]] = []
        assert run._sender is not None
        submit = run._sender.submit

        def counting(req: Request) -> Request:
            if req.kind == wire.QUERY:
                queries.append(req.payload)
            return submit(req)

        monkeypatch.setattr(run._sender, "submit", counting)
        expected = [(s, s * 0.5) for s in range(N)]
        assert run["loss"].fetch_values(rank=0) == expected
        assert [q["after"] for q in queries] == [-1, 999, 1999, 2999, 3999, 4999]
        assert all(q["limit"] == 1000 for q in queries)
        steps, values = run["loss"].fetch_values(as_numpy=True)
        assert steps.dtype == np.int64 and values.dtype == np.float64
        assert steps.tolist() == list(range(N)) and values.tolist() == [v for _, v in expected]
        assert run["nothing"].fetch_values() == []
        e_steps, e_values = run["nothing"].fetch_values(as_numpy=True)
        assert len(e_steps) == 0 and len(e_values) == 0


def test_read_only_fetch_values_pages_through_the_journal(store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with coordinator.init_run() as run:
        _log_series(run)
        rid = run.id
    monkeypatch.setattr(modes, "MAX_PAGE_POINTS", 700)
    ro = coordinator.init_run(with_id=rid, mode="read-only")
    try:
        assert ro["loss"].fetch_values(rank=0) == [(s, s * 0.5) for s in range(N)]
        steps, values = ro["loss"].fetch_values(as_numpy=True)
        assert steps.tolist() == list(range(N)) and values[-1] == (N - 1) * 0.5
        with pytest.raises(coordinator.ClosedError):
            ro.fail("read-only runs do not end")
    finally:
        ro.stop()


def test_as_numpy_without_numpy_says_how_to_install_it(store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with coordinator.init_run() as run:
        run.log({"a": 1.0}, step=0)
        run.wait(30)
        monkeypatch.setitem(sys.modules, "numpy", None)
        with pytest.raises(ImportError, match=r"pip install"):
            run["a"].fetch_values(as_numpy=True)
        with pytest.raises(TypeError):
            run["a"].fetch_values(as_numpy=bad("yes"))
        assert run["a"].fetch_values() == [(0, 1.0)]
