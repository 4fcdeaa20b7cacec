"""Worker: a tiny model trained with Accelerate on CPU, logging on every process via CoordinatorTracker.

Each process logs ``train/rank_metric`` = rank + step (rank-dependent, so the main series is a
real mean), its own ``train/loss`` and a string (skipped). ``--fail-rank R --fail-step S``:
process R raises at step S. Writes ``<out>/rank<r>.json`` (run id, losses, what get_tracker
returned) when training ends normally.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from coordinator.integrations.accelerate import CoordinatorTracker

CONFIG = {"lr": 0.05, "batch_size": 8, "model": {"hidden": 8, "act": "relu"}, "layers": [4, 8, 1], "seed": None}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--fail-rank", type=int, default=-1)
    p.add_argument("--fail-step", type=int, default=-1)
    a = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)

    tracker = CoordinatorTracker(run_name="acc-test")
    accelerator = Accelerator(cpu=True, log_with=tracker)
    rank = accelerator.process_index
    accelerator.init_trackers("acc-proj", config=CONFIG)

    n = a.steps * 8 * accelerator.num_processes
    ds = TensorDataset(torch.randn(n, 4), torch.randn(n, 1))
    loader = DataLoader(ds, batch_size=8, shuffle=False)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    model, opt, loader = accelerator.prepare(model, opt, loader)

    losses: list[float] = []
    for step, (x, y) in enumerate(loader):
        if step >= a.steps:
            break
        if rank == a.fail_rank and step == a.fail_step:
            raise RuntimeError(f"injected failure on rank {rank} at step {step}")
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        accelerator.backward(loss)
        opt.step()
        value = loss.item()
        losses.append(value)
        accelerator.log({"train/rank_metric": rank + step, "train/loss": value, "train/phase": "warmup"}, step=step)

    found = accelerator.get_tracker("coordinator")
    result = {
        "rank": rank,
        "run_id": tracker.run_id,
        "losses": losses,
        "get_tracker_is_ours": found is tracker,
        "unwrap_is_run": accelerator.get_tracker("coordinator", unwrap=True) is tracker.tracker,
    }
    accelerator.end_training()
    Path(a.out, f"rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
