"""Worker of the CUDA job test: a DDP model on the GPU trained through ``ddp_run``, every rank
logging CUDA tensors (never ``.item()``) while the system sampler reads the GPU.

``--backend nccl`` (one rank per GPU) or ``gloo`` (several ranks may share one GPU: gloo
all-reduces CUDA tensors). The process group is created here, before ``ddp_run``, so that a
one-rank NCCL job has one too. Each rank trains for ``--seconds``, logs ``train/loss`` (the loss
tensor) and ``train/tag`` (``rank * 1000 + step`` computed on the GPU) every step, and keeps
the values it logged; after ``wait()`` and a barrier rank 0 reads every rank's series back
(``fetch_values(rank=r)``) and the system series' point counts. Each rank writes
``<out>/rank<r>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import coordinator
from coordinator.integrations.torch_ddp import ddp_run

SYSTEM_KEYS = (
    "system/process/gpu_mem_allocated_mb",
    "system/process/gpu_max_allocated_mb",
    "system/node/gpu0/util_percent",
    "system/node/gpu0/mem_used_mb",
)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--backend", default="gloo")
    p.add_argument("--seconds", type=float, default=4.0)
    a = p.parse_args()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device("cuda", local % torch.cuda.device_count())
    torch.cuda.set_device(dev)
    dist.init_process_group(a.backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(rank)
    settings = coordinator.Settings(close_timeout_s=60, system_metrics_interval_s=0.5)
    logged: dict[str, list[list[float]]] = {"train/loss": [], "train/tag": []}
    read: dict[str, object] = {}
    with ddp_run("cuda", "cuda-job", dist_backend=a.backend, settings=settings) as run:
        model = DDP(nn.Sequential(nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 1)).to(dev), device_ids=[dev.index])
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        big = torch.randn(4096, 4096, device=dev)
        losses: list[torch.Tensor] = []
        tags: list[torch.Tensor] = []
        t0, step = time.monotonic(), 0
        while time.monotonic() - t0 < a.seconds:
            for _ in range(20):  # keep the GPU busy enough for NVML to see it
                big = torch.tanh(big @ big)
            x = torch.randn(512, 1024, device=dev)
            loss = model(x).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            tag = torch.full((), float(rank * 1000 + step), device=dev)
            run.log({"train/loss": loss.detach(), "train/tag": tag}, step=step)
            losses.append(loss.detach())
            tags.append(tag)
            step += 1
        torch.cuda.synchronize()
        logged["train/loss"] = [[s, float(v)] for s, v in enumerate(losses)]
        logged["train/tag"] = [[s, float(v)] for s, v in enumerate(tags)]
        run.wait(60)
        dist.barrier()
        if rank == 0:
            read["series"] = {
                f"{r}:{k}": [list(pt) for pt in run[k].fetch_values(rank=r)] for r in range(world) for k in logged
            }
            read["system"] = {
                f"{r}:{k}": [v for _, v in run[k].fetch_values(rank=r)] for r in range(world) for k in SYSTEM_KEYS
            }
            run.sync()
            try:
                read["cuda"] = run["sys/env/cuda"].fetch()
            except KeyError:
                read["cuda"] = None
        dist.barrier()
        run_id = run.id
    with open(os.path.join(a.out, f"rank{rank}.json"), "w") as f:
        json.dump({"rank": rank, "world": world, "run_id": run_id, "logged": logged, **read}, f)
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
