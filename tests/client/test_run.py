"""The worker API in one process: validation at the call site, modes, wait, stop, read-only."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

import pytest

import coordinator
from coordinator.journal.store import MAIN_RANK, LocalStore, list_runs


def _store(store_dir: Path) -> LocalStore:
    [info] = list_runs(store_dir)
    return LocalStore(info.path / "run.db", readonly=True)


@pytest.mark.parametrize(
    ("data", "step", "exc"),
    [
        ({"loss": "0.5"}, 0, TypeError),
        ({"loss": None}, 0, TypeError),
        ({"loss": [1.0, 2.0]}, 0, TypeError),
        ({"loss": 1.0, "acc": "x"}, 0, TypeError),
        ({5: 1.0}, 0, TypeError),
        ({"": 1.0}, 0, ValueError),
        ({"a//b": 1.0}, 0, ValueError),
        ({"../etc": 1.0}, 0, ValueError),
        ({"x" * 600: 1.0}, 0, ValueError),
        ({"loss": 10**400}, 0, ValueError),
        ({"loss": 1.0}, -1, ValueError),
        ({"loss": 1.0}, 1.5, TypeError),
        ({"loss": 1.0}, "3", TypeError),
        ([("loss", 1.0)], 0, TypeError),
    ],
)
def test_bad_log_input_raises_at_call_site_and_keeps_nothing_of_the_call(
    store_dir: Path, data: object, step: object, exc: type[Exception]
) -> None:
    """A rejected log() raises TypeError/ValueError and stores none of its points; good points all arrive."""
    with coordinator.init_run(project="t") as run:
        run.log({"loss": 0.25, "acc": 0.5}, step=0)
        with pytest.raises(exc):
            run.log(data, step=step)  # type: ignore[arg-type]
        run.log({"loss": 0.125, "acc": 0.75}, step=1)
        run.wait(timeout=30)
    s = _store(store_dir)
    try:
        assert s.values("loss", 0) == [(0, 0.25), (1, 0.125)]
        assert s.values("acc", 0) == [(0, 0.5), (1, 0.75)]
        assert set(s.key_policies()) == {"loss", "acc"}
    finally:
        s.close()


def test_numeric_like_values_are_accepted(store_dir: Path) -> None:
    """bool, int, float, numpy scalars and 0-d tensors are stored as float64."""
    np = pytest.importorskip("numpy")
    values: list[object] = [True, 3, 2.5, np.float32(1.5), np.int64(7)]
    try:
        import torch

        values.append(torch.tensor(4.0))
    except ImportError:
        pass  # the tensor case runs where the torch extra is installed
    with coordinator.init_run() as run:
        for i, v in enumerate(values):
            run.log({"m": v}, step=i)
    s = _store(store_dir)
    try:
        assert [v for _, v in s.values("m", 0)] == [float(v) for v in values]  # type: ignore[arg-type]
    finally:
        s.close()


def test_append_without_step_counts_per_key_and_continues_after_explicit_steps(store_dir: Path) -> None:
    """Omitted steps are the rank's previous step for that key + 1, like Neptune's append()."""
    with coordinator.init_run() as run:
        h = run["series/a"]
        h.append(1.0)
        h.append(2.0)
        h.append(3.0, step=10)
        h.append(4.0)
        run.log({"series/b": 5.0})
        run.wait(30)
        h.append(6.0)
    s = _store(store_dir)
    try:
        assert [st for st, _ in s.values("series/a", 0)] == [0, 1, 10, 11, 12]
        assert [st for st, _ in s.values("series/b", 0)] == [0]
    finally:
        s.close()


@pytest.mark.parametrize(
    ("value", "exc"),
    [
        (None, TypeError),
        (object(), TypeError),
        ({"a": {}}, ValueError),
        ([1, [2]], TypeError),
        ({1: 2}, TypeError),
        (2**70, ValueError),
        ("x" * 70_000, ValueError),
    ],
)
def test_bad_field_raises_and_keeps_nothing_of_the_assignment(store_dir: Path, value: object, exc: type) -> None:
    """A rejected assignment raises and stores none of its entries (not even valid siblings)."""
    with coordinator.init_run() as run:
        with pytest.raises(exc):
            run["params"] = {"ok": 1, "bad": value}
        run["good"] = 1
    s = _store(store_dir)
    try:
        f = s.fields()
        assert "params/ok" not in f and f["good"] == ("int", 1)
    finally:
        s.close()


def test_fields_fetch_read_your_writes_and_types(store_dir: Path) -> None:
    """Fields of every type read back from the local view and from the store."""
    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    with coordinator.init_run(project="proj", name="nm") as run:
        run["parameters"] = {"lr": 0.1, "bs": 32, "name": "resnet", "flag": True, "dims": [1, 2], "t": when}
        assert run["parameters/lr"].fetch() == 0.1
        assert run["parameters"].fetch()["dims"] == [1, 2]
        run.sync(wait=True, timeout=30)
        assert run["sys/name"].fetch() == "nm"
        assert run["sys/state"].fetch() == "running"
        assert run["parameters/t"].fetch() == when
        with pytest.raises(ValueError):
            run["sys/state"] = "hacked"
        with pytest.raises(ValueError):
            run.log({"parameters/lr": 1.0})
        with pytest.raises(KeyError):
            run["nothing/here"].fetch()
    s = _store(store_dir)
    try:
        f = s.fields()
        assert f["parameters/bs"] == ("int", 32) and f["parameters/flag"] == ("bool", True)
        assert f["sys/state"] == ("str", "finished")
    finally:
        s.close()


def test_wait_makes_points_durable_and_fetch_values_reads_them(store_dir: Path) -> None:
    """After wait(), the store holds every point; fetch_values returns (step, value) in step order."""
    with coordinator.init_run() as run:
        for s in range(5000):
            run.log({"loss": s * 0.5}, step=s)
        run.wait(timeout=30)
        s_ = _store(store_dir)
        try:
            assert len(s_.values("loss", 0)) == 5000
        finally:
            s_.close()
        vals = run["loss"].fetch_values()
        assert vals == [(s, s * 0.5) for s in range(5000)]
        assert run["loss"].fetch_values(rank=0) == vals
        run.sync()
        assert run["loss"].fetch_last() == 4999 * 0.5
        assert run.stats()["pending"] == 0


def test_log_after_stop_raises_and_stop_is_idempotent(store_dir: Path) -> None:
    """A stopped run rejects calls with ClosedError; stop() twice is fine."""
    run = coordinator.init_run()
    run.log({"a": 1.0}, step=0)
    run.stop()
    run.stop()
    with pytest.raises(coordinator.ClosedError):
        run.log({"a": 1.0}, step=1)
    with pytest.raises(coordinator.ClosedError):
        run["f"] = 1


def test_exception_inside_with_still_stores_and_leaves_nothing_running(store_dir: Path) -> None:
    """The user's exception propagates; the run is closed, its data stored; no thread or process remains."""
    with pytest.raises(RuntimeError, match="boom"), coordinator.init_run() as run:
        run.log({"a": 1.0}, step=0)
        raise RuntimeError("boom")
    assert not [t for t in threading.enumerate() if t.name.startswith("coordinator")]
    s = _store(store_dir)
    try:
        assert s.values("a", 0) == [(0, 1.0)]
    finally:
        s.close()


def test_disabled_mode_is_a_no_op(store_dir: Path) -> None:
    """mode='disabled' accepts every call, starts nothing and writes nothing."""
    with coordinator.init_run(mode="disabled") as run:
        run.log({"a": 1.0}, step=0)
        run["x"].append(2.0)
        run["p"] = 3
        run.wait()
        run.sync()
    assert not store_dir.exists()


def test_sync_mode_every_call_is_durable_on_return(store_dir: Path) -> None:
    """mode='sync': each log() returns only after the store has committed it."""
    with coordinator.init_run(mode="sync") as run:
        run.log({"a": 1.0}, step=0)
        s = _store(store_dir)
        try:
            assert s.values("a", 0) == [(0, 1.0)]
            run["b"].append(2.0)
            assert s.values("b", 0) == [(0, 2.0)]
        finally:
            s.close()


def test_offline_mode_spools_and_cli_sync_uploads_once(store_dir: Path) -> None:
    """mode='offline' writes a spool; `coordinator sync` stores it; a second sync doubles nothing."""
    from coordinator.cli.main import main

    with coordinator.init_run(mode="offline", name="off") as run:
        run["parameters/lr"] = 0.5
        for s in range(1000):
            run.log({"loss": float(s)}, step=s)
        run_id = run.id
    assert list_runs(store_dir) == []
    assert main(["sync", run_id]) == 0
    assert main(["sync", run_id]) == 0
    s = _store(store_dir)
    try:
        assert s.values("loss", 0) == [(i, float(i)) for i in range(1000)]
        assert s.values("loss", MAIN_RANK) == [(i, float(i)) for i in range(1000)]
        assert s.fields()["parameters/lr"] == ("float", 0.5)
        assert s.run_info().state == "finished"
    finally:
        s.close()


def test_read_only_reopens_a_stored_run(store_dir: Path) -> None:
    """init_run(with_id=..., mode='read-only') reads fields and series without an aggregator."""
    with coordinator.init_run(name="first") as run:
        run["parameters/lr"] = 0.01
        for s in range(100):
            run["train/loss"].append(1.0 / (s + 1), step=s)
        rid = run.id
    for ref in (rid, "latest"):
        ro = coordinator.init_run(with_id=ref, mode="read-only")
        try:
            assert ro.id == rid and ro.name == "first"
            assert ro["parameters/lr"].fetch() == 0.01
            assert ro["sys/state"].fetch() == "finished"
            assert len(ro["train/loss"].fetch_values()) == 100
            assert ro["train/loss"].fetch_values(rank=0)[-1] == (99, 0.01)
            with pytest.raises(coordinator.ClosedError):
                ro.log({"x": 1.0})
        finally:
            ro.stop()
    with pytest.raises(coordinator.ConfigError):
        coordinator.init_run(with_id="no-such-run", mode="read-only")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mode": "bogus"},
        {"max_buffer_points": 0},
        {"policies": {"*": "median"}},
        {"project": ""},
        {"rank": 3, "world_size": 2},
        {"flush_interval_s": 0},
    ],
)
def test_bad_init_arguments_raise_config_error(store_dir: Path, kwargs: dict[str, object]) -> None:
    """Bad arguments fail at init_run with ConfigError, before anything starts."""
    with pytest.raises(coordinator.ConfigError):
        coordinator.init_run(**kwargs)  # type: ignore[arg-type]


def test_threads_may_log_concurrently(store_dir: Path) -> None:
    """Several threads logging to one run lose nothing."""
    with coordinator.init_run() as run:

        def work(i: int) -> None:
            h = run[f"t/{i}"]
            for s in range(2000):
                h.append(float(s), step=s)
                run.log({"shared": float(i)}, step=s)

        ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
    s = _store(store_dir)
    try:
        for i in range(4):
            assert len(s.values(f"t/{i}", 0)) == 2000
        assert len(s.values("shared", 0)) == 8000
    finally:
        s.close()


def test_per_call_policy_overrides_the_globs_and_a_key_keeps_its_first_policy(store_dir: Path) -> None:
    """log(..., policy=) sets a key's reduction; switching it later or an unknown policy raises ValueError."""
    with coordinator.init_run(policies={"*": "min"}) as run:
        run.log({"tp": 3.0}, step=0, policy="sum")
        run["best"].append(1.0, step=0, policy="max")
        run.log({"other": 1.0}, step=0)
        with pytest.raises(ValueError, match="first policy"):
            run.log({"tp": 1.0}, step=1, policy="mean")
        with pytest.raises(ValueError, match="not one of"):
            run.log({"z": 1.0}, step=0, policy="median")
        with pytest.raises(ValueError, match="first policy"):
            run.log({"other": 1.0}, step=1, policy="max")
    s = _store(store_dir)
    try:
        assert s.key_policies() == {"tp": "sum", "best": "max", "other": "min"}
        assert s.fields()["sys/policy/tp"] == ("str", "sum")
    finally:
        s.close()


def test_log_in_a_forked_child_raises_clearly_and_the_parent_is_unaffected(store_dir: Path) -> None:
    """A DataLoader-style fork: the child's log() raises ClosedError naming the fork; the parent keeps logging."""
    import multiprocessing as mp

    with coordinator.init_run() as run:
        run.log({"a": 0.0}, step=0)
        ctx = mp.get_context("fork")
        q = ctx.Queue()

        def child() -> None:
            try:
                run.log({"a": 1.0}, step=1)
                q.put("no error")
            except coordinator.ClosedError as e:
                q.put(str(e))

        p = ctx.Process(target=child)
        p.start()
        msg = q.get(timeout=30)
        p.join(30)
        assert "forked child" in msg
        run.log({"a": 2.0}, step=2)
        run.wait(30)
        assert run["a"].fetch_values(rank=0) == [(0, 0.0), (2, 2.0)]


def test_upload_stores_files_content_addressed_and_large_ones_as_references(
    store_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """upload(): a copy under artifacts/<sha256>, the record as a field; over the limit a reference with a warning."""
    import hashlib

    small = tmp_path / "ckpt.pt"
    small.write_bytes(b"weights" * 1000)
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * 5000)
    with coordinator.init_run() as run:
        rec = run["model/ckpt"].upload(small)
        again = run["model/again"].upload(small)
        ref = run["model/big"].upload(big, max_copy_bytes=1000)
        with pytest.raises(FileNotFoundError):
            run["model/none"].upload(tmp_path / "missing")
        with pytest.raises(ValueError):
            run["model/dir"].upload(tmp_path)
        assert run["model/ckpt"].fetch() == rec
    sha = hashlib.sha256(small.read_bytes()).hexdigest()
    assert rec["sha256"] == sha and rec["size"] == 7000 and rec["copied"] is True and rec["name"] == "ckpt.pt"
    stored = Path(rec["path"])
    assert stored.read_bytes() == small.read_bytes() and stored.name == sha and "artifacts" in stored.parts
    assert again["path"] == rec["path"]
    assert ref["copied"] is False and ref["path"] == str(big.resolve())
    assert "reference" in caplog.text
    ro = coordinator.init_run(with_id="latest", mode="read-only")
    try:
        assert ro["model/ckpt"].fetch()["sha256"] == sha
    finally:
        ro.stop()
