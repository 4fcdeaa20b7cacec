"""The peer trackers, set up once: TensorBoard, W&B offline, MLflow (sync/async), Neptune offline, trackio.

Used by the peer table (``benchmarks.peers``, section 4) and the DDP overhead job
(``benchmarks.ddp_overhead``, section 5), so that both measure each peer configured the same
way. Every peer runs locally or offline (``peer_env``); nothing is sent over the network.

* TensorBoard: ``torch.utils.tensorboard.SummaryWriter`` under ``<root>/tb/<tag>``;
* W&B: ``wandb.init(mode="offline")`` under ``<root>/wandb/<tag>``, system stats, metadata,
  machine info, git and code saving off;
* MLflow: ``mlflow.log_metric(s)(..., synchronous=...)`` into the SQLite store named by
  ``MLFLOW_TRACKING_URI`` (``peer_env``), experiment = the project;
* Neptune (``neptune`` 1.x): ``neptune.init_run(mode="offline")`` with every capture off; a
  series handle is looked up once per key;
* trackio: ``trackio.init(project=...)`` with CPU/GPU auto-logging off, under ``TRACKIO_DIR``.

Each peer is imported only when it is opened (imports take seconds for some of them).
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["PEERS", "Tracker", "available", "open_tracker", "peer_env"]

# name -> (distribution, DDP mode, description)
PEERS: dict[str, tuple[str, str, str]] = {
    "tensorboard": ("tensorboard", "rank0", "torch.utils.tensorboard SummaryWriter.add_scalar"),
    "wandb": ("wandb", "every", "wandb.init(mode=offline, group=...) per rank; run.log(dict, step=)"),
    "mlflow-sync": ("mlflow", "rank0", "mlflow.log_metric(s)(..., step=) (synchronous), SQLite store"),
    "mlflow-async": ("mlflow", "rank0", "mlflow.log_metric(s)(..., synchronous=False), SQLite store"),
    "neptune": ("neptune", "every", 'neptune.init_run(mode="offline", custom_run_id=...); run[k].append()'),
    "trackio": ("trackio", "rank0", "trackio.init(); trackio.log(dict, step=)"),
}


def peer_env(root: Path) -> dict[str, str]:
    """Environment of a process that opens peers: local/offline everything, no telemetry."""
    return {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_CONSOLE": "off",
        "WANDB_DISABLE_CODE": "true",
        "WANDB_DISABLE_GIT": "true",
        "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db",
        "MLFLOW_ENABLE_ASYNC_LOGGING": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "1",
        "TRACKIO_DIR": str(root / "trackio"),
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "NEPTUNE_MODE": "offline",
        "TOKENIZERS_PARALLELISM": "false",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "GIT_PYTHON_REFRESH": "quiet",
    }


def available(name: str) -> tuple[bool, str]:
    """(installed, version or the reason it is missing) without importing the package."""
    dist = PEERS[name][0]
    try:
        v = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return False, f"`{dist}` is not installed (pip install -e '.[bench]')"
    if name == "tensorboard":
        try:
            tv = importlib.metadata.version("torch")
        except importlib.metadata.PackageNotFoundError:
            return False, "torch is not installed (torch.utils.tensorboard)"
        return True, f"tensorboard {v}, torch {tv}"
    return True, f"{dist} {v}"


class Tracker:
    """One peer run opened in this process.

    ``tag`` names this instance's directory for the peers that write under ``root`` (a rank,
    a DDP block); ``run_name`` is the peer's run name; ``group`` groups the runs of one
    multi-process trial (W&B ``group``, Neptune ``custom_run_id``), None for a lone run.
    """

    def __init__(
        self, name: str, root: Path, tag: str, *, run_name: str, project: str = "bench", group: str | None = None
    ) -> None:
        self.name, self.root, self.tag = name, root, tag
        self.run_name, self.project, self.group = run_name, project, group

    scalar: Callable[[str, float, int], object]
    """Log one scalar (the hot-path call): a method of the subclass, or the peer's own bound method
    where nothing needs to sit in between (then the hot path times the peer's call alone)."""

    def many(self, d: dict[str, float], step: int) -> None:
        """Log every metric of one step."""
        raise NotImplementedError

    def drain(self) -> None:
        """Flush what the calls so far queued, so that a timed phase that follows starts empty."""

    def finish(self) -> dict[str, Any]:
        """Flush and close; returns what the reader of the output needs (e.g. a run id)."""
        return {}


class _TensorBoard(Tracker):
    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        from torch.utils.tensorboard import SummaryWriter

        self.w = SummaryWriter(log_dir=str(self.root / "tb" / self.tag))
        # The writer's own method, not a wrapper: the hot path measures add_scalar itself.
        self.scalar = self.w.add_scalar

    def many(self, d: dict[str, float], step: int) -> None:
        add = self.w.add_scalar
        for k, v in d.items():
            add(k, v, step)

    def drain(self) -> None:
        self.w.flush()

    def finish(self) -> dict[str, Any]:
        self.w.flush()
        self.w.close()
        return {}


class _WandB(Tracker):
    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        import wandb

        d = self.root / "wandb" / self.tag
        d.mkdir(parents=True, exist_ok=True)
        settings = wandb.Settings(
            console="off",
            x_disable_stats=True,
            x_disable_meta=True,
            x_disable_machine_info=True,
            disable_git=True,
            save_code=False,
        )
        self.run = wandb.init(
            project=self.project,
            group=self.group,
            name=self.run_name,
            dir=str(d),
            mode="offline",
            settings=settings,
            reinit="create_new",
        )

    def scalar(self, key: str, x: float, step: int) -> None:
        self.run.log({key: x}, step=step)

    def many(self, d: dict[str, float], step: int) -> None:
        self.run.log(d, step=step)

    def finish(self) -> dict[str, Any]:
        self.run.finish()
        return {}


class _MLflow(Tracker):
    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        import mlflow

        self.mlflow = mlflow
        self.sync = self.name == "mlflow-sync"
        mlflow.set_experiment(self.project)
        self.run = mlflow.start_run(run_name=self.run_name)

    def scalar(self, key: str, x: float, step: int) -> None:
        self.mlflow.log_metric(key, x, step=step, synchronous=self.sync)

    def many(self, d: dict[str, float], step: int) -> None:
        self.mlflow.log_metrics(d, step=step, synchronous=self.sync)

    def drain(self) -> None:
        if not self.sync:
            self.mlflow.flush_async_logging()

    def finish(self) -> dict[str, Any]:
        if not self.sync:
            self.mlflow.flush_async_logging()
        self.mlflow.end_run()
        return {"run_id": self.run.info.run_id}


class _Neptune(Tracker):
    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        import neptune

        # The ranks of one trial share one run id (Neptune's distributed-training guide); a lone
        # run keeps Neptune's defaults.
        shared = {"custom_run_id": self.group[:36], "name": self.group} if self.group else {}
        self.run = neptune.init_run(
            mode="offline",
            **shared,
            capture_stdout=False,
            capture_stderr=False,
            capture_hardware_metrics=False,
            capture_traceback=False,
            git_ref=False,
            source_files=[],
        )
        self._h: dict[str, Any] = {}

    def scalar(self, key: str, x: float, step: int) -> None:
        h = self._h.get(key)
        if h is None:
            h = self._h[key] = self.run[key]
        h.append(x, step=step)

    def many(self, d: dict[str, float], step: int) -> None:
        for k, v in d.items():
            h = self._h.get(k)
            if h is None:
                h = self._h[k] = self.run[k]
            h.append(v, step=step)

    def drain(self) -> None:
        self.run.wait()

    def finish(self) -> dict[str, Any]:
        self.run.wait()
        self.run.stop()
        return {}


class _Trackio(Tracker):
    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        import trackio

        self.trackio = trackio
        trackio.init(project=self.project, name=self.run_name, auto_log_cpu=False, auto_log_gpu=False)

    def scalar(self, key: str, x: float, step: int) -> None:
        self.trackio.log({key: x}, step=step)

    def many(self, d: dict[str, float], step: int) -> None:
        self.trackio.log(d, step=step)

    def finish(self) -> dict[str, Any]:
        self.trackio.finish()
        return {}


_TRACKERS: dict[str, type[Tracker]] = {
    "tensorboard": _TensorBoard,
    "wandb": _WandB,
    "mlflow-sync": _MLflow,
    "mlflow-async": _MLflow,
    "neptune": _Neptune,
    "trackio": _Trackio,
}


def open_tracker(
    name: str, root: Path, tag: str, *, run_name: str, project: str = "bench", group: str | None = None
) -> Tracker:
    """Open peer ``name`` (a key of ``PEERS``) in this process.

    Raises:
        ValueError: an unknown peer.
    """
    try:
        cls = _TRACKERS[name]
    except KeyError:
        raise ValueError(f"unknown peer {name!r}") from None
    return cls(name, root, tag, run_name=run_name, project=project, group=group)
