"""``ddp_run`` (issue 10, item 6): ``dist_backend=`` for the process group, every ``init_run``
argument (the tracker's ``backend=`` too) passed through, and elastic restarts under real
``torchrun --max-restarts=1`` without user code for the store."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from coordinator.journal.store import MAIN_RANK, LocalStore, list_runs
from tests.integration._torchrun import torchrun

pytestmark = [pytest.mark.integration]

STEPS = 20


def _metric(rank: int, step: int, attempt: int = 0) -> float:
    return rank * 1000 + step + 0.5 * attempt


def _open(store_dir: Path) -> tuple[LocalStore, str]:
    runs = list_runs(store_dir)
    assert len(runs) == 1, [r.id for r in runs]
    return LocalStore(runs[0].path / "run.db", readonly=True), runs[0].id


@pytest.mark.multiprocess
def test_elastic_restart_through_ddp_run_resumes_from_checkpoint_every_point_once(
    store_dir: Path, tmp_path: Path
) -> None:
    """Rank 1 dies (os._exit) at step 13 of attempt 0; torchrun restarts both ranks, which resume at step 10.

    Without ddp_run's per-attempt store prefix the restarted attempt fails in gloo's
    connectFullMesh (Connection refused) under torch 2.13.
    """
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    res = torchrun(
        "ddp_run_rank.py",
        *("--ckpt", str(ckpt), "--steps", str(STEPS), "--die-rank", "1", "--die-at", "13"),
        nproc=2,
        store=store_dir,
        torchrun_args=("--max-restarts", "1"),
        timeout=240,
    )
    res.check()
    done = [json.loads((ckpt / f"done{r}.json").read_text()) for r in range(2)]
    assert [d["attempt"] for d in done] == [1, 1], done
    s, run_id = _open(store_dir)
    try:
        assert {d["run_id"] for d in done} == {run_id}
        for r in range(2):
            pts = s.values("train/metric", r)
            assert [st for st, _ in pts] == list(range(STEPS)), f"rank {r}: steps lost or doubled"
            for st, v in pts:  # the re-logged steps (>= the checkpoint, 10) replace attempt 0's
                assert v == _metric(r, st, 1 if st >= 10 else 0), (r, st, v)
            assert [st for st, _ in s.values("train/loss", r)] == list(range(STEPS))
        main = s.values("train/metric", MAIN_RANK)
        assert [st for st, _ in main] == list(range(STEPS))
        for st, v in main:
            assert v == pytest.approx((_metric(0, st) + _metric(1, st)) / 2 + (0.5 if st >= 10 else 0.0)), (st, v)
        assert s.fields()["hparams/lr"] == ("float", 0.1)
        kinds = [k for _, k, _, _ in s.events()]
        assert kinds.count("rank_restarted") == 2, kinds
        info = s.run_info()
        assert info.state == "finished", info.report
    finally:
        s.close()


@pytest.mark.multiprocess
def test_tracker_backend_and_options_pass_through_to_the_run(store_dir: Path, tmp_path: Path) -> None:
    """ddp_run(backend="tensorboard", backend_options={"logdir": D}): the event file gets every step's mean."""
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir, ckpt = tmp_path / "tb", tmp_path / "ckpt"
    ckpt.mkdir()
    steps = 10
    torchrun(
        "ddp_run_rank.py",
        *("--ckpt", str(ckpt), "--steps", str(steps), "--tracker", "tensorboard", "--logdir", str(logdir)),
        nproc=2,
        store=store_dir,
        timeout=180,
    ).check()
    s, _ = _open(store_dir)
    try:
        assert s.run_info().state == "finished", s.run_info().report
    finally:
        s.close()
    files = list(logdir.rglob("events.out.tfevents.*"))
    assert len(files) == 1, files
    acc = EventAccumulator(str(files[0]), size_guidance={"scalars": 0})
    acc.Reload()
    main = [(e.step, e.value) for e in acc.Scalars("train/metric")]
    assert [st for st, _ in main] == list(range(steps))
    for st, v in main:
        assert v == pytest.approx((_metric(0, st) + _metric(1, st)) / 2)
    for r in range(2):
        assert [(e.step, e.value) for e in acc.Scalars(f"ranks/{r}/train/metric")] == [
            (st, pytest.approx(_metric(r, st))) for st in range(steps)
        ]


@pytest.mark.multiprocess
def test_a_raising_rank_fails_the_run_with_its_rank_and_message(store_dir: Path, tmp_path: Path) -> None:
    """Rank 1 raises ValueError at step 4 inside ddp_run: the run is failed with rank 1's message; nothing hangs.

    The process group is given the deprecated way, ``backend="gloo"``: every rank asserts that
    ddp_run warned and created a gloo group (an AssertionError would be rank 1's reason instead).
    """
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    res = torchrun(
        "ddp_run_rank.py",
        *("--ckpt", str(ckpt), "--steps", "10", "--raise-rank", "1", "--raise-at", "4", "--legacy-backend"),
        nproc=2,
        store=store_dir,
        timeout=180,
    )
    assert res.returncode != 0, res.stdout
    s, _ = _open(store_dir)
    try:
        info = s.run_info()
        assert info.state == "failed" and info.report is not None, info.report
        assert info.report["failed_ranks"]["1"] == "ValueError: loss diverged at step 4", info.report
        assert "0" not in info.report["failed_ranks"] or "AssertionError" not in info.report["failed_ranks"]["0"]
        for r in range(2):
            assert [st for st, _ in s.values("train/metric", r)] == list(range(4)), r
    finally:
        s.close()


def test_ddp_run_single_process_passes_init_run_arguments_and_warns_on_a_legacy_backend(store_dir: Path) -> None:
    """Without a launcher no process group is created; backend="gloo" warns at the caller and is no tracker."""
    pytest.importorskip("torch")
    from coordinator.integrations.torch_ddp import ddp_run

    with (
        pytest.warns(DeprecationWarning, match="dist_backend='gloo'") as caught,
        ddp_run(name="single", backend="gloo", policies={"m": "max"}) as run,
    ):
        run.log({"m": 1.0}, step=0)
        run.wait(30)
    [legacy] = [w for w in caught if issubclass(w.category, DeprecationWarning)]
    assert legacy.filename == __file__  # stacklevel: the caller's with statement
    s, _ = _open(store_dir)
    try:
        info = s.run_info()
        assert info.state == "finished"
        assert s.fields()["sys/project"] == ("str", "default")
        assert s.fields()["sys/name"] == ("str", "single")
        assert s.values("m", MAIN_RANK) == [(0, 1.0)]
        assert {x["key"]: x["policy"] for x in s.series_summary()} == {"m": "max"}  # policies= passed through
    finally:
        s.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        with pytest.raises(TypeError, match="dist_backend= only"), ddp_run(backend="nccl", dist_backend="mpi"):
            pass


@pytest.mark.parametrize(
    ("value", "is_pg"),
    [
        ("gloo", True),
        ("nccl", True),
        ("mpi", True),
        ("cpu:gloo,cuda:nccl", True),
        ("mlflow", False),
        ("tensorboard", False),
        ("mlflow,wandb", False),
        (["gloo"], False),
        (None, False),
        ("", False),
    ],
)
def test_which_backend_values_name_a_process_group(value: object, is_pg: bool) -> None:
    from coordinator.integrations.torch_ddp import _is_process_group_backend

    assert _is_process_group_backend(value) is is_pg
