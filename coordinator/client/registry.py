"""The MLflow model registry behind models and model versions (``backend="mlflow"``).

Runs on the calling process through ``MlflowClient(tracking_uri)`` (imported lazily: the
``mlflow`` extra). A model is a registered model named after its id; a version is an MLflow model
version whose source is an MLflow run holding the version's uploaded files under ``model/``
(an empty source when none were uploaded). A stage is an alias (MLflow deprecated its stages).
Every MLflow failure is raised as :class:`~coordinator.errors.SinkError` with MLflow's message,
secrets masked.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from coordinator.core.redact import redact_text, secret_values
from coordinator.errors import SinkError, missing_extra

__all__ = ["MlflowRegistry", "open_registry"]

_T = TypeVar("_T")


def open_registry(options: Mapping[str, Any] | None) -> MlflowRegistry:
    """The registry of the tracking URI in ``options`` (flat, or keyed ``"mlflow"``).

    Raises:
        MissingExtraError: mlflow is not installed.
    """
    opts: Mapping[str, Any] = options or {}
    if isinstance(opts.get("mlflow"), Mapping):
        opts = opts["mlflow"]
    uri = opts.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI") or None
    if uri is not None and not isinstance(uri, str):
        raise TypeError(f"backend_options tracking_uri must be a str, got {type(uri).__name__}")
    return MlflowRegistry(uri, secret_values(opts))


class MlflowRegistry:
    """Registered models and model versions of one MLflow tracking server."""

    def __init__(self, tracking_uri: str | None, secrets: list[str]) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as e:
            raise missing_extra("backend='mlflow' for models", "mlflow", e) from e
        self._secrets = secrets
        self.client: Any = MlflowClient(tracking_uri)
        self.versions: dict[str, str] = {}
        """Our version id -> its MLflow version number, once registered."""

    def _call(self, what: str, fn: Callable[[], _T]) -> _T:
        try:
            return fn()
        except Exception as e:  # every client failure becomes the named SinkError
            msg = " ".join(str(getattr(e, "message", None) or e).split())[:500]
            raise SinkError(f"mlflow registry: {what}: {redact_text(msg, self._secrets)}") from e

    def ensure_model(self, name: str) -> None:
        """Create the registered model ``name`` unless it exists."""
        found = self._call(
            f"search registered model {name!r}",
            lambda: self.client.search_registered_models(filter_string=f"name = '{_quote(name)}'"),
        )
        if any(m.name == name for m in found):
            return
        self._call(f"create registered model {name!r}", lambda: self.client.create_registered_model(name))

    def ensure_version(self, model: str, version_id: str, files: list[tuple[str, str, Path]]) -> str:
        """Register ``version_id`` (once) as a version of ``model`` from ``files``; its MLflow number.

        ``files`` are (field path, file name, stored file): each goes to ``model/<field path>/<name>``.
        """
        if version_id in self.versions:
            return self.versions[version_id]
        self.ensure_model(model)
        exp = self._experiment(model)
        run = self._call("create run", lambda: self.client.create_run(exp, run_name=version_id))
        rid = run.info.run_id
        if files:
            with tempfile.TemporaryDirectory(prefix="coordinator-model-") as tmp:
                for field, name, src in files:
                    dest = Path(tmp, *field.split("/"), name)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src, dest)
                self._call("log artifacts", lambda: self.client.log_artifacts(rid, tmp, "model"))
        self._call("end run", lambda: self.client.set_terminated(rid, "FINISHED"))
        mv = self._call(
            f"create model version of {model!r}",
            lambda: self.client.create_model_version(
                model, f"runs:/{rid}/model", run_id=rid, tags={"coordinator_id": version_id}
            ),
        )
        self.versions[version_id] = str(mv.version)
        return self.versions[version_id]

    def set_stage(self, model: str, version_id: str, files: list[tuple[str, str, Path]], stage: str) -> None:
        """Point the alias ``stage`` at this version; ``none`` drops this version's aliases."""
        number = self.ensure_version(model, version_id, files)
        if stage != "none":
            self._call(f"set alias {stage!r}", lambda: self.client.set_registered_model_alias(model, stage, number))
            return
        mv = self._call("get model version", lambda: self.client.get_model_version(model, number))
        for alias in list(getattr(mv, "aliases", []) or []):
            self._delete_alias(model, str(alias))

    def _delete_alias(self, model: str, alias: str) -> None:
        self._call(f"delete alias {alias!r}", lambda: self.client.delete_registered_model_alias(model, alias))

    def _experiment(self, model: str) -> str:
        """The experiment holding the versions' runs: ``coordinator-models/<model>``."""
        name = f"coordinator-models/{model}"
        exp = self._call("get experiment", lambda: self.client.get_experiment_by_name(name))
        if exp is not None:
            return str(exp.experiment_id)
        return str(self._call("create experiment", lambda: self.client.create_experiment(name)))


def _quote(s: str) -> str:
    return s.replace("\\", "\\\\").replace("'", "\\'")
