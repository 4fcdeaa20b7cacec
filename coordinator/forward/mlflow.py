"""MLflow backend: one MLflow run per coordinator run, written with ``MlflowClient.log_batch``.

Options: ``tracking_uri`` (default ``$MLFLOW_TRACKING_URI``, else MLflow's own default),
``experiment`` (default: the run's project), ``run_name`` (default: the run's name),
``http_max_retries`` (MLflow's own HTTP retries per request, default 2: the forwarder does the
long-term retrying), ``http_timeout_s`` (default 30), ``check_timeout_s`` (default 10).

Mapping:

* metrics: the main series under its key, a rank's series under ``ranks/<r>/<key>``; names with
  characters MLflow refuses get them replaced by ``_`` (keys longer than 250 characters are
  shortened with a hash); timestamp = the journal batch time in ms, step = the step.
* user fields -> params (strings, at most 6000 characters; longer ones are cut with a warning).
  MLflow forbids changing a param: a field whose value changes later is recorded as the tag
  ``<path>`` instead, with a warning. ``sys/*`` fields -> tags. ``coordinator.run_id`` tags the run.
* tags (``sys/tags``): MLflow has no tag set, so each tag ``t`` is the MLflow tag
  ``coordinator.tag.t`` with the value ``t`` (deleted when the tag is removed; search runs with
  ``tags."coordinator.tag.t" = 't'``), and the sorted list is the tag ``sys/tags`` (JSON).
* artifact fields: a file copied into the run is the artifact ``<path>/<name>`` (sent again it
  replaces itself); its description (name, size, sha256) is the tag ``<path>``.
* text series: one text artifact per forwarded batch per (key, rank),
  ``text/<key>/rank<r>/steps_<a>-<b>.txt`` (format in :mod:`.textfiles`). A resumed forwarder
  sends exactly the batch that was in flight, so the same file is written again, not a second one.
* end of run: ``set_terminated(FINISHED | FAILED)``.

Requests respect MLflow's documented ``log_batch`` limits: at most 1000 metrics, 100 params,
100 tags, 1000 entities in all, and 1 MB per request (``mlflow.utils.validation``).

Idempotence: the forwarder re-sends an unacknowledged batch unchanged, and MLflow's SQL
tracking store drops a metric identical in (key, timestamp, step, value) to one it already has,
so a resend after a crash or a lost response adds nothing. The run itself is found again by
its ``coordinator.run_id`` tag, so even a lost cursor file does not create a second run.
(A file-based tracking store does not drop such duplicates.) Points of one series that are
equal in step and value within one journal batch would also be equal in timestamp; they get
1 ms apart so MLflow keeps both.

Repeated step (a main-series value replaced after an elastic restart): MLflow keeps both
points in the metric's history; its "latest" value is the one with the greatest step, then
timestamp, which is the replacement.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from coordinator.errors import missing_extra

try:
    import mlflow
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient
except ImportError as e:
    raise missing_extra("the MLflow backend", "mlflow", e) from e

from coordinator.core.redact import redact_url
from coordinator.core.states import TRACKER_STATES
from coordinator.core.values import FieldValue
from coordinator.errors import SinkError
from coordinator.forward.backend import Artifact, Series, TextSeries, TextsSent
from coordinator.forward.fields import field_text
from coordinator.forward.mlflow_api import MAX_PARAM_VAL as _MAX_PARAM_VAL
from coordinator.forward.mlflow_api import MAX_PARAMS_TAGS as _MAX_PARAMS_TAGS
from coordinator.forward.mlflow_api import MAX_TAG_VAL as _MAX_TAG_VAL
from coordinator.forward.mlflow_api import error_code as _code
from coordinator.forward.mlflow_api import message as _message
from coordinator.forward.mlflow_api import metric_name
from coordinator.forward.mlflow_api import metric_requests as _metric_requests
from coordinator.forward.mlflow_api import quote as _quote
from coordinator.forward.mlflow_api import wrap as _wrap
from coordinator.forward.options import check_options, option_float, option_int, option_str
from coordinator.forward.textfiles import format_texts, text_file_name
from coordinator.journal.store import RunInfo

__all__ = ["RUN_ID_TAG", "TAG_PREFIX", "MlflowBackend", "metric_name"]

_log = logging.getLogger(__name__)

_OPTIONS = ("tracking_uri", "experiment", "run_name", "http_max_retries", "http_timeout_s", "check_timeout_s")

TAG_PREFIX = "coordinator.tag."
"""The run's tag ``t`` is the MLflow tag ``coordinator.tag.t`` (value ``t``; MLflow has no tag set)."""

RUN_ID_TAG = "coordinator.run_id"
"""Tag holding the coordinator run id (how a resumed forwarder finds its MLflow run)."""


class MlflowBackend:
    """Writes one coordinator run into one MLflow run (see the module docstring)."""

    name = "mlflow"
    names_text_files = True
    """Text files are named by a batch's step range: the forwarder re-sends exactly the same batch."""

    def __init__(self, options: Mapping[str, object], run_dir: Path | None = None) -> None:
        """Read the options; nothing is contacted yet.

        Raises:
            ConfigError: an unknown option or a bad value.
        """
        check_options(self.name, options, _OPTIONS)
        self.tracking_uri = option_str(options, "tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI") or None
        self.experiment = option_str(options, "experiment")
        self.run_name = option_str(options, "run_name")
        self.http_max_retries = option_int(options, "http_max_retries", 2)
        self.http_timeout_s = option_float(options, "http_timeout_s", 30.0) or 30.0
        self.check_timeout_s = option_float(options, "check_timeout_s", 10.0) or 10.0
        self._client: Any = None
        self.run_id: str | None = None
        self._params: dict[str, str] = {}
        self._changed: set[str] = set()
        self._names: dict[str, str] = {}
        self._env_set: list[str] = []

    # ------------------------------------------------------------------ lifecycle

    def _uri(self) -> str:
        return str(self.tracking_uri or mlflow.get_tracking_uri())

    def check(self) -> None:
        """Reach the tracking server (or store) and list one experiment; no retries, short timeout.

        Raises:
            SinkError: ``mlflow: cannot use tracking URI ...: <MLflow's message>``.
        """
        uri = self._uri()
        try:
            if uri.startswith(("http://", "https://")):
                # MLflow's own credentials resolution (MLFLOW_TRACKING_TOKEN, _USERNAME, ...) and
                # request function, called with retries off: a check must answer in seconds.
                tsu: Any = importlib.import_module("mlflow.tracking._tracking_service.utils")
                rest: Any = importlib.import_module("mlflow.utils.rest_utils")
                creds = tsu.get_default_host_creds(uri)
                endpoint = "/api/2.0/mlflow/experiments/search"
                resp = rest.http_request(
                    creds,
                    endpoint,
                    "GET",
                    max_retries=0,
                    backoff_factor=0,
                    timeout=self.check_timeout_s,
                    params={"max_results": 1},
                )
                rest.verify_rest_response(resp, endpoint)
            else:
                MlflowClient(uri).search_experiments(max_results=1)
        except Exception as e:  # every client failure (network, auth, bad URI) becomes the named SinkError
            raise SinkError(f"mlflow: cannot use tracking URI {uri}: {_message(e)}") from e

    def destination(self) -> str:
        """The tracking URI (credentials masked) and the experiment option: the cursor's key."""
        return f"{redact_url(self._uri())} experiment={self.experiment or ''}"

    def holds(self, state: Mapping[str, Any]) -> bool:
        """Whether the MLflow run the cursor names still exists (not deleted) on this server."""
        rid = state.get("run_id")
        if not isinstance(rid, str):
            return False
        self._set_http_env()
        try:
            found = MlflowClient(self._uri()).get_run(rid)
        except MlflowException as e:
            if _code(e) == "RESOURCE_DOES_NOT_EXIST":
                return False
            raise _wrap(e) from e
        return str(found.info.lifecycle_stage) != "deleted"

    def open(self, run: RunInfo, state: Mapping[str, Any] | None) -> None:
        """Find (by saved id or ``coordinator.run_id`` tag) or create the MLflow run."""
        self._set_http_env()
        self._client = MlflowClient(self._uri())
        st = dict(state or {})
        self._params = {str(k): str(v) for k, v in (st.get("params") or {}).items()}
        self._changed = set(st.get("changed") or ())
        rid = st.get("run_id")
        if isinstance(rid, str):
            try:
                self._client.get_run(rid)
                self.run_id = rid
                return
            except MlflowException as e:
                if _code(e) != "RESOURCE_DOES_NOT_EXIST":
                    raise
                _log.warning("mlflow: run %s from the cursor file no longer exists; looking up %s", rid, run.id)
        exp_name = self.experiment or run.project
        exp = self._client.get_experiment_by_name(exp_name)
        exp_id = exp.experiment_id if exp is not None else self._create_experiment(exp_name)
        found = self._client.search_runs(
            [exp_id], filter_string=f"tags.`{RUN_ID_TAG}` = '{_quote(run.id)}'", max_results=1
        )
        if found:
            self.run_id = found[0].info.run_id
            return
        created = self._client.create_run(
            exp_id,
            start_time=int(run.created * 1000),
            tags={RUN_ID_TAG: run.id, "coordinator.world_size": str(run.world_size)},
            run_name=self.run_name or run.name,
        )
        self.run_id = created.info.run_id

    def _create_experiment(self, name: str) -> str:
        try:
            return str(self._client.create_experiment(name))
        except MlflowException as e:  # created concurrently by another forwarder: use it
            exp = self._client.get_experiment_by_name(name)
            if exp is None:
                raise _wrap(e) from e
            return str(exp.experiment_id)

    def _set_http_env(self) -> None:
        # MLflow reads its HTTP retry settings only from the environment. Left at its defaults
        # (7 retries, factor 2, 120 s timeout) one call could block for minutes in an outage and
        # no drain deadline could be kept, so the forwarding process sets them unless the user did.
        for k, v in (
            ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(self.http_max_retries)),
            ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
            ("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(self.http_timeout_s))),
        ):
            if k not in os.environ:
                os.environ[k] = v
                self._env_set.append(k)

    def _run(self) -> str:
        if self.run_id is None:
            raise SinkError("mlflow: the backend is not open")
        return self.run_id

    # ------------------------------------------------------------------ data

    def log_metrics(self, batch: Sequence[Series]) -> int:
        """Send every point in ``log_batch`` requests within MLflow's limits; drops nothing."""
        rid = self._run()
        for metrics in _metric_requests(self._metrics(batch)):
            self._call(self._client.log_batch, rid, metrics=metrics)
        return 0

    def _metrics(self, batch: Sequence[Series]) -> Iterator[Metric]:
        for s in batch:
            name = self._names.get(s.name)
            if name is None:
                name = self._names[s.name] = metric_name(s.name)
                if name != s.name:
                    _log.warning("mlflow: series %r is logged as %r (MLflow's name rules)", s.name, name)
            seen: dict[tuple[int, int, float], int] = {}
            for step, value, ts in s.points:
                ms = int(ts * 1000)
                k = (step, ms, value)
                bump = seen.get(k, 0)
                seen[k] = bump + 1
                yield Metric(name, value, ms + bump, step)

    def log_params(self, params: Mapping[str, FieldValue]) -> None:
        """New fields as params (100 per request); changed ones as tags (see the module docstring)."""
        rid = self._run()
        new: list[Param] = []
        changed: list[RunTag] = []
        for path, fv in params.items():
            key = metric_name(path)
            text = field_text(fv)
            if len(text) > _MAX_PARAM_VAL:
                _log.warning("mlflow: param %r is %d characters long; cut to %d", path, len(text), _MAX_PARAM_VAL)
                text = text[:_MAX_PARAM_VAL]
            old = self._params.get(key)
            if old is None:
                new.append(Param(key, text))
            elif old != text or key in self._changed:
                if key not in self._changed:
                    _log.warning(
                        "mlflow: field %r changed after it was logged as a param; its latest value is "
                        "recorded as the tag %r (MLflow params cannot change)",
                        path,
                        key,
                    )
                changed.append(RunTag(key, text[:_MAX_TAG_VAL]))
        for i in range(0, len(new), _MAX_PARAMS_TAGS):
            part = new[i : i + _MAX_PARAMS_TAGS]
            self._call(self._client.log_batch, rid, params=part)
            self._params.update((p.key, p.value) for p in part)
        self._send_tags(rid, changed)
        self._changed.update(t.key for t in changed)

    def log_file(self, path: str, artifact: Artifact) -> None:
        """A copied artifact as the MLflow artifact ``<path>/<name>``; its description as the tag ``<path>``."""
        a = artifact
        where = "copied into the run" if a.copied else f"reference: {a.location}"
        desc = f"{a.name} ({a.size} bytes, sha256 {a.sha256}, {where})"
        self._send_tags(self._run(), [RunTag(metric_name(path), desc[:_MAX_TAG_VAL])])
        if a.copied:
            with tempfile.TemporaryDirectory() as d:
                named = Path(d) / a.name
                os.symlink(a.location, named)
                self._call(self._client.log_artifact, self._run(), str(named), path)

    def set_run_tags(self, tags: Sequence[str], added: Sequence[str], removed: Sequence[str]) -> None:
        """One tag ``coordinator.tag.<tag>`` per tag (deleted when removed), the sorted list as ``sys/tags``."""
        rid = self._run()
        listed = json.dumps(list(tags))
        if len(listed) > _MAX_TAG_VAL:
            _log.warning("mlflow: the tag list is %d characters long; the tag sys/tags holds its start", len(listed))
        one = [RunTag(metric_name(f"{TAG_PREFIX}{t}"), t) for t in added]
        self._send_tags(rid, [*one, RunTag("sys/tags", listed[:_MAX_TAG_VAL])])
        for t in removed:
            try:
                self._client.delete_tag(rid, metric_name(f"{TAG_PREFIX}{t}"))
            except MlflowException as e:  # already gone (a batch sent again after a crash): done
                if _code(e) not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                    raise _wrap(e) from e

    def log_texts(self, batch: Sequence[TextSeries]) -> TextsSent:
        """One text file per series of the batch (:mod:`.textfiles`); nothing is dropped."""
        rid = self._run()
        for s in batch:
            if s.points:
                name = text_file_name(s.key, s.rank, s.points)
                self._call(self._client.log_text, rid, format_texts(s.points), name)
        return TextsSent()

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """``sys/*`` fields as tags (100 per request)."""
        self._send_tags(self._run(), [RunTag(metric_name(k), v[:_MAX_TAG_VAL]) for k, v in tags.items()])

    def _send_tags(self, rid: str, tags: list[RunTag]) -> None:
        for i in range(0, len(tags), _MAX_PARAMS_TAGS):
            self._call(self._client.log_batch, rid, tags=tags[i : i + _MAX_PARAMS_TAGS])

    def flush(self) -> None:
        """Nothing buffered: every ``log_batch`` returned after the server committed it."""

    def state(self) -> dict[str, Any]:
        """The MLflow run id and the params already logged."""
        return {"run_id": self.run_id, "params": dict(self._params), "changed": sorted(self._changed)}

    def finish(self, state: str) -> None:
        """``set_terminated`` with FINISHED, FAILED (failed) or KILLED (interrupted)."""
        self._call(self._client.set_terminated, self._run(), TRACKER_STATES.get(state, "FAILED"))

    def close(self) -> None:
        """Forget the client and restore the environment it changed."""
        self._client = None
        for k in self._env_set:
            os.environ.pop(k, None)
        self._env_set.clear()

    def read_back(self, name: str) -> list[tuple[int, float]]:
        """The metric's history from the server, in step order."""
        hist = self._client.get_metric_history(self._run(), metric_name(name))
        return sorted((int(m.step), float(m.value)) for m in hist)

    def client_version(self) -> str:
        """mlflow's version."""
        return str(mlflow.__version__)

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MlflowException as e:
            raise _wrap(e) from e
