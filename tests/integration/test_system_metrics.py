"""System metrics in a real 2-rank torchrun job (issue 13, item 1): every rank's process series,
the node's series from its local rank 0 only, readable with ``fetch_values(rank=r)``, in the
journal and in ``coordinator show``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from coordinator.journal.store import MAIN_RANK, LocalStore, list_runs
from tests.integration._torchrun import ROOT, torchrun

pytestmark = [pytest.mark.integration, pytest.mark.multiprocess]

PROCESS = ("system/process/cpu_percent", "system/process/rss_mb", "system/process/threads")
NODE = (
    "system/node/cpu_percent",
    "system/node/mem_used_percent",
    "system/node/disk_read_mb_s",
    "system/node/disk_write_mb_s",
    "system/node/net_recv_mb_s",
    "system/node/net_sent_mb_s",
)


def test_two_ranks_log_their_process_series_and_local_rank_zero_the_nodes(store_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    torchrun(
        "system_rank.py",
        "--out",
        str(out),
        nproc=2,
        store=store_dir,
        extra_env={"COORDINATOR_SYSTEM_METRICS_INTERVAL_S": "1"},
    ).check()
    results = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert results[0]["threads"] == ["coordinator-system-r0"] and results[1]["threads"] == ["coordinator-system-r1"]
    counts = results[0]["counts"]
    for r in range(2):
        for k in PROCESS:
            assert counts[f"{r}:{k}"] >= 2, (r, k, counts)
        for k in NODE:
            assert (counts[f"{r}:{k}"] >= 2) if r == 0 else (counts[f"{r}:{k}"] == 0), (r, k, counts)
        assert counts[f"{r}:system/process/gpu_mem_allocated_mb"] == 0  # torch without CUDA: no GPU series

    [info] = list_runs(store_dir)
    assert info.id == results[0]["run_id"] and info.state == "finished", info.report
    s = LocalStore(info.path / "run.db", readonly=True)
    try:
        summary = {x["key"]: x for x in s.series_summary()}
        for k in PROCESS + NODE:
            assert summary[k]["policy"] == "per_rank" and s.values(k, MAIN_RANK) == [], k
            ranks = (0, 1) if k in PROCESS else (0,)
            assert sorted(summary[k]["per_rank"]) == list(ranks), (k, summary[k])
            for r in ranks:
                pts = s.values(k, r)
                assert [st for st, _ in pts] == list(range(len(pts))) and len(pts) >= 2, (k, r, pts)
                assert all(v >= 0 for _, v in pts), (k, r, pts)
        assert not [k for k in summary if "gpu" in k]
        assert info.report is not None
        health = info.report["health"]
        for r in range(2):  # training progress, not the sampler's steps
            assert health[str(r)]["last_step"] == s.values("train/loss", r)[-1][0]
    finally:
        s.close()

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    show = subprocess.run(
        [sys.executable, "-m", "coordinator.cli", "show", info.id],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert show.returncode == 0, show.stderr
    for k in PROCESS + NODE:
        assert k in show.stdout, k
    shown = subprocess.run(
        [sys.executable, "-m", "coordinator.cli", "show", info.id, "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    series = {x["key"]: x for x in json.loads(shown.stdout)["series"]}
    assert {k: sorted(series[k]["per_rank"], key=int) for k in NODE} == {k: ["0"] for k in NODE}
    assert all(sorted(series[k]["per_rank"], key=int) == ["0", "1"] for k in PROCESS)
