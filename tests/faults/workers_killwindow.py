"""A rank of the kill-window test: logs ``m`` at a steady pace and records when it logged each step.

Rank 1 appends ``<step> <CLOCK_MONOTONIC>`` to ``<out>/rank1.progress`` after every 10th
``log()`` (the test SIGKILLs it and compares what the store kept with what it had logged by
then); rank 0 logs until ``<out>/killed`` appears, then a little more, and closes the run.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import coordinator

__all__ = ["main"]


def main() -> None:
    """Log paced points until killed (rank 1) or told the kill happened (rank 0)."""
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--flush", type=float, required=True)
    args = p.parse_args()
    out = Path(args.out)
    rank = int(os.environ["RANK"])
    settings = coordinator.Settings(flush_interval_s=args.flush, liveness_timeout_s=3.0)
    with coordinator.init_run(settings=settings) as run:
        t0 = time.monotonic()
        with open(out / f"rank{rank}.progress", "w", buffering=1) as progress:
            for s in range(10**9):
                run.log({"m": float(rank * 10_000_000 + s)}, step=s)
                if s % 10 == 0:
                    progress.write(f"{s} {time.monotonic()}\n")  # line-buffered: one write() per line
                    ahead = s / 2000 - (time.monotonic() - t0)  # 2000 points/s
                    if ahead > 0:
                        time.sleep(ahead)
                if rank == 0 and s % 100 == 0 and (out / "killed").exists():
                    break
            run.wait(120)


if __name__ == "__main__":
    main()
