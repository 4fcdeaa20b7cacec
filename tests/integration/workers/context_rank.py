"""Worker of tests/integration/test_context.py: one rank that logs a few steps and may fail.

``--fail-rank R``: rank R raises ``ValueError("diverged at step 7")`` at step 7 (its traceback must
reach the run); ``--thread``: a background thread raises instead (the main thread goes on). The
other ranks wait (bounded) until the failed rank has closed, then end normally. Each rank writes
its pid to ``<out>/rank<r>.pid``. Extra arguments (``--api-key ...``) are only there to be seen,
masked, in the run's ``sys/ranks/<r>/argv``.
"""

from __future__ import annotations

import argparse
import os
import threading
import time

import coordinator


def step_of_training(run: coordinator.Run, rank: int, step: int, fail_rank: int) -> None:
    run.log({"loss": 1.0 / (step + 1)}, step=step)
    if rank == fail_rank and step == 7:
        run.wait(30)
        raise ValueError("diverged at step 7")


def loader() -> None:
    _ = 1 / 0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--fail-rank", type=int, default=-1)
    p.add_argument("--thread", action="store_true")
    p.add_argument("--api-key", default="")
    a = p.parse_args()
    rank = int(os.environ["RANK"])
    with open(os.path.join(a.out, f"rank{rank}.pid"), "w") as f:
        f.write(str(os.getpid()))
    settings = coordinator.Settings(close_timeout_s=60, stop_grace_s=5)
    with coordinator.init_run(project="ctx", name="ctx", settings=settings) as run:
        if a.thread:
            t = threading.Thread(target=loader, name="loader")
            t.start()
            t.join(30)
        for step in range(20):
            step_of_training(run, rank, step, a.fail_rank)
        run.wait(60)
        deadline = time.monotonic() + 60
        while 0 <= a.fail_rank != rank and time.monotonic() < deadline:
            run.sync(timeout=30)
            if run.rank_states().get(a.fail_rank) in ("closed", "lost"):
                break
            time.sleep(0.2)


if __name__ == "__main__":
    main()
