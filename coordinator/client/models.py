"""Models and model versions (Neptune's ``init_model`` / ``init_model_version``).

A model and each of its versions is a single-rank run of the embedded store (rank 0 of 1) with its
own id: ``<project>-<KEY>`` for the model, ``<model id>-<n>`` for its n-th version (n counts the
versions already in the store). Each carries the field ``sys/kind`` (``model`` / ``model_version``);
a version also ``sys/model_id`` and its stage ``sys/stage``. So they are listed by
``coordinator runs`` and opened read-only like any run. With ``backend="mlflow"`` the model is also
an MLflow registered model and each version an MLflow model version; ``change_stage`` sets the
stage as an MLflow alias (:mod:`coordinator.client.registry`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from coordinator.client.handle import Handle
from coordinator.client.registry import MlflowRegistry, open_registry
from coordinator.client.run import Run
from coordinator.client.start import init_run
from coordinator.core.limits import DIR_NAME
from coordinator.errors import ConfigError
from coordinator.journal.store import list_runs, resolve_root, run_dir
from coordinator.settings import Settings

__all__ = ["STAGES", "Model", "ModelVersion", "init_model", "init_model_version", "next_version"]

STAGES = ("none", "staging", "production", "archived")
"""The stages of a model version (Neptune's); ``none`` is where a new version starts."""

_KEY = re.compile(r"^[A-Z0-9]{1,32}$")


class _RunLike:
    """Delegates the run API (``h["a/b"]``, ``wait``, ``sync``, ``fetch``, ``stop``, ``with``) to a run."""

    kind = "run"

    def __init__(self, run: Run, registry: MlflowRegistry | None) -> None:
        self._run = run
        self._registry = registry

    @property
    def id(self) -> str:
        """The id (``sys/id``)."""
        return self._run.id

    @property
    def run(self) -> Run:
        """The underlying run."""
        return self._run

    def __getitem__(self, path: str) -> Handle:
        return self._run[path]

    def __setitem__(self, path: str, value: object) -> None:
        self._run[path] = value

    def fetch(self) -> dict[str, Any]:
        """Every field as this process sees it (``sync()`` first for the store's latest)."""
        return dict(self._run._view.fields)

    def __getattr__(self, name: str) -> Any:  # wait, sync, fetch, stop, fail, ...
        if name.startswith("__") or name in ("_run", "_registry"):
            raise AttributeError(name)
        return getattr(self._run, name)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} mode={self._run.mode}>"

    def __enter__(self) -> Any:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: object) -> None:
        self._run.__exit__(et, ev, tb)

    def _mark(self, items: dict[str, str]) -> None:
        """Write the coordinator's own ``sys/*`` string fields (kind, model id, stage)."""
        if self._run.mode in ("read-only", "disabled"):
            return

        def view(fields: dict[str, Any]) -> None:
            fields.update(items)

        self._run._write_sys([(p, ("str", v)) for p, v in items.items()], view)


class Model(_RunLike):
    """A model: a run holding what all its versions share. Create with :func:`init_model`."""

    kind = "model"


class ModelVersion(_RunLike):
    """One version of a model. Create with :func:`init_model_version`."""

    kind = "model_version"

    def __init__(self, run: Run, registry: MlflowRegistry | None, model_id: str) -> None:
        super().__init__(run, registry)
        self.model_id = model_id

    def change_stage(self, stage: str) -> None:
        """Move this version to ``stage`` (``none``, ``staging``, ``production``, ``archived``).

        Recorded as the field ``sys/stage``; with ``backend="mlflow"`` also the version's MLflow
        alias (the alias ``stage`` moves to this version; ``none`` removes this version's aliases).

        Raises:
            ValueError: an unknown stage. ClosedError: the version is read-only or stopped.
            SinkError: MLflow refused (its message, secrets masked).
        """
        if not isinstance(stage, str) or stage not in STAGES:
            raise ValueError(f"stage must be one of {', '.join(STAGES)}; got {stage!r:.80}")
        if self._run.mode == "read-only":
            from coordinator.errors import ClosedError

            raise ClosedError(f"model version {self.id} is open read-only; its stage cannot change")
        self._mark({"sys/stage": stage})
        if self._registry is not None:
            self._registry.set_stage(self.model_id, self.id, self._uploads(), stage)
        if self._run.mode == "sync":
            self._run.wait()

    def stop(self, timeout: float | None = None) -> None:
        """Register the version with the backend (if not yet) and stop it like a run."""
        try:
            if self._registry is not None and self._run.mode not in ("read-only", "disabled"):
                self._registry.ensure_version(self.model_id, self.id, self._uploads())
        finally:  # a refused registration still stops the run
            self._run.stop(timeout)

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: object) -> None:
        try:
            if et is None and self._registry is not None and self._run.mode not in ("read-only", "disabled"):
                self._registry.ensure_version(self.model_id, self.id, self._uploads())
        finally:  # a refused registration still ends the run
            self._run.__exit__(et, ev, tb)

    def _uploads(self) -> list[tuple[str, str, Path]]:
        """(field path, file name, stored file) of every file uploaded to this version."""
        out = []
        for path, v in sorted(self._run._view.fields.items()):
            if isinstance(v, dict) and isinstance(v.get("path"), str) and "sha256" in v:
                out.append((path, str(v.get("name") or Path(v["path"]).name), Path(v["path"])))
        return out


def init_model(key: str, project: str = "default", **kwargs: Any) -> Model:
    """Create (or, with ``mode="read-only"``, open) the model ``<project>-<KEY>``.

    Args:
        key: the model's key: 1 to 32 upper-case letters or digits (Neptune's rule).
        project: the project; the model's id is ``<project>-<key>``.
        **kwargs: as :func:`~coordinator.init_run` (``mode``, ``settings``, ``tags``, ...);
            ``backend="mlflow"`` also creates the MLflow registered model named after the id.

    Raises:
        ValueError: a bad key. ConfigError: the model exists already (open it read-only),
        or a bad argument of ``init_run``. SinkError: MLflow refused.
    """
    if not isinstance(key, str) or not _KEY.match(key):
        raise ValueError(f"a model key is 1 to 32 upper-case letters or digits, got {key!r:.80}")
    model_id = f"{project}-{key}"
    run, registry = _open(model_id, project, kwargs, new=True, model_id=model_id)
    model = Model(run, registry)
    model._mark({"sys/kind": "model"})
    return model


def init_model_version(model: str | Model, *, with_id: str | None = None, **kwargs: Any) -> ModelVersion:
    """Create the next version ``<model id>-<n>`` of ``model`` (or open ``with_id`` read-only).

    Args:
        model: the model's id (``"<project>-<KEY>"``) or the :class:`Model`.
        with_id: an existing version's id, with ``mode="read-only"``.
        **kwargs: as :func:`~coordinator.init_run`; ``backend="mlflow"`` registers the version
            in MLflow (from its uploaded files) at its first ``change_stage`` or at ``stop``.

    Raises:
        ConfigError: no such model in the store, or a bad argument. SinkError: MLflow refused.
    """
    model_id = model.id if isinstance(model, Model) else model
    if not isinstance(model_id, str) or not model_id:
        raise TypeError(f"model must be a model id (str) or a Model, got {type(model).__name__}")
    project = model.run.project if isinstance(model, Model) else model_id.rsplit("-", 1)[0]
    root = _root(kwargs)
    if not (run_dir(root, model_id) / "run.db").exists():
        raise ConfigError(f"no model {model_id!r} under {root}; create it with init_model()")
    version_id = with_id or f"{model_id}-{next_version(root, model_id)}"
    run, registry = _open(version_id, project, kwargs, new=with_id is None, model_id=model_id)
    version = ModelVersion(run, registry, model_id)
    version._mark({"sys/kind": "model_version", "sys/model_id": model_id, "sys/stage": "none"})
    return version


def next_version(root: Path, model_id: str) -> int:
    """1 + the number of versions of ``model_id`` in the store at ``root``."""
    pat = re.compile(re.escape(model_id) + r"-[0-9]+$")
    return 1 + sum(1 for r in list_runs(root) if pat.match(r.id))


def _root(kwargs: dict[str, Any]) -> Path:
    s: Settings | None = kwargs.get("settings")
    d = kwargs.get("dir") or (s.dir if s is not None else None) or Settings.resolve(None).dir
    return resolve_root(d or DIR_NAME)


def _open(
    run_id: str, project: str, kwargs: dict[str, Any], *, new: bool, model_id: str
) -> tuple[Run, MlflowRegistry | None]:
    """Open ``run_id`` as a single-rank run; with ``backend="mlflow"`` first make sure the
    registered model ``model_id`` exists (so a bad registry leaves no run behind)."""
    kw = dict(kwargs)
    backend = kw.pop("backend", None)
    options = kw.pop("backend_options", None)
    names: Sequence[str] = [] if backend is None else backend.split(",") if isinstance(backend, str) else backend
    names = [n.strip() for n in names if n.strip()]
    if any(n != "mlflow" for n in names):
        raise ConfigError(f"models and model versions support backend='mlflow' only, got {backend!r}")
    settings = kw.pop("settings", None) or Settings()
    kw["settings"] = dataclasses.replace(settings, rank=0, world_size=1)
    read_only = (kw.get("mode") or settings.mode) == "read-only"
    if new and not read_only and (run_dir(_root(kwargs), run_id) / "run.db").exists():
        raise ConfigError(f"{run_id!r} exists already; open it with mode='read-only'")
    registry = open_registry(options) if names and not read_only else None
    if registry is not None:
        registry.ensure_model(model_id)
    run = init_run(project, run_id, with_id=run_id, **kw)
    return run, registry
