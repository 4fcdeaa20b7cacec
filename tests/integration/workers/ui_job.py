"""Worker for the UI's browser test: every rank logs a train/loss and a train/acc that look like training
(the loss falls from about 2.5 towards 0.2, the accuracy rises; each rank a little apart and with its own
noise, so the ranks' band is visible) and appends one text (with markup in it, which the page must show as
text) to samples/generation."""

from __future__ import annotations

import argparse
import json
import math
import os
import random

import torch.distributed as dist

import coordinator


def loss(step: int, rank: int, noise: random.Random) -> float:
    """A falling loss: 2.3 e^(-step/120) + 0.15, each rank 0.1 higher than the one before, plus noise."""
    return 2.3 * math.exp(-step / 120) + 0.15 + 0.1 * rank + noise.gauss(0.0, 0.04)


def acc(step: int, rank: int, noise: random.Random) -> float:
    """A rising accuracy, each rank a little lower than the one before, with noise."""
    return 0.95 - 0.85 * math.exp(-step / 100) - 0.03 * rank + noise.gauss(0.0, 0.015)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--points", type=int, default=400)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    with coordinator.init_run(project="test", name="ui") as run:
        run_id = run.id
        run["parameters"] = {"lr": 0.01, "batch_size": 64}
        noise = random.Random(rank)
        for s in range(a.points):
            run.log({"train/loss": loss(s, rank, noise), "train/acc": acc(s, rank, noise)}, step=s)
        run["samples/generation"].append(f"<b>rank {rank}</b> says <i>hello</i> & bye", step=a.points - 1)
        run.wait(timeout=120)
    with open(os.path.join(a.out, f"rank{rank}.json"), "w") as f:
        json.dump({"rank": rank, "run_id": run_id}, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
