"""Worker of the system-metrics test: trains nothing, logs a step every 50 ms for ``--seconds``
while the sampler (interval from ``COORDINATOR_SYSTEM_METRICS_INTERVAL_S``) samples; then rank 0
reads every rank's ``system/*`` series with ``fetch_values(rank=r)`` after a barrier and writes
the point counts to ``<out>/rank<r>.json``."""

from __future__ import annotations

import argparse
import json
import os
import time

import torch.distributed as dist

import coordinator

KEYS = (
    "system/process/cpu_percent",
    "system/process/rss_mb",
    "system/process/threads",
    "system/process/gpu_mem_allocated_mb",
    "system/node/cpu_percent",
    "system/node/mem_used_percent",
    "system/node/disk_read_mb_s",
    "system/node/disk_write_mb_s",
    "system/node/net_recv_mb_s",
    "system/node/net_sent_mb_s",
)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--seconds", type=float, default=3.5)
    a = p.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    counts: dict[str, int] = {}
    with coordinator.init_run(project="sys", name="sys", settings=coordinator.Settings(close_timeout_s=60)) as run:
        threads = sorted(t.name for t in __import__("threading").enumerate() if t.name.startswith("coordinator-system"))
        t0, step = time.monotonic(), 0
        while time.monotonic() - t0 < a.seconds:
            run.log({"train/loss": 1.0 / (step + 1)}, step=step)
            step += 1
            time.sleep(0.05)
        run.wait(60)
        dist.barrier()
        if rank == 0:
            for r in range(world):
                for k in KEYS:
                    counts[f"{r}:{k}"] = len(run[k].fetch_values(rank=r))
        dist.barrier()
        run_id = run.id
    with open(os.path.join(a.out, f"rank{rank}.json"), "w") as f:
        json.dump({"rank": rank, "run_id": run_id, "threads": threads, "counts": counts}, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
