"""Train a tiny Lightning model with DDP on 2 CPU processes, logging every rank through coordinator.

Run:  python examples/lightning_train.py          (Lightning starts the second process itself)
Then: coordinator show latest

The two lines that matter::

    trainer = L.Trainer(strategy="ddp", devices=2, logger=CoordinatorLogger("demo", "lightning"))
    self.log("train/loss", loss)              # no sync_dist: no all_reduce in the training step

Every rank's ``self.log`` reaches the logger; the aggregator keeps each rank's own series and
stores the mean across ranks as the main series. ``save_hyperparameters()`` becomes fields under
``hparams/``. Nothing is downloaded: the model and data are defined here.
"""

from __future__ import annotations

import argparse
import warnings
from typing import Any

import lightning.pytorch as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from coordinator.integrations.lightning import CoordinatorLogger


class Regressor(L.LightningModule):
    """A 2-layer MLP fitting a noisy linear function."""

    def __init__(self, lr: float = 0.05, hidden: int = 16) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train/loss", loss)  # each rank its own value; the run's main series is the mean
        self.log("train/batch_mean_target", y.mean())  # differs per rank: its shard of the data
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def make_data(n: int = 2048, seed: int = 0) -> TensorDataset:
    """``y = x @ w + noise`` with fixed ``w``: random, reproducible, nothing downloaded."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    w = torch.randn(8, 1, generator=g)
    return TensorDataset(x, x @ w + 0.1 * torch.randn(n, 1, generator=g))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, default=2)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--max-steps", type=int, default=-1)
    a = p.parse_args()
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    torch.set_num_threads(1)
    logger = CoordinatorLogger("demo", "lightning")
    trainer = L.Trainer(
        strategy="ddp",
        accelerator="cpu",
        devices=a.devices,
        max_epochs=a.epochs,
        max_steps=a.max_steps,
        log_every_n_steps=1,
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Regressor(), DataLoader(make_data(), batch_size=64))
    if trainer.is_global_zero:
        print(f"run {logger.version}: {trainer.global_step} steps; see it with: coordinator show {logger.version}")


if __name__ == "__main__":
    main()
