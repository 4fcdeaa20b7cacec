"""Worker: one rank of a 2-rank file-rendezvous job that logs in lockstep with the other rank.

At each step a rank logs, writes its progress file, then waits until the other rank has reached
the step too (as DDP ranks wait for each other in an all-reduce). ``--ending`` makes it leave the
``with`` block by an exception (``failed``) or a KeyboardInterrupt (``interrupted``) at the end.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import coordinator


def _progress(out: Path, rank: int) -> int:
    try:
        return int((out / f"progress{rank}").read_text() or -1)
    except (FileNotFoundError, ValueError):
        return -1


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--ending", choices=("clean", "failed", "interrupted"), default="clean")
    p.add_argument("--ending-rank", type=int, default=1)
    a = p.parse_args()
    out = Path(a.out)
    rank, other = int(os.environ["RANK"]), 1 - int(os.environ["RANK"])
    try:
        with coordinator.init_run(project="comeback", name="comeback") as run:
            (out / f"rank{rank}.id").write_text(run.id)
            for s in range(a.steps):
                run.log({"m": float(rank * 100 + s)}, step=s)
                tmp = out / f"progress{rank}.tmp"
                tmp.write_text(str(s))
                tmp.replace(out / f"progress{rank}")
                deadline = time.monotonic() + 120
                while _progress(out, other) < s and time.monotonic() < deadline:
                    time.sleep(0.005)
                time.sleep(0.02)
            if rank == a.ending_rank and a.ending == "failed":
                raise RuntimeError("the training step blew up")
            if rank == a.ending_rank and a.ending == "interrupted":
                raise KeyboardInterrupt
    except (RuntimeError, KeyboardInterrupt, coordinator.CoordinatorError) as e:
        # rank 0's stop() says the run was closed as failed/interrupted: the client's part, not ours
        (out / f"rank{rank}.raised").write_text(f"{type(e).__name__}: {e}")


if __name__ == "__main__":
    main()
