"""A real GPU job under torchrun (needs CUDA; skipped without it): DDP on the GPU through
``ddp_run``, every rank logging CUDA tensors, the system sampler reading the allocator and NVML.

Checks what only a GPU shows: the values a rank logged as CUDA tensors arrive exactly once and
equal to what the GPU computed (the deferred device-to-host copy), the main series is their
mean, the process series report allocated GPU memory, the node's GPU series come from NVML
(``[gpu]`` extra) while the GPU is busy, and ``sys/env/cuda`` is recorded.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from coordinator.journal.store import MAIN_RANK, LocalStore, list_runs
from tests.integration._torchrun import torchrun

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.integration, pytest.mark.multiprocess, pytest.mark.gpu]


@pytest.mark.parametrize(("backend", "nproc"), [("nccl", 1), ("gloo", 2)])
def test_ranks_log_cuda_tensors_exactly_once_and_the_gpu_series(
    backend: str, nproc: int, store_dir: Path, tmp_path: Path
) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    out = tmp_path / "out"
    out.mkdir()
    torchrun("cuda_rank.py", "--out", str(out), "--backend", backend, nproc=nproc, store=store_dir, timeout=300).check()
    results = [json.loads((out / f"rank{r}.json").read_text()) for r in range(nproc)]
    r0 = results[0]
    for res in results:
        r = res["rank"]
        for key, pts in res["logged"].items():
            assert len(pts) >= 5, (r, key, len(pts))
            assert r0["series"][f"{r}:{key}"] == pts, (r, key)  # every step once, the value the GPU computed
        tags = res["logged"]["train/tag"]
        assert [v for _, v in tags] == [float(r * 1000 + s) for s in range(len(tags))]
        alloc = r0["system"][f"{r}:system/process/gpu_mem_allocated_mb"]
        assert len(alloc) >= 2 and max(alloc) > 0, (r, alloc)
    util = r0["system"]["0:system/node/gpu0/util_percent"]
    mem = r0["system"]["0:system/node/gpu0/mem_used_mb"]
    if importlib.util.find_spec("pynvml") is not None:  # the [gpu] extra (nvidia-ml-py)
        assert len(util) >= 2 and max(util) > 0, util
        assert len(mem) >= 2 and max(mem) > 0, mem
    else:
        assert util == [] and mem == []
    for r in range(1, nproc):  # node series from the node's local rank 0 only
        assert r0["system"][f"{r}:system/node/gpu0/util_percent"] == []
    assert r0["cuda"] == torch.version.cuda

    [info] = list_runs(store_dir)
    assert info.id == r0["run_id"] and info.state == "finished", info.report
    s = LocalStore(info.path / "run.db", readonly=True)
    try:
        per_rank = {r: dict(s.values("train/loss", r)) for r in range(nproc)}
        common = sorted(set.intersection(*(set(p) for p in per_rank.values())))
        main = dict(s.values("train/loss", MAIN_RANK))
        for step in common:
            expected = sum(per_rank[r][step] for r in range(nproc)) / nproc
            assert main[step] == pytest.approx(expected), step
    finally:
        s.close()
