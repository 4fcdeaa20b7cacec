"""Worker: one process (no launcher), CoordinatorTracker's options and value handling through Accelerate.

The constructor's project wins over ``init_trackers``' project name; ``init_kwargs["coordinator"]``
gives the run name and policies; nested dicts are flattened; numpy scalars and one-element
tensors are points; strings and lists are skipped; ``log_kwargs`` sets a key's policy; a
``log`` without a step continues the process's steps; a ``log`` after ``end_training`` warns
and does nothing. Prints one JSON line with what it saw.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import torch
from accelerate import Accelerator

from coordinator.integrations.accelerate import CoordinatorTracker


class _Count(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def main() -> None:
    seen = _Count()
    logging.getLogger("coordinator.integrations").addHandler(seen)
    tracker = CoordinatorTracker(project="mine")
    accelerator = Accelerator(cpu=True, log_with=[tracker])
    accelerator.init_trackers(
        "theirs",
        config={"optim": {"name": "adamw", "betas": [0.9, 0.999]}, "epochs": 2},
        init_kwargs={"coordinator": {"run_name": "from-init-kwargs", "policies": {"sums/*": "sum"}}},
    )
    for step in range(3):
        accelerator.log(
            {
                "a": np.float32(step),
                "t": torch.tensor([step * 2.0]),
                "nested": {"x": step, "y": True},
                "sums/n": step,
                "text": "hello",
                "vec": [1, 2],
            },
            step=step,
        )
    accelerator.log({"m": 5.0}, step=0, log_kwargs={"coordinator": {"policy": "max"}})
    accelerator.log({"m": 6.0})  # no step: the previous step of "m" + 1
    run_id = tracker.run_id
    accelerator.end_training()
    accelerator.log({"late": 1.0}, step=9)  # after end_training: warned, not raised
    print(json.dumps({"run_id": run_id, "messages": seen.messages}), flush=True)


if __name__ == "__main__":
    main()
