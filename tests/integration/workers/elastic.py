"""Worker for an elastic restart: checkpoint every 50 steps; rank 1 crashes once at step 130."""

from __future__ import annotations

import argparse
import json
import os
from datetime import timedelta

import torch.distributed as dist

import coordinator


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--crash-at", type=int, default=130)
    p.add_argument("--ckpt", required=True)
    a = p.parse_args()
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    # torch 2.13's agent store keeps the previous attempt's gloo addresses (connectFullMesh then
    # fails with "Connection refused" after a restart): give each attempt its own key prefix.
    base = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False, timeout=timedelta(seconds=60)
    )
    dist.init_process_group("gloo", store=dist.PrefixStore(f"attempt-{restart}", base), rank=rank, world_size=world)
    ckpt = os.path.join(a.ckpt, f"rank{rank}.json")
    start = 0
    if os.path.exists(ckpt):
        with open(ckpt) as f:
            start = json.load(f)["step"]
    with coordinator.init_run(
        project="elastic", name="elastic", settings=coordinator.Settings(liveness_timeout_s=10)
    ) as run:
        run["parameters/lr"] = 0.1
        for s in range(start, a.steps):
            run.log({"loss": rank * 1_000_000 + s + 0.5 * restart}, step=s)
            if s % 50 == 49:
                run.wait(60)
                dist.barrier()
                with open(ckpt + ".tmp", "w") as f:
                    json.dump({"step": s + 1}, f)
                os.replace(ckpt + ".tmp", ckpt)
            if restart == 0 and rank == 1 and s == a.crash_at:
                run.wait(60)
                os._exit(17)  # a crash: no goodbye
        run.wait(60)
        dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
