"""Worker: a Hugging Face ``Trainer`` under torchrun (gloo, CPU) logging through ``CoordinatorCallback``.

A tiny ``PreTrainedModel`` (a linear regression with its own config) is trained for ``--steps``
steps with ``logging_steps=1``; a second callback logs a rank-dependent metric through
``callback.run`` at every step; after ``train()`` the worker runs ``evaluate()`` (which must still
log), then ``predict()``, and writes ``<out>/rank<r>.json``. With ``--fail-rank R`` the model's forward raises on global
rank R at its ``--fail-at``-th call, an uncaught exception.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel, Trainer, TrainerCallback, TrainingArguments

from coordinator.integrations.transformers import CoordinatorCallback


def user_value(rank: int, step: int) -> float:
    """The rank-dependent metric the user logs at ``step``."""
    return rank * 100.0 + step * 0.5


class TinyConfig(PretrainedConfig):
    model_type = "coordinator-tiny"

    def __init__(self, width: int = 8, **kwargs: Any) -> None:
        self.width = width
        super().__init__(**kwargs)


class TinyModel(PreTrainedModel):
    config_class = TinyConfig

    def __init__(self, config: TinyConfig, fail_rank: int = -1, fail_at: int = 0) -> None:
        super().__init__(config)
        self.linear = nn.Linear(config.width, 1)
        self.fail_rank = fail_rank
        self.fail_at = fail_at
        self.calls = 0
        self.post_init()

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        self.calls += 1
        rank = int(os.environ.get("RANK", "0"))
        if rank == self.fail_rank and self.calls == self.fail_at:
            raise RuntimeError(f"injected failure on rank {rank} at forward call {self.calls}")
        pred = self.linear(x).squeeze(-1)
        out = {"logits": pred}
        if labels is not None:
            out["loss"] = nn.functional.mse_loss(pred, labels)
        return out


class RandomData(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    def __init__(self, n: int, width: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, width, generator=g)
        self.y = self.x.sum(-1) + 0.1 * torch.randn(n, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "labels": self.y[i]}


class RankMetric(TrainerCallback):
    """The user's own metric, different on every rank, logged through the coordinator's run."""

    def __init__(self, cb: CoordinatorCallback) -> None:
        self.cb = cb

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        step = state.global_step
        self.cb.run.log({"user/rank_value": user_value(self.cb.run.rank, step)}, step=step)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--fail-rank", type=int, default=-1)
    p.add_argument("--fail-at", type=int, default=3)
    a = p.parse_args()
    out = Path(a.out)
    torch.manual_seed(0)
    model = TinyModel(TinyConfig(width=8), fail_rank=a.fail_rank, fail_at=a.fail_at)
    args = TrainingArguments(
        output_dir=str(out / "trainer"),
        report_to="none",
        max_steps=a.steps,
        logging_steps=1,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        learning_rate=0.01,
        use_cpu=True,
        save_strategy="no",
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=0,
        ddp_find_unused_parameters=False,
        hub_token="hf_not_to_be_stored",  # a secret: must not become a field
    )
    cb = CoordinatorCallback(project="hf", name="tiny-trainer")
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=RandomData(64, 8, seed=1),
        eval_dataset=RandomData(32, 8, seed=2),
        callbacks=[cb, RankMetric(cb)],
    )
    trainer.train()
    metrics = trainer.evaluate()
    predicted = trainer.predict(RandomData(16, 8, seed=3)).metrics
    rank = cb.run.rank
    result = {"rank": rank, "run_id": cb.run_id, "eval_loss": metrics["eval_loss"], "test_loss": predicted["test_loss"]}
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    # The run is closed at process exit (LazyRun's atexit), after the Trainer is done.


if __name__ == "__main__":
    main()
