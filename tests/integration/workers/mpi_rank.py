"""Worker of the MPI tests: one rank of a plain ``mpirun`` job (no torch.distributed).

Rank and world size come from Open MPI's environment (``OMPI_COMM_WORLD_RANK``/``SIZE``); rank 0
starts the aggregator and the other ranks find it through the node-local rendezvous file. Each
rank logs ``train/loss`` = rank * 1000 + step and ``train/rank`` = rank for ``--steps`` steps, sets
the same hyperparameters, and writes ``rank<r>.json`` (run id, rank, world size, whether torch
was imported). With ``--fail-rank R --fail-at S`` rank R raises ``ValueError`` at step S while
the others go on training (mpirun then terminates them).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import coordinator


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--out", required=True)
    p.add_argument("--fail-rank", type=int, default=-1)
    p.add_argument("--fail-at", type=int, default=-1)
    p.add_argument("--close-timeout", type=float, default=60.0)
    a = p.parse_args()
    settings = coordinator.Settings(close_timeout_s=a.close_timeout, liveness_timeout_s=20)
    with coordinator.init_run(project="mpi", name="mpi-job", settings=settings) as run:
        rank, world = run.rank, run.world_size
        with open(os.path.join(a.out, f"rank{rank}.json"), "w") as f:
            json.dump({"run_id": run.id, "rank": rank, "world_size": world, "torch": "torch" in sys.modules}, f)
        run["hparams"] = {"lr": 0.01, "batch_size": 32, "launcher": "mpirun"}
        for s in range(a.steps):
            if rank == a.fail_rank and s == a.fail_at:
                run.wait(30)  # what was logged before the error is stored
                raise ValueError(f"diverged at step {s}")
            run.log({"train/loss": rank * 1000 + s, "train/rank": rank}, step=s)
            if a.fail_rank >= 0:
                time.sleep(0.02)  # the other ranks are still training when the failing rank exits
        run.wait(60)


if __name__ == "__main__":
    main()
