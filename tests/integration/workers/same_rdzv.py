"""Worker for two torchrun jobs with one ``--rdzv-id``: log N points, write the run id; with
``--crash``, rank 1 of the first attempt dies after logging, so torchrun restarts the group."""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from datetime import timedelta

import torch.distributed as dist

import coordinator


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--points", type=int, default=100)
    p.add_argument("--out", required=True)
    p.add_argument("--crash", action="store_true")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    # A fresh key prefix per attempt (the agent's store keeps the previous attempt's gloo addresses).
    base = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False, timeout=timedelta(seconds=60)
    )
    dist.init_process_group("gloo", store=dist.PrefixStore(f"attempt-{restart}", base), rank=rank, world_size=world)
    settings = coordinator.Settings(liveness_timeout_s=5, stop_grace_s=5)
    with coordinator.init_run(project="rdzv", settings=settings) as run:
        with open(os.path.join(a.out, f"rank{rank}-attempt{restart}.json"), "w") as f:
            json.dump({"run_id": run.id}, f)
        first = restart * a.points
        for s in range(first, first + a.points):
            run.log({"x": float(s)}, step=s)
        run.wait(60)
        if a.crash and restart == 0:
            if rank == 1:
                os._exit(17)  # a crash: torchrun stops the others and restarts the group
            time.sleep(120)  # in Python, not in a collective: the launcher's SIGTERM ends it
        dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
