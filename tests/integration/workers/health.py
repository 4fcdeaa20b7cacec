"""Worker: ranks log different keys at different rates; one rank is slow; optionally one dies."""

from __future__ import annotations

import argparse
import json
import os
import time

import torch.distributed as dist

import coordinator


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--slow-rank", type=int, default=2)
    p.add_argument("--slow-s", type=float, default=0.08)
    p.add_argument("--die-rank", type=int, default=-1)
    p.add_argument("--die-at", type=int, default=-1)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    with coordinator.init_run(
        project="health", name="health", settings=coordinator.Settings(group_timeout_s=3, liveness_timeout_s=10)
    ) as run:
        for s in range(a.steps):
            if rank == a.slow_rank:
                time.sleep(a.slow_s)  # a slow rank: the others wait for it in the barrier below
            run.log({"train/loss": rank + s / 100}, step=s)
            if rank == 0 and s % 10 == 0:
                run.log({"eval/acc": s / 100}, step=s)
            if rank in (1, 2) and s % 5 == 0:
                run["train/lr"].append(0.1 * rank, step=s)
            if rank == 3:
                run["rank3/only"].append(float(s), step=s)
            if rank == a.die_rank and s == a.die_at:
                run.wait(30)
                os._exit(3)
            dist.barrier()
        run.sync(wait=True, timeout=60)
        if rank == 0:
            time.sleep(1.5)  # the aggregator publishes health once a second
            run.sync(timeout=60)
            with open(os.path.join(a.out, "health.json"), "w") as f:
                json.dump(
                    {
                        "run_id": run.id,
                        "stragglers": run["sys/stragglers"].fetch(),
                        "lag": {r: run[f"sys/ranks/{r}/lag_s"].fetch() for r in range(4)},
                        "last_step": {r: run[f"sys/ranks/{r}/last_step"].fetch() for r in range(4)},
                    },
                    f,
                )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
