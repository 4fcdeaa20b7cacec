"""A rank of a 2-rank job that appends texts (and prints, with console capture on), then writes what it read back."""

from __future__ import annotations

import json
import logging
import os
import sys

import torch.distributed as dist

import coordinator

N = int(sys.argv[1])
OUT = sys.argv[2]

rank = int(os.environ["RANK"])
dist.init_process_group("gloo")
settings = coordinator.Settings(capture_output=True, capture_env=False, system_metrics_interval_s=0)
with coordinator.init_run(project="texts", name="two-ranks", settings=settings) as run:
    logging.basicConfig(level=logging.INFO)  # bound after the capture started: its lines reach monitoring/stderr
    for step in range(N):
        run["samples/generation"].append(f"rank {rank} step {step}: ünïcode ✓", step=step)
        run["loss"].append(float(step), step=step)
        print(f"print from rank {rank} at {step}")
    logging.getLogger("job").info("logged by rank %d", rank)
    run.wait(120)
    dist.barrier()  # each rank reads the other's texts too: only once that rank's wait() returned
    got = {r: run["samples/generation"].fetch_values(rank=r, timeout=120) for r in (0, 1)}
    last = run["samples/generation"].fetch_last()
    with open(f"{OUT}.{rank}.json", "w") as f:
        json.dump({"run_id": run.id, "texts": {str(r): v for r, v in got.items()}, "last": last}, f)
print("after close: real stdout only", flush=True)
dist.destroy_process_group()
