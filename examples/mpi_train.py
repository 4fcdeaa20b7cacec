"""Log from every rank of a plain MPI job: no torch.distributed, no mpi4py needed.

Run:  mpirun -np 4 python examples/mpi_train.py     (as root: add --allow-run-as-root;
                                                     fewer cores than ranks: --oversubscribe)
Also: srun -n 4 python examples/mpi_train.py        (one node)
Then: coordinator show latest

Each rank fits its own small linear model with SGD on its own shard of a synthetic regression
problem (pure Python, so the example needs nothing but coordinator). ``init_run`` reads the
rank and world size from the launcher's environment (Open MPI's ``OMPI_COMM_WORLD_RANK``/
``OMPI_COMM_WORLD_SIZE``, PMI's, or SLURM's ``SLURM_PROCID``/``SLURM_NTASKS``); rank 0 starts the
aggregator and the other ranks find it through a private rendezvous file on the node. Every
rank's loss is stored as its own series, and the mean across ranks as the main series, without a
single collective in the training loop. (Across several nodes, initialise torch.distributed
first, or give the endpoint: see the README.)
"""

from __future__ import annotations

import argparse
import random

import coordinator


def make_shard(rank: int, n: int, dim: int) -> list[tuple[list[float], float]]:
    """This rank's samples of y = w . x + noise, with the same true w on every rank."""
    truth = random.Random(0)
    w = [truth.uniform(-1, 1) for _ in range(dim)]
    rng = random.Random(1 + rank)
    data = []
    for _ in range(n):
        x = [rng.gauss(0, 1) for _ in range(dim)]
        data.append((x, sum(a * b for a, b in zip(w, x, strict=True)) + rng.gauss(0, 0.1)))
    return data


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--dim", type=int, default=8)
    p.add_argument("--project", default="examples")
    p.add_argument("--name", default="mpi-linreg")
    a = p.parse_args()

    with coordinator.init_run(a.project, a.name) as run:  # the same line on every rank
        rank, world = run.rank, run.world_size
        run["hparams"] = {"lr": a.lr, "batch_size": a.batch_size, "dim": a.dim, "world_size": world}
        data = make_shard(rank, 1024, a.dim)
        rng = random.Random(100 + rank)
        w = [0.0] * a.dim
        for step in range(a.steps):
            batch = rng.sample(data, a.batch_size)
            grad = [0.0] * a.dim
            loss = 0.0
            for x, y in batch:
                err = sum(wi * xi for wi, xi in zip(w, x, strict=True)) - y
                loss += err * err / a.batch_size
                for i, xi in enumerate(x):
                    grad[i] += 2 * err * xi / a.batch_size
            w = [wi - a.lr * g for wi, g in zip(w, grad, strict=True)]
            run.log({"train/loss": loss, "train/weight_norm": sum(wi * wi for wi in w) ** 0.5}, step=step)
        run[f"summary/rank{rank}/final_loss"] = loss  # one path per rank: equal paths must hold equal values
        run.wait(60)
        if rank == 0:
            print(f"run {run.id}: {world} ranks x {a.steps} steps; try: coordinator show {run.id}")


if __name__ == "__main__":
    main()
