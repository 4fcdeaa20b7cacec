"""Worker: 4 DDP ranks log live into MLflow through the aggregator's forwarder."""

from __future__ import annotations

import os

import torch.distributed as dist

import coordinator


def main() -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    with coordinator.init_run(
        project="live",
        name="live-mlflow",
        backend="mlflow",
        backend_options={"tracking_uri": os.environ["TEST_MLFLOW_URI"]},
    ) as run:
        run["parameters"] = {"lr": 0.01, "batch_size": 32}
        for s in range(100):
            run.log({"train/loss": rank + s / 1000}, step=s)
        run.wait(60)
        dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
