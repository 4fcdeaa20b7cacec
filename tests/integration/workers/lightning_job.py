"""Worker of the Lightning tests: a tiny model trained by 2 CPU processes that Lightning starts itself.

``--launcher ddp`` / ``ddp_spawn`` / ``ddp_fork``: ``Trainer(strategy=..., accelerator="cpu", devices=2,
logger=CoordinatorLogger(...))``; ``--launcher fabric``: ``Fabric(strategy="ddp",
loggers=[CoordinatorLogger(...)])`` with ``fabric.log_dict``. Every rank logs
``train/rank_metric`` = ``1000 * rank + global_step`` without ``sync_dist`` and writes
``<out>/rank<r>.json`` (run id, what it logged). ``--fail-rank R`` raises in rank R's training
step at ``--fail-step``.
"""

from __future__ import annotations

import argparse
import json
import os
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from coordinator.integrations.lightning import CoordinatorLogger

warnings.filterwarnings("ignore")  # Lightning's advice (num_workers, sync_dist) is noise here

BATCH = 4


def metric(rank: int, step: int) -> float:
    """The rank-dependent value every rank logs at ``step``."""
    return 1000.0 * rank + step


def _data(steps: int) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    n = 2 * BATCH * (steps + 2)
    return TensorDataset(torch.randn(n, 4, generator=g), torch.randn(n, 1, generator=g))


def _write(out: str, rank: int, result: dict[str, Any]) -> None:
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))


class Tiny(pl.LightningModule):
    """Linear-ReLU-linear regression; logs a rank-dependent metric without ``sync_dist``."""

    def __init__(
        self,
        lr: float = 0.05,
        hidden: int = 8,
        optimizer: dict[str, Any] | None = None,
        fail: tuple[int, int] = (-1, 0),
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["fail"])
        self.fail = fail
        self.net = nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.logged: list[tuple[int, float]] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        if (self.global_rank, self.global_step) == self.fail:
            raise RuntimeError(f"boom on rank {self.global_rank} at step {self.global_step}")
        value = metric(self.global_rank, self.global_step)
        self.log("train/rank_metric", value, sync_dist=False)
        self.log("train/loss", loss, sync_dist=False)
        self.logged.append((self.global_step, value))
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class Report(pl.Callback):
    """Each rank writes what it logged and the run id (ddp_spawn workers end inside ``fit``)."""

    def __init__(self, out: str) -> None:
        self.out = out

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert isinstance(pl_module, Tiny)
        _write(self.out, trainer.global_rank, {"run_id": trainer.logger.version, "logged": pl_module.logged})


def train_with_trainer(a: argparse.Namespace) -> None:
    model = Tiny(optimizer={"name": "sgd", "momentum": 0.0}, fail=(a.fail_rank, a.fail_step))
    logger = CoordinatorLogger("lightning-test", a.launcher, log_model=a.log_model)
    callbacks: list[pl.Callback] = [Report(a.out)]
    if a.log_model:
        callbacks.append(
            pl.callbacks.ModelCheckpoint(dirpath=os.path.join(a.out, "ckpt"), save_last=True, every_n_train_steps=2)
        )
    trainer = pl.Trainer(
        strategy=a.launcher,
        accelerator="cpu",
        devices=2,
        max_steps=a.steps,
        log_every_n_steps=1,
        logger=logger,
        callbacks=callbacks,
        enable_checkpointing=a.log_model,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=a.out,
    )
    trainer.fit(model, DataLoader(_data(a.steps), batch_size=BATCH))


def train_with_fabric(a: argparse.Namespace) -> None:
    from lightning.fabric import Fabric

    logger = CoordinatorLogger("lightning-test", "fabric")
    fabric = Fabric(accelerator="cpu", devices=2, strategy="ddp", loggers=[logger])
    fabric.launch()
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    model, opt = fabric.setup(model, opt)
    loader = fabric.setup_dataloaders(DataLoader(_data(a.steps), batch_size=BATCH))
    fabric.logger.log_hyperparams({"lr": 0.05, "hidden": 8, "optimizer": {"name": "sgd"}})
    logged = []
    for step, (x, y) in enumerate(loader):
        if step == a.steps:
            break
        loss = nn.functional.mse_loss(model(x), y)
        fabric.backward(loss)
        opt.step()
        opt.zero_grad()
        value = metric(fabric.global_rank, step)
        fabric.log_dict({"train/rank_metric": value, "train/loss": loss}, step=step)
        logged.append((step, value))
    fabric.logger.finalize("success")
    _write(a.out, fabric.global_rank, {"run_id": logger.version, "logged": logged})


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--launcher", choices=["ddp", "ddp_spawn", "ddp_fork", "fabric"], required=True)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--out", required=True)
    p.add_argument("--fail-rank", type=int, default=-1)
    p.add_argument("--fail-step", type=int, default=3)
    p.add_argument("--log-model", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(1)
    if a.launcher == "fabric":
        train_with_fabric(a)
    else:
        train_with_trainer(a)


if __name__ == "__main__":
    main()
