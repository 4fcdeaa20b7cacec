"""The forwarder: journal order, durable cursor, retries and backoff, replacement, thinning, sync and doctor.

Stores are built by the real library in-process (4 ranks through one real aggregator process);
the backend is the real TensorBoard writer, read back with TensorBoard's own EventAccumulator.
Failures are injected by wrapping that real backend (``_Flaky``), never by replacing the forwarder.
"""

from __future__ import annotations

import json
import re
import threading
import time
from array import array
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import pytest

import coordinator
from coordinator import cli
from coordinator.core.retry import retry_after_of
from coordinator.errors import ConfigError, SinkError
from coordinator.forward.backend import (
    Backend,
    BackendRejectedError,
    Series,
    check_backends,
    get_backend,
    resolve_backends,
)
from coordinator.forward.cursor import destination_of
from coordinator.forward.forwarder import Forwarder
from coordinator.forward.settings import ForwarderSettings
from coordinator.journal.store import MAIN_RANK, ChunkRow, LocalStore, RunInfo, TxnData

KEYS = ("train/loss", "train/acc")


def value(key_index: int, rank: int, step: int) -> float:
    """What rank ``rank`` logs for key number ``key_index`` at ``step`` (exact in float32 too)."""
    return key_index * 100_000 + rank * 1000 + step + 0.25


def main_value(key_index: int, ranks: int, step: int) -> float:
    """The mean over ranks of :func:`value`."""
    return sum(value(key_index, r, step) for r in range(ranks)) / ranks


def make_run(
    root: Path, monkeypatch: pytest.MonkeyPatch, *, ranks: int = 4, steps: int = 200, keys: Sequence[str] = KEYS
) -> Path:
    """A finished run of ``ranks`` in-process ranks, each logging ``keys`` for ``steps`` steps; its run.db."""
    runs: list[coordinator.Run] = []
    r0 = coordinator.init_run(
        project="fwd",
        name="forward-me",
        settings=coordinator.Settings(dir=str(root), rank=0, world_size=ranks, handle_sigterm=False),
    )
    runs.append(r0)
    with monkeypatch.context() as m:
        assert r0.endpoint is not None
        m.setenv("COORDINATOR_ENDPOINT", r0.endpoint)
        m.setenv("COORDINATOR_RUN_ID", r0.id)
        for r in range(1, ranks):
            runs.append(
                coordinator.init_run(
                    project="fwd",
                    name="forward-me",
                    settings=coordinator.Settings(dir=str(root), rank=r, world_size=ranks, handle_sigterm=False),
                )
            )
    try:
        r0["parameters"] = {"lr": 0.1, "batch_size": 64, "optimizer": "adam"}
        for s in range(steps):
            for r, run in enumerate(runs):
                run.log({k: value(i, r, s) for i, k in enumerate(keys)}, step=s)
    finally:
        for run in reversed(runs):
            run.stop(60)
    assert r0.store_path is not None
    return Path(r0.store_path)


def expected(ranks: int, steps: int, keys: Sequence[str] = KEYS) -> dict[str, list[tuple[int, float]]]:
    """Backend series name -> (step, value) for a :func:`make_run` run."""
    out: dict[str, list[tuple[int, float]]] = {}
    for i, k in enumerate(keys):
        out[k] = [(s, main_value(i, ranks, s)) for s in range(steps)]
        for r in range(ranks):
            out[f"ranks/{r}/{k}"] = [(s, value(i, r, s)) for s in range(steps)]
    return out


def tb_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series under ``logdir`` as TensorBoard's own EventAccumulator reads it."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def assert_series(got: Mapping[str, list[tuple[int, float]]], want: Mapping[str, list[tuple[int, float]]]) -> None:
    """Same names, and per name the same steps once each with (float32-)equal values."""
    assert sorted(got) == sorted(want)
    for name, pts in want.items():
        g = got[name]
        assert [s for s, _ in g] == [s for s, _ in pts], f"{name}: steps missing or doubled"
        assert [v for _, v in g] == pytest.approx([v for _, v in pts], rel=1e-6), name


@pytest.fixture
def run_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A finished 4-rank, 200-step run."""
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    return make_run(tmp_path / "store", monkeypatch)


@runtime_checkable
class _Holding(Protocol):
    """A backend with the optional ``holds(state)`` check (asked by :func:`coordinator.forward.cursor.verified`)."""

    def holds(self, state: Mapping[str, Any]) -> bool: ...


class _Flaky:
    """The real TensorBoard backend behind a switch that makes its calls fail on demand."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.name = inner.name
        self.fail: list[BaseException] = []
        """Exceptions raised (one per call of log_metrics) before the real call."""
        self.crash_after_flush = False
        """Raise KeyboardInterrupt after the real flush: the process 'dies' before the cursor moves."""
        self.calls = 0

    def check(self) -> None:
        self.inner.check()

    def open(self, run: RunInfo, state: Mapping[str, Any] | None) -> None:
        self.inner.open(run, state)

    def log_metrics(self, batch: Sequence[Series]) -> int:
        self.calls += 1
        if self.fail:
            raise self.fail.pop(0)
        return self.inner.log_metrics(batch)

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.inner.log_params(params)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.inner.set_tags(tags)

    def flush(self) -> None:
        self.inner.flush()
        if self.crash_after_flush:
            raise KeyboardInterrupt("simulated crash after the backend accepted the batch")

    def state(self) -> dict[str, Any]:
        return self.inner.state()

    def finish(self, state: str) -> None:
        self.inner.finish(state)

    def destination(self) -> str:
        return destination_of(self.inner)

    def holds(self, state: Mapping[str, Any]) -> bool:
        assert isinstance(self.inner, _Holding), "wraps a backend that can check its destination"
        return self.inner.holds(state)

    def close(self) -> None:
        self.inner.close()

    def read_back(self, name: str) -> list[tuple[int, float]]:
        return self.inner.read_back(name)

    def client_version(self) -> str:
        return self.inner.client_version()


def tb_backend(run_db: Path, **options: object) -> Backend:
    """A real TensorBoard backend writing under the run directory."""
    return get_backend("tensorboard")(dict(options), run_db.parent)


class _Err(Exception):
    """A transient client error carrying a server's Retry-After."""

    def __init__(self, retry_after_s: float | None = None) -> None:
        super().__init__("HTTP 429 Too Many Requests" if retry_after_s is not None else "connection refused")
        self.retry_after_s = retry_after_s


# ------------------------------------------------------------------------------ the happy path


def test_every_main_and_per_rank_point_reaches_tensorboard_once_and_the_run_is_finished(run_db: Path) -> None:
    """4 ranks x 2 keys x 200 steps: main series and ranks/<r>/<key> series, each point once, in order."""
    fwd = Forwarder(run_db, "tensorboard")
    try:
        st = fwd.drain(60)
    finally:
        fwd.release()
    assert st["forwarded_points"] == 2 * 200 * 5
    assert st["finished"] == "finished"
    assert st["retries"] == st["failed_points"] == st["thinned_points"] == 0
    assert_series(tb_scalars(run_db.parent / "tensorboard"), expected(4, 200))
    saved = json.loads(fwd.path.read_text())
    assert saved["finished"] == "finished"
    assert saved["counters"]["forwarded_points"] == 2000
    again = Forwarder(run_db, "tensorboard")
    try:
        assert again.pending() == (0, 0)
        assert again.drain(30)["forwarded_points"] == 0
    finally:
        again.release()
    assert_series(tb_scalars(run_db.parent / "tensorboard"), expected(4, 200))


def test_per_rank_false_sends_only_the_reduced_series(run_db: Path) -> None:
    """Option per_rank=false: only the main series go to the backend."""
    fwd = Forwarder(run_db, "tensorboard", {"per_rank": "false"})
    try:
        fwd.drain(60)
    finally:
        fwd.release()
    got = tb_scalars(run_db.parent / "tensorboard")
    assert sorted(got) == sorted(KEYS)


# ------------------------------------------------------------------------------ crashes, retries, failures


def test_crash_after_the_backend_accepted_but_before_the_cursor_moved_doubles_nothing(run_db: Path) -> None:
    """Batch 2 is written and flushed, then the forwarder dies; a new one resumes and no point is doubled."""
    flaky = _Flaky(tb_backend(run_db))
    fwd = Forwarder(run_db, "tensorboard", {"batch_points": 400}, backend=flaky)
    with pytest.raises(KeyboardInterrupt):
        # One batch goes through; the next one "crashes" after its flush.
        fwd.drain(10, progress=lambda st: setattr(flaky, "crash_after_flush", True))
    fwd.release()
    committed = json.loads(fwd.path.read_text())["cursor"]
    assert committed > 0
    fwd2 = Forwarder(run_db, "tensorboard", {"batch_points": 400})
    try:
        st = fwd2.drain(60)
    finally:
        fwd2.release()
    assert st["cursor"] > committed
    assert_series(tb_scalars(run_db.parent / "tensorboard"), expected(4, 200))


def test_transient_errors_are_retried_with_backoff_and_retry_after_is_honoured(run_db: Path) -> None:
    """Two 429s with Retry-After 0.4 s, then a refused connection: all retried, nothing lost, counted."""
    flaky = _Flaky(tb_backend(run_db))
    flaky.fail = [_Err(0.4), _Err(0.4), _Err()]
    fwd = Forwarder(run_db, "tensorboard", {"base_backoff_s": 0.05}, backend=flaky)
    t0 = time.monotonic()
    try:
        st = fwd.drain(30)
    finally:
        fwd.release()
    assert time.monotonic() - t0 >= 0.8
    assert st["retries"] == 3
    assert st["last_error"] is not None and "connection refused" in st["last_error"]
    assert_series(tb_scalars(run_db.parent / "tensorboard"), expected(4, 200))


class _HtmlGateway:
    """A real HTTP server on 127.0.0.1 that answers its first ``bad`` requests like a proxy whose
    upstream is down (status 502, an HTML page), then with the tracker's JSON."""

    def __init__(self, bad: int) -> None:
        import http.server

        self.bad = bad
        self.requests = 0
        gw = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                gw.requests += 1
                status, ctype, body = (
                    (502, "text/html", b"<html><body><h1>502 Bad Gateway</h1></body></html>")
                    if gw.requests <= gw.bad
                    else (200, "application/json", b'{"ok": true}')
                )
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/log"
        self._thread = threading.Thread(target=self.server.serve_forever, name="html-gateway", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(30)


class _JsonClient(_Flaky):
    """The real TensorBoard backend behind a tracker client that, like many, reads every answer
    with ``response.json()``: a proxy's HTML page raises a real JSONDecodeError (a ValueError)."""

    def __init__(self, inner: Backend, url: str) -> None:
        super().__init__(inner)
        self.url = url

    def log_metrics(self, batch: Sequence[Series]) -> int:
        import requests

        self.calls += 1
        requests.post(self.url, json={"points": sum(len(s.points) for s in batch)}, timeout=10).json()
        return self.inner.log_metrics(batch)


def test_a_proxys_html_502_page_is_transient_retried_and_counted(run_db: Path) -> None:
    """Five HTML 502 pages (JSON decode errors): retried with backoff and counted, never permanent;
    every point then arrives once. Before the fix ValueError was permanent: stopped after three."""
    pytest.importorskip("requests")
    gw = _HtmlGateway(bad=5)
    try:
        client = _JsonClient(tb_backend(run_db), gw.url)
        fwd = Forwarder(run_db, "tensorboard", {"base_backoff_s": 0.01, "max_backoff_s": 0.05}, backend=client)
        try:
            st = fwd.drain(60)
        finally:
            fwd.release()
    finally:
        gw.close()
    assert gw.requests >= 6
    assert st["retries"] == 5 and st["failed"] is None and st["failed_points"] == 0
    assert st["last_error"] is not None and "JSONDecodeError" in st["last_error"]
    assert_series(tb_scalars(run_db.parent / "tensorboard"), expected(4, 200))


def test_retry_after_is_found_on_a_wrapped_response() -> None:
    """A Retry-After header on an exception's response (requests style), seconds or HTTP date."""

    class Resp:
        def __init__(self) -> None:
            self.headers = {"Retry-After": "7"}

    class HTTPError(Exception):
        def __init__(self, msg: str) -> None:
            super().__init__(msg)
            self.response = Resp()

    try:
        try:
            raise HTTPError("429")
        except HTTPError as inner:
            raise SinkError("mlflow: rate limited") from inner
    except SinkError as e:
        assert retry_after_of(e) == 7.0
    assert retry_after_of(ValueError("x")) is None


def test_a_backend_that_stays_down_makes_drain_raise_at_its_deadline_and_a_later_sync_resumes(run_db: Path) -> None:
    """drain(1.5) against a dead backend raises naming the unsent points; the cursor stays; resume completes."""
    flaky = _Flaky(tb_backend(run_db))
    flaky.fail = [_Err() for _ in range(1000)]
    fwd = Forwarder(run_db, "tensorboard", {"base_backoff_s": 0.1, "max_backoff_s": 0.4}, backend=flaky)
    t0 = time.monotonic()
    with pytest.raises(SinkError, match=r"tensorboard: 2000 points not forwarded .*coordinator sync"):
        fwd.drain(1.5)
    took = time.monotonic() - t0
    fwd.release()
    assert 1.4 <= took < 3.0
    assert flaky.calls >= 4, "backoff must stay bounded (max_backoff_s)"
    assert fwd.stats()["retries"] == flaky.calls
    fwd2 = Forwarder(run_db, "tensorboard")
    try:
        assert fwd2.pending()[1] == 2000
        fwd2.drain(30)
    finally:
        fwd2.release()
    assert_series(tb_scalars(run_db.parent / "tensorboard"), expected(4, 200))


def test_a_refused_batch_stops_the_forwarder_loudly_after_max_rejected_attempts(run_db: Path) -> None:
    """BackendRejectedError three times: drain raises, the points are counted failed, the cursor does not move."""
    flaky = _Flaky(tb_backend(run_db))
    flaky.fail = [BackendRejectedError("tensorboard: no") for _ in range(3)]
    fwd = Forwarder(run_db, "tensorboard", {"base_backoff_s": 0.01}, backend=flaky)
    with pytest.raises(SinkError, match="refused a batch of 2000 points 3 times"):
        fwd.drain(30)
    fwd.release()
    st = fwd.stats()
    assert st["failed_points"] == 2000
    assert st["cursor"] == 0
    assert flaky.calls == 3


def test_a_second_forwarder_to_the_same_backend_is_refused(run_db: Path) -> None:
    """Two forwarders on one run and backend would double points: the second one gets a SinkError."""
    a = Forwarder(run_db, "tensorboard")
    b = Forwarder(run_db, "tensorboard")
    try:
        a.pending()
        with pytest.raises(SinkError, match="another forwarder"):
            b.pending()
    finally:
        a.release()
        b.release()


# ------------------------------------------------------------------------------ live run, thread, close


def test_thread_forwards_a_live_run_and_close_drains_and_finishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """start() while the run logs; close() after the run ended sends the rest and marks the run finished."""
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    run = coordinator.init_run(
        project="live",
        settings=coordinator.Settings(dir=str(tmp_path / "s"), rank=0, world_size=1, handle_sigterm=False),
    )
    assert run.store_path is not None
    fwd = Forwarder(run.store_path, "tensorboard", {"poll_interval_s": 0.05, "fields_interval_s": 0.1})
    fwd.start()
    try:
        assert [t.name for t in threading.enumerate() if t.name == "coordinator-forwarder-tensorboard"]
        for s in range(300):
            run.log({"loss": float(s)}, step=s)
            if s % 50 == 0:
                run.wait(10)
                time.sleep(0.05)
        deadline = time.monotonic() + 10
        while fwd.stats()["forwarded_points"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fwd.stats()["forwarded_points"] > 0, "the thread forwards while the run is live"
    finally:
        run.stop(30)
        st = fwd.close(30)
    assert st["finished"] == "finished"
    got = tb_scalars(Path(run.store_path).parent / "tensorboard")
    assert got["loss"] == [(s, float(s)) for s in range(300)]
    assert got["ranks/0/loss"] == [(s, float(s)) for s in range(300)]
    assert fwd.close(1) == st  # idempotent


# ------------------------------------------------------------------------------ replacement and thinning


def _q(*v: int) -> array[int]:
    return array("q", v)


def _d(*v: float) -> array[float]:
    return array("d", v)


def _handmade_store(path: Path) -> Path:
    """A journal with an elastic restart: rank 0 re-logs steps 5..9; the main series re-emits 3 and 4."""
    s = LocalStore(path)
    s.create_run("r1", "p", "restart", 1, 1000.0)
    s.commit(
        TxnData(
            key_policies={"loss": "mean"},
            senders={
                (0, 1): (1, 10, 1, 1000.0, 1001.0, "fenced", 1, "h"),
                (0, 2): (1, 5, 1, 1002.0, 1003.0, "closed", 2, "h"),
            },
            chunks=[
                ChunkRow("loss", 0, 1, 1, 1001.0, _q(*range(10)), _d(*[float(i) for i in range(10)])),
                ChunkRow("loss", MAIN_RANK, 0, 0, 1001.5, _q(0, 1, 2, 3, 4), _d(0, 1, 2, 3, 4), array("i", [1] * 5)),
                ChunkRow("loss", 0, 2, 1, 1002.0, _q(5, 6, 7, 8, 9), _d(50, 60, 70, 80, 90)),
                ChunkRow("loss", MAIN_RANK, 0, 0, 1002.5, _q(3, 4), _d(30, 40), array("i", [1, 1])),
            ],
        )
    )
    s.finish_run("finished", {})
    s.close()
    return path


def test_replaced_main_values_and_stale_rank_points_are_not_sent_within_a_batch(tmp_path: Path) -> None:
    """One batch: main steps 3, 4 go once with their latest value; rank 0's replaced steps 5..9 go once, new."""
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    db = _handmade_store(tmp_path / "runs" / "r1" / "run.db")
    fwd = Forwarder(db, "tensorboard")
    try:
        st = fwd.drain(30)
    finally:
        fwd.release()
    assert st["replaced_points"] == 2
    assert st["stale_points"] == 5
    got = tb_scalars(db.parent / "tensorboard")
    assert got["loss"] == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]
    assert got["ranks/0/loss"] == [(s, float(s)) for s in range(5)] + [(5, 50), (6, 60), (7, 70), (8, 80), (9, 90)]


def test_a_step_a_rank_logged_twice_goes_to_the_tracker_once_with_its_later_value(tmp_path: Path) -> None:
    """One incarnation logs step 2 twice (two batches): the rank's series carries step 2 once, with
    the later value, like the main series; the earlier value counts as replaced."""
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    db = tmp_path / "runs" / "r2" / "run.db"
    s = LocalStore(db)
    s.create_run("r2", "p", "twice", 1, 1000.0)
    s.commit(
        TxnData(
            key_policies={"loss": "mean"},
            senders={(0, 1): (2, 10, 1, 1000.0, 1001.0, "closed", 1, "h")},
            chunks=[
                ChunkRow("loss", 0, 1, 1, 1001.0, _q(0, 1, 2), _d(0, 1, 2)),
                ChunkRow("loss", MAIN_RANK, 0, 0, 1001.5, _q(0, 1, 2), _d(0, 1, 2), array("i", [1] * 3)),
                ChunkRow("loss", 0, 1, 2, 1002.0, _q(2, 3), _d(20, 3)),
                ChunkRow("loss", MAIN_RANK, 0, 0, 1002.5, _q(2, 3), _d(20, 3), array("i", [1, 1])),
            ],
        )
    )
    s.finish_run("finished", {})
    s.close()
    fwd = Forwarder(db, "tensorboard")
    try:
        st = fwd.drain(30)
    finally:
        fwd.release()
    got = tb_scalars(db.parent / "tensorboard")
    assert got["ranks/0/loss"] == [(0, 0.0), (1, 1.0), (2, 20.0), (3, 3.0)]
    assert got["loss"] == [(0, 0.0), (1, 1.0), (2, 20.0), (3, 3.0)]
    assert st["replaced_points"] == 2  # step 2's first value: once in the main series, once in rank 0's


def test_a_replacement_in_a_later_batch_is_sent_again_after_the_original(tmp_path: Path) -> None:
    """Batch per chunk: the re-emitted main steps 3, 4 are sent again, after the originals (TensorBoard keeps both)."""
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    db = _handmade_store(tmp_path / "runs" / "r1" / "run.db")
    fwd = Forwarder(db, "tensorboard", {"batch_points": 1})
    try:
        st = fwd.drain(30)
    finally:
        fwd.release()
    assert st["forwarded_batches"] == 4
    assert st["replaced_points"] == 0
    got = tb_scalars(db.parent / "tensorboard")
    assert got["loss"] == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (3, 30.0), (4, 40.0)]


def test_downsampling_thins_only_what_goes_to_the_backend_and_counts_it(run_db: Path) -> None:
    """max_points_per_key_per_s=20: fewer points in TensorBoard, sent + thinned = all, the journal keeps all."""
    fwd = Forwarder(run_db, "tensorboard", {"max_points_per_key_per_s": "20"})
    try:
        st = fwd.drain(60)
    finally:
        fwd.release()
    assert st["thinned_points"] > 0
    assert st["forwarded_points"] + st["thinned_points"] == 2000
    got = tb_scalars(run_db.parent / "tensorboard")
    assert sum(len(v) for v in got.values()) == st["forwarded_points"]
    for name, pts in got.items():
        steps = [s for s, _ in pts]
        assert steps == sorted(set(steps)), name
        assert steps[-1] == 199, f"{name}: the freshest point is always kept"
    s = LocalStore(run_db, readonly=True)
    try:
        assert len(s.values("train/loss")) == 200
    finally:
        s.close()


# ------------------------------------------------------------------------------ configuration


def test_options_are_validated_and_split_between_forwarder_and_backend(tmp_path: Path) -> None:
    """Forwarder keys are typed; an unknown backend option or a bad template raises ConfigError."""
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    st, rest = ForwarderSettings.split({"batch_points": "10", "per_rank": "no", "logdir": "/x"})
    assert (st.batch_points, st.per_rank, rest) == (10, False, {"logdir": "/x"})
    with pytest.raises(ConfigError, match="unknown option"):
        Forwarder(tmp_path / "run.db", "tensorboard", {"logdri": "/x"})
    with pytest.raises(ConfigError, match="rank_key"):
        Forwarder(tmp_path / "run.db", "tensorboard", {"rank_key": "{key}"})
    with pytest.raises(ConfigError, match="not an integer"):
        Forwarder(tmp_path / "run.db", "tensorboard", {"batch_points": "many"})
    with pytest.raises(ConfigError, match="unknown backend 'comet'"):
        get_backend("comet")


def test_a_missing_client_library_raises_import_error_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """get_backend('neptune') without the neptune package says: pip install 'ddp-coordinator[neptune]'."""
    monkeypatch.setitem(__import__("sys").modules, "neptune", None)
    monkeypatch.delitem(__import__("sys").modules, "coordinator.forward.neptune", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'ddp-coordinator\[neptune\]'") as err:
        get_backend("neptune")
    assert str(err.value).count("pip install") == 2, "the hint is given once (and once for a checkout)"


# ------------------------------------------------------------------------------ command line


def test_sync_to_pushes_a_stored_run_with_progress_and_resumes_with_nothing_doubled(
    run_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """coordinator sync <prefix> --to tensorboard twice: 2000 points, then 0; show lists the forwarder."""
    root = run_db.parent.parent.parent
    run_id = run_db.parent.name
    assert (
        cli.main(["--dir", str(root), "sync", run_id[:12], "--to", "tensorboard", "--option", "batch_points=300"]) == 0
    )
    out, err = capsys.readouterr()
    # The chunk count depends on when the ranks' batches arrived (the emission splits a series at a
    # sweep); each chunk (at most 200 points here) goes in one batch of at most 300.
    chunks = re.search(r"2,000 points in (\d+) chunks to send", out)
    assert chunks is not None and int(chunks[1]) >= 10, out
    assert f"2,000 points sent in {chunks[1]} batches" in out, out
    assert "tensorboard: 2,000/2,000 points (100%)" in err, err
    assert cli.main(["--dir", str(root), "sync", run_id, "--to", "tensorboard"]) == 0
    out, _ = capsys.readouterr()
    assert "0 points in 0 chunks to send" in out and " 0 points sent" in out, out
    assert_series(tb_scalars(run_db.parent / "tensorboard"), expected(4, 200))
    assert cli.main(["--dir", str(root), "show", run_id]) == 0
    out, _ = capsys.readouterr()
    assert "forwarder tensorboard" in out and "forwarded_points 2000" in out, out


def test_sync_to_a_new_or_emptied_destination_sends_every_point_and_from_start_resends(
    run_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The cursor is keyed by destination and checked against it: a second logdir gets all 2,000
    points (before the fix: 0, exit 0, "backend run finished"); a deleted logdir is refilled;
    --from-start sends the run again into the same event file, doubling nothing."""
    import shutil

    root = run_db.parent.parent.parent
    run_id = run_db.parent.name

    def sync(logdir: Path, *extra: str) -> str:
        argv = ["--dir", str(root), "sync", run_id, "--to", "tensorboard", "--option", f"logdir={logdir}", *extra]
        assert cli.main(argv) == 0
        return capsys.readouterr().out

    first, second = tmp_path / "tb-first", tmp_path / "tb-second"
    assert "2,000 points sent" in sync(first)
    out = sync(second)
    assert re.search(r"2,000 points in \d+ chunks to send \(from the start\)", out) and "2,000 points sent" in out, out
    assert_series(tb_scalars(second), expected(4, 200))
    assert " 0 points sent" in sync(first), "the first destination already has everything"
    shutil.rmtree(first)
    assert "2,000 points sent" in sync(first), "a deleted logdir is sent the whole run again"
    assert_series(tb_scalars(first), expected(4, 200))
    assert "2,000 points sent" in sync(first, "--from-start")
    assert_series(tb_scalars(first), expected(4, 200))
    assert len(list(first.glob("events.out.tfevents.*"))) == 1


def test_sync_to_reports_a_bad_option_and_a_missing_run(run_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Errors are one line on stderr and exit code 2."""
    root = run_db.parent.parent.parent
    assert cli.main(["--dir", str(root), "sync", run_db.parent.name, "--to", "tensorboard", "--option", "x"]) == 2
    assert "--option takes key=value" in capsys.readouterr().err
    assert cli.main(["--dir", str(root), "sync", "nope", "--to", "tensorboard"]) == 2
    assert "no runs match 'nope'" in capsys.readouterr().err


def test_doctor_checks_aggregator_store_and_a_backend_end_to_end(capsys: pytest.CaptureFixture[str]) -> None:
    """coordinator doctor --backend tensorboard: every line OK, exit 0; an unknown backend: FAIL, exit 1."""
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    assert cli.main(["doctor", "--backend", "tensorboard"]) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert all(line.startswith("OK") for line in lines[:-1]), out
    assert "wire protocol " in out and "store read-back: 20/20" in out and "tensorboard read-back: 20/20" in out
    assert cli.main(["doctor", "--backend", "comet"]) == 1
    assert "FAIL  backend comet: unknown backend" in capsys.readouterr().out


def test_backends_resolve_from_arguments_or_the_environment() -> None:
    """One name, several names, flat or keyed options, $COORDINATOR_BACKEND(_OPTIONS); bad input raises."""
    assert resolve_backends(None, None, {}) == {}
    assert resolve_backends("mlflow", {"tracking_uri": "x"}, {}) == {"mlflow": {"tracking_uri": "x"}}
    assert resolve_backends(["mlflow", "tensorboard"], {"mlflow": {"tracking_uri": "x"}}, {}) == {
        "mlflow": {"tracking_uri": "x"},
        "tensorboard": {},
    }
    env = {"COORDINATOR_BACKEND": "tensorboard, wandb", "COORDINATOR_BACKEND_OPTIONS": '{"wandb": {"mode": "offline"}}'}
    assert resolve_backends(None, None, env) == {"tensorboard": {}, "wandb": {"mode": "offline"}}
    with pytest.raises(ConfigError, match="unknown backend 'comet'"):
        resolve_backends("comet", None, {})
    with pytest.raises(ConfigError, match="key backend_options by backend name"):
        resolve_backends("mlflow,tensorboard", {"tracking_uri": "x"}, {})
    with pytest.raises(ConfigError, match="not valid JSON"):
        resolve_backends(None, None, {"COORDINATOR_BACKEND": "mlflow", "COORDINATOR_BACKEND_OPTIONS": "{"})


def test_check_backends_fails_fast_with_the_backends_message(tmp_path: Path) -> None:
    """What init_run runs on rank 0: an unreachable MLflow server is a SinkError naming mlflow; typos raise."""
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    check_backends({"tensorboard": {"logdir": str(tmp_path / "tb"), "batch_points": "1000"}}, tmp_path)
    with pytest.raises(ConfigError, match="unknown option"):
        check_backends({"tensorboard": {"log_dir": "x"}}, tmp_path)
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(SinkError, match=rf"^mlflow: cannot use tracking URI http://127.0.0.1:{port}: "):
        check_backends({"mlflow": {"tracking_uri": f"http://127.0.0.1:{port}"}}, tmp_path)


def test_abort_stops_the_thread_without_draining_and_a_new_forwarder_resumes(run_db: Path) -> None:
    """abort(): the thread ends, nothing is finished in the backend; the next forwarder sends the rest once."""
    flaky = _Flaky(tb_backend(run_db))
    flaky.fail = [_Err() for _ in range(1000)]
    fwd = Forwarder(run_db, "tensorboard", {"base_backoff_s": 0.05, "max_backoff_s": 0.1}, backend=flaky)
    fwd.start()
    time.sleep(0.3)
    fwd.abort(5)
    assert not [t for t in threading.enumerate() if t.name.startswith("coordinator-forwarder")]
    assert fwd.stats()["finished"] is None and fwd.stats()["retries"] > 0
    again = Forwarder(run_db, "tensorboard")
    try:
        assert again.drain(30)["forwarded_points"] == 2000
    finally:
        again.release()
    assert_series(tb_scalars(run_db.parent / "tensorboard"), expected(4, 200))
