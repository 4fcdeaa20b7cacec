"""Two torchrun jobs with the same ``--rdzv-id`` write two runs; a restart continues its job's run
(issue 11, item 7), found through the store's restart index (ids stay short: issue 14, item 5)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from coordinator.client.elastic import index_path
from coordinator.journal.store import LocalStore, list_runs
from tests.integration._torchrun import Result, torchrun

pytestmark = [pytest.mark.integration, pytest.mark.multiprocess, pytest.mark.slow]

RDZV_ID = "nightly-job"
POINTS = 100


def _job(store: Path, out: Path, *extra: str, torchrun_args: tuple[str, ...] = ()) -> Result:
    out.mkdir()
    # Not --standalone (it draws a random rendezvous id): a local c10d rendezvous with a fixed id.
    args = ("--rdzv-backend=c10d", "--rdzv-endpoint=localhost:0", f"--rdzv-id={RDZV_ID}", "--nnodes=1")
    res = torchrun(
        "same_rdzv.py",
        "--out",
        str(out),
        *extra,
        nproc=2,
        store=store,
        standalone=False,
        torchrun_args=args + torchrun_args,
        timeout=240,
    )
    return res.check()


def _run_ids(out: Path) -> dict[str, str]:
    return {f.stem: json.loads(f.read_text())["run_id"] for f in sorted(out.glob("*.json"))}


def test_a_second_job_with_the_same_rdzv_id_gets_a_new_run_and_its_restart_continues_it(
    store_dir: Path, tmp_path: Path
) -> None:
    first = _job(store_dir, tmp_path / "job1")
    ids1 = _run_ids(tmp_path / "job1")
    [run1] = set(ids1.values())  # every rank agrees
    assert re.fullmatch(r"rdzv-[0-9a-f]{6}", run1), run1  # short and readable: the project's slug
    assert "writing run" not in first.stderr

    second = _job(store_dir, tmp_path / "job2", "--crash", torchrun_args=("--max-restarts=1",))
    ids2 = _run_ids(tmp_path / "job2")
    assert set(ids2) == {"rank0-attempt0", "rank1-attempt0", "rank0-attempt1", "rank1-attempt1"}, ids2
    [run2] = set(ids2.values())  # every rank of both attempts agrees on the new run
    assert run2 != run1 and re.fullmatch(r"rdzv-[0-9a-f]{6}", run2)
    named = [ln for ln in second.stderr.splitlines() if f"writing run {run2}" in ln]
    assert len(named) == 1, second.stderr[-4000:]

    # The rendezvous identity lives in the store, not in the ids: one index, both jobs, oldest first.
    index = json.loads(index_path(store_dir, RDZV_ID, 0).read_text())
    assert index["rdzv_id"] == RDZV_ID and [r["run_id"] for r in index["runs"]] == [run1, run2]

    runs = {r.id: r for r in list_runs(store_dir)}
    assert set(runs) == {run1, run2}
    for run_id, attempts in ((run1, 1), (run2, 2)):
        st = LocalStore(runs[run_id].path / "run.db", readonly=True)
        try:
            for r in range(2):
                steps = [s for s, _ in st.values("x", r)]
                assert steps == list(range(attempts * POINTS)), (run_id, r, steps[:5], len(steps))
        finally:
            st.close()
