"""Train a tiny model with the Hugging Face ``Trainer`` on 2 CPU processes, logging through coordinator.

Run:  torchrun --standalone --nproc_per_node=2 examples/hf_trainer.py
Then: coordinator show latest

Nothing is downloaded: the model (a small MLP classifier wrapped as a ``PreTrainedModel``) and
the data (two interleaved spirals) are defined in this file, and ``report_to="none"``.

The two lines that matter::

    cb = CoordinatorCallback(project="examples", name="hf-spirals")
    trainer = Trainer(..., callbacks=[cb])

``CoordinatorCallback`` runs in every process: the Trainer's metrics become ``train/loss``,
``train/learning_rate``, ``eval/loss``, ...; ``TrainingArguments`` and the model config become
``hparams/...`` fields, the end-of-training numbers ``summary/...`` fields. The Trainer
all-gathers its loss, so its series are the same on every rank. Each rank's *own* loss is logged
here through ``cb.run`` (``local/loss``): the aggregator keeps every rank's series and stores
their mean as the main series, with no collective in the training step.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel, Trainer, TrainerCallback, TrainingArguments

from coordinator.integrations.transformers import CoordinatorCallback


def make_data(n: int, seed: int) -> torch.utils.data.Dataset[dict[str, torch.Tensor]]:
    """Two interleaved spirals as a dataset of ``{"x", "labels"}`` dicts."""
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, generator=g) * 3 * torch.pi
    label = torch.randint(0, 2, (n,), generator=g)
    r = t / (3 * torch.pi)
    sign = label.float() * 2 - 1
    x = torch.stack([r * torch.cos(t) * sign, r * torch.sin(t) * sign], dim=1) + 0.02 * torch.randn(n, 2, generator=g)

    class Spirals(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
        def __len__(self) -> int:
            return n

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return {"x": x[i], "labels": label[i]}

    return Spirals()


class SpiralConfig(PretrainedConfig):
    """The model's hyperparameters (recorded as ``hparams/model/...``)."""

    model_type = "spiral-mlp"

    def __init__(self, hidden: int = 64, **kwargs: Any) -> None:
        self.hidden = hidden
        super().__init__(**kwargs)


class SpiralMLP(PreTrainedModel):
    """A 2-layer MLP classifier; remembers its last loss (this rank's own, before any gather)."""

    config_class = SpiralConfig

    def __init__(self, config: SpiralConfig) -> None:
        super().__init__(config)
        h = config.hidden
        self.net = nn.Sequential(nn.Linear(2, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 2))
        self.last_loss: torch.Tensor | None = None
        self.post_init()

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits = self.net(x)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
            self.last_loss = out["loss"].detach()
        return out


class LocalLoss(TrainerCallback):
    """Log this rank's own loss each step through the coordinator's run (no all_reduce)."""

    def __init__(self, cb: CoordinatorCallback) -> None:
        self.cb = cb

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if model is not None and model.last_loss is not None:
            self.cb.run.log({"local/loss": model.last_loss}, step=state.global_step)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--max-steps", type=int, default=200)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--output-dir", default="hf-trainer-out")
    p.add_argument("--project", default="examples")
    p.add_argument("--name", default="hf-spirals")
    a = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    args = TrainingArguments(
        output_dir=a.output_dir,
        report_to="none",
        max_steps=a.max_steps,
        learning_rate=a.lr,
        logging_steps=10,
        per_device_train_batch_size=64,
        per_device_eval_batch_size=256,
        use_cpu=True,
        save_strategy="no",
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,
        disable_tqdm=True,
    )
    cb = CoordinatorCallback(project=a.project, name=a.name)
    trainer = Trainer(
        model=SpiralMLP(SpiralConfig(hidden=64)),
        args=args,
        train_dataset=make_data(8192, seed=0),
        eval_dataset=make_data(1024, seed=1),
        callbacks=[cb, LocalLoss(cb)],
    )
    trainer.train()
    metrics = trainer.evaluate()  # still logged: the run stays open until the process exits
    if cb.run.rank == 0:
        print(f"run {cb.run_id}: eval/loss {metrics['eval_loss']:.4f} after {trainer.state.global_step} steps")
        print(f"look at it with: coordinator show {cb.run_id}")
    cb.close()


if __name__ == "__main__":
    main()
