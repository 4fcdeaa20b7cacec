"""Worker: one rank of a 'multi-node' job (LOCAL_WORLD_SIZE=1) over TCP + CURVE, found via the torch store."""

from __future__ import annotations

import argparse
import os
import sys

import torch.distributed as dist

import coordinator


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--points", type=int, default=5000)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    with coordinator.init_run(project="tcp", name="tcp") as run:
        if rank == 0:
            with open(os.path.join(a.out, "endpoint"), "w") as f:
                f.write(f"{run.id} {run.endpoint}")
        for s in range(a.points):
            run.log({"m": float(rank * 10_000 + s)}, step=s)
        run.wait(60)
        with open(os.path.join(a.out, f"rank{rank}.ring_points"), "w") as f:
            f.write(str(run.stats().get("ring_points", 0)))  # absent: the rank has no ring
        dist.barrier()  # the test's intruder runs while rank 0 waits here
        if rank == 0:
            sys.stdout.write("READY-FOR-INTRUDER\n")
            sys.stdout.flush()
            sys.stdin.readline()
        dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
