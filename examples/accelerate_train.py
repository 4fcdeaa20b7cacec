"""Train a small MLP with Hugging Face Accelerate on CPU and log every process's view through coordinator.

Run:  accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no \\
          --dynamo_backend no --main_process_port 0 examples/accelerate_train.py
      (on a CPU-only machine ``--multi_gpu`` selects Accelerate's torchrun launcher; the script
      asks for ``Accelerator(cpu=True)``, so the processes train on CPU with gloo)
Then: coordinator show latest

The two lines that matter::

    accelerator = Accelerator(log_with=CoordinatorTracker())
    accelerator.log({"train/loss": loss.item()}, step=step)      # on every process

Each process logs its own loss and accuracy each step (Accelerate's own trackers log from the
main process only); the aggregator stores each process's series and their mean as the main
series, with no all_reduce in the training step. ``init_trackers(config=...)`` is stored as
``hparams/...`` fields. Nothing is downloaded: the data are generated here.
"""

from __future__ import annotations

import argparse

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from coordinator.integrations.accelerate import CoordinatorTracker


def make_data(n: int, seed: int = 0) -> TensorDataset:
    """Two interleaved spirals: a small problem a 2-layer MLP learns in a few epochs."""
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, generator=g) * 3 * torch.pi
    label = torch.randint(0, 2, (n,), generator=g)
    r = t / (3 * torch.pi)
    sign = label.float() * 2 - 1
    x = torch.stack([r * torch.cos(t) * sign, r * torch.sin(t) * sign], dim=1)
    x += 0.02 * torch.randn(n, 2, generator=g)
    return TensorDataset(x, label)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--samples", type=int, default=4096)
    p.add_argument("--project", default="examples")
    p.add_argument("--name", default="accelerate-spirals")
    a = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)

    tracker = CoordinatorTracker(run_name=a.name)
    accelerator = Accelerator(cpu=True, log_with=tracker)
    config = {"lr": a.lr, "batch_size": a.batch_size, "epochs": a.epochs, "model": "mlp-2x64", "optimizer": "sgd"}
    accelerator.init_trackers(a.project, config=config)  # on every process: opens the run, stores hparams/*

    loader = DataLoader(make_data(a.samples), batch_size=a.batch_size, shuffle=True)
    model = nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
    opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=0.9)
    model, opt, loader = accelerator.prepare(model, opt, loader)  # each process gets its shard
    loss_fn = nn.CrossEntropyLoss()

    step = 0
    for epoch in range(a.epochs):
        for x, y in loader:
            opt.zero_grad()
            out = model(x)
            loss = loss_fn(out, y)
            accelerator.backward(loss)
            opt.step()
            acc = (out.argmax(1) == y).float().mean()
            # This process's own values; the aggregator reduces across processes (mean).
            accelerator.log({"train/loss": loss.item(), "train/acc": acc.item(), "train/epoch": epoch}, step=step)
            step += 1

    run = tracker.tracker  # the coordinator Run (also accelerator.get_tracker("coordinator", unwrap=True))
    run.wait(60)  # this process's points are in the store
    accelerator.wait_for_everyone()  # ... and every other process's
    if accelerator.is_main_process:
        final = run["train/loss"].fetch_values()
        print(f"run {run.id}: {len(final)} steps of the mean train/loss; last {final[-1][1]:.4f}", flush=True)
    accelerator.end_training()  # waits and closes the run on every process, then the process group
    if accelerator.is_main_process:
        print(f"try: coordinator show {tracker.run_id}")


if __name__ == "__main__":
    main()
