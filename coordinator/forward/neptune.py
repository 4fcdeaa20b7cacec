"""Neptune backend: one Neptune run per coordinator run, through the ``neptune`` client (1.x).

Options: ``project`` (``workspace/project``; default ``$NEPTUNE_PROJECT``, else the run's
project), ``api_token`` (default ``$NEPTUNE_API_TOKEN``), ``mode`` (``async``, ``sync``,
``offline``, ``debug``; default ``$NEPTUNE_MODE`` or ``async``), ``data_dir`` (Neptune's local
data directory, default ``<run dir>/neptune``; offline runs land in ``<data_dir>/offline``,
upload them with ``neptune sync --path <data_dir>``), ``custom_run_id`` (default: the
coordinator run id, hashed when longer than Neptune's 36 characters).

Mapping: the main series of ``train/loss`` is the ``FloatSeries`` ``train/loss``, rank 3's is
``ranks/3/train/loss``; the journal batch time is each value's timestamp. User fields are
assigned at their path; the coordinator's ``sys/*`` fields go under ``coordinator/`` (Neptune
owns ``sys/``). A failed run sets ``sys/failed``. The run's tags are Neptune's own ``sys/tags``
(a change is sent as adds and removes). An artifact field copied into the run is uploaded as a
``File`` at its path (``sys/x`` at ``coordinator/x``; the extension is the file name's); a
reference is the string describing it. A text series is the ``StringSeries``
``ranks/<r>/<key>``; Neptune keeps the first 1000 characters of a longer value: each such entry
is counted as ``cut_texts`` in the forwarder's report (and a warning says so once per series).

Neptune series need strictly increasing steps and finite values: a point at a step not above
the series' last forwarded step (a replaced main-series value after an elastic restart, a rank
logging a step twice), NaN and ±inf are not sent and are counted as ``dropped_points`` in the
forwarder's report (the journal keeps them). Paths that clash with Neptune's structure (a key
that is also the namespace of another key, e.g. ``train`` and ``train/loss``) are also counted
as dropped, with a warning.

Delivery: a batch is accepted when ``run.wait()`` returned (async: sent to the server; offline:
written to Neptune's disk queue). The last steps per series are saved with the cursor; a
forwarder that crashed before saving them re-sends at most one batch, whose steps the Neptune
server then refuses as not increasing.
"""

from __future__ import annotations

import datetime as dt
import glob
import hashlib
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from coordinator.errors import missing_extra

try:
    import neptune
    from neptune.exceptions import MetadataInconsistency
    from neptune.types import File
except ImportError as e:
    raise missing_extra("the Neptune backend", "neptune", e) from e

from coordinator.core.values import FieldValue
from coordinator.errors import ConfigError, SinkError
from coordinator.forward.backend import Artifact, Series, TextSeries, TextsSent
from coordinator.forward.fields import field_text
from coordinator.forward.options import check_options, option_str, scoped_env
from coordinator.journal.store import RunInfo

__all__ = ["NeptuneBackend", "read_offline_series"]

_log = logging.getLogger(__name__)

_OPTIONS = ("project", "api_token", "mode", "data_dir", "custom_run_id")
_MODES = ("async", "sync", "offline", "debug")
_MAX_CUSTOM_ID = 36
_MAX_STRING = 1000
"""Neptune truncates a StringSeries value to this many characters."""


class NeptuneBackend:
    """Writes one coordinator run into one Neptune run (see the module docstring)."""

    name = "neptune"

    def __init__(self, options: Mapping[str, object], run_dir: Path | None = None) -> None:
        """Read the options; nothing is contacted yet.

        Raises:
            ConfigError: an unknown option or a bad value.
        """
        check_options(self.name, options, _OPTIONS)
        self.project = option_str(options, "project") or os.environ.get("NEPTUNE_PROJECT")
        self.api_token = option_str(options, "api_token") or os.environ.get("NEPTUNE_API_TOKEN")
        self.mode = option_str(options, "mode") or os.environ.get("NEPTUNE_MODE") or "async"
        if self.mode not in _MODES:
            raise ConfigError(f"neptune: mode must be one of {', '.join(_MODES)}, got {self.mode!r}")
        d = option_str(options, "data_dir") or (str(run_dir / "neptune") if run_dir is not None else None)
        self.data_dir = Path(d).expanduser() if d else Path.cwd() / ".neptune"
        self.custom_run_id = option_str(options, "custom_run_id")
        self._run: Any = None
        self._last: dict[str, float] = {}
        self._containers: list[str] = []
        self._warned: set[str] = set()
        self._warned_long: set[str] = set()  # apart from _warned: a cut series may still be refused later

    def destination(self) -> str:
        """Mode, project and (offline) data directory: the cursor's key."""
        where = f" dir={self.data_dir.resolve()}" if self._offline() else ""
        return f"{self.mode} project={self.project or ''}{where}"

    def _offline(self) -> bool:
        return self.mode in ("offline", "debug")

    def check(self) -> None:
        """Offline/debug: the data directory is writable. Online: token and project are accepted.

        Raises:
            SinkError: ``neptune: ...`` with the client's message.
        """
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SinkError(f"neptune: cannot create {self.data_dir}: {e}") from e
        if self._offline():
            return
        if not self.project:
            raise SinkError("neptune: no project (set NEPTUNE_PROJECT or the project option, workspace/project)")
        try:
            proj = neptune.init_project(project=self.project, api_token=self.api_token, mode="read-only")
            proj.stop()
        except Exception as e:  # every client failure (token, project, network) becomes the named SinkError
            raise SinkError(f"neptune: project {self.project!r} is not usable: {e}") from e

    def open(self, run: RunInfo, state: Mapping[str, Any] | None) -> None:
        """Start (or, online, resume by custom run id) the Neptune run."""
        st = dict(state or {})
        self._last = {str(k): float(v) for k, v in (st.get("last_steps") or {}).items()}
        self._containers = [str(c) for c in st.get("containers") or ()]
        cid = self.custom_run_id or run.id
        if len(cid) > _MAX_CUSTOM_ID:
            cid = hashlib.sha256(cid.encode()).hexdigest()[:_MAX_CUSTOM_ID]
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Neptune takes its data directory only from the environment, when the run starts.
        with scoped_env({"NEPTUNE_DATA_DIRECTORY": str(self.data_dir)}):
            self._run = neptune.init_run(
                project=self.project or (run.project if "/" in run.project else None),
                api_token=self.api_token,
                mode=cast(Any, self.mode),
                name=run.name,
                custom_run_id=cid,
                capture_stdout=False,
                capture_stderr=False,
                capture_hardware_metrics=False,
                capture_traceback=False,
                source_files=[],
                git_ref=False,
            )
        self._containers.append(str(self._run._id))

    def _r(self) -> Any:
        if self._run is None:
            raise SinkError("neptune: the backend is not open")
        return self._run

    def log_metrics(self, batch: Sequence[Series]) -> int:
        """``extend`` each series with its new, finite, increasing points; returns what was dropped."""
        r = self._r()
        dropped = 0
        for s in batch:
            last = self._last.get(s.name, -math.inf)
            steps: list[float] = []
            values: list[float] = []
            stamps: list[float] = []
            for step, value, ts in s.points:
                if step <= last or not math.isfinite(value):
                    dropped += 1
                    continue
                steps.append(step)
                values.append(value)
                stamps.append(ts)
                last = step
            dropped += self._extend(r, s.name, values, steps, stamps)
        return dropped

    def log_params(self, params: Mapping[str, FieldValue]) -> None:
        """Assign each user field at its path."""
        r = self._r()
        for path, fv in params.items():
            try:
                r[path] = _value(fv)
            except MetadataInconsistency as e:
                self._warn(path, e)

    def set_run_tags(self, tags: Sequence[str], added: Sequence[str], removed: Sequence[str]) -> None:
        """Neptune's ``sys/tags``: ``add`` the new tags, ``remove`` the removed ones (absent ones are ignored)."""
        r = self._r()
        if added:
            r["sys/tags"].add(list(added))
        if removed:
            r["sys/tags"].remove(list(removed))

    def log_file(self, path: str, artifact: Artifact) -> None:
        """Upload a copied artifact as a ``File`` at its path; a reference as its description."""
        r = self._r()
        target = _target(path)
        try:
            if artifact.copied:
                ext = Path(artifact.name).suffix.lstrip(".") or None
                r[target].upload(File.from_path(str(artifact.location), extension=ext))
            else:
                r[target] = f"{artifact.name} ({artifact.size} bytes, sha256 {artifact.sha256}): {artifact.location}"
        except MetadataInconsistency as e:
            self._warn(target, e)

    def log_texts(self, batch: Sequence[TextSeries]) -> TextsSent:
        """``extend`` each ``StringSeries`` with its entries at increasing steps; what was dropped and cut."""
        r = self._r()
        dropped = cut = 0
        for s in batch:
            last = self._last.get(s.name, -math.inf)
            steps: list[float] = []
            texts: list[str] = []
            stamps: list[float] = []
            long = 0
            for step, text, ts in s.points:
                if step <= last:
                    dropped += 1
                    continue
                if len(text) > _MAX_STRING:
                    long += 1
                    if s.name not in self._warned_long:
                        self._warned_long.add(s.name)
                        _log.warning(
                            "neptune: %r has texts over %d characters; Neptune keeps their first %d (counted as "
                            "cut_texts)",
                            s.name,
                            _MAX_STRING,
                            _MAX_STRING,
                        )
                steps.append(step)
                texts.append(text)
                stamps.append(ts)
                last = step
            refused = self._extend(r, s.name, texts, steps, stamps)
            dropped += refused
            cut += 0 if refused else long
        return TextsSent(dropped, cut)

    def _extend(self, r: Any, name: str, items: list[Any], steps: list[float], stamps: list[float]) -> int:
        """Append a series' new entries (steps increasing, after its last); returns how many Neptune refused."""
        if not steps:
            return 0
        try:
            r[name].extend(items, steps=steps, timestamps=stamps)
        except MetadataInconsistency as e:
            self._warn(name, e)
            return len(steps)
        self._last[name] = steps[-1]
        return 0

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """``sys/<x>`` fields as ``coordinator/<x>`` strings."""
        r = self._r()
        for path, text in tags.items():
            target = _target(path)
            try:
                r[target] = text
            except MetadataInconsistency as e:
                self._warn(target, e)

    def _warn(self, path: str, e: Exception) -> None:
        if path not in self._warned:
            self._warned.add(path)
            _log.warning("neptune: %r cannot be written (%s); its data is counted as dropped", path, e)

    def flush(self) -> None:
        """``run.wait()``: sent (async/sync) or on Neptune's disk queue (offline)."""
        self._r().wait()

    def state(self) -> dict[str, Any]:
        """Last step per series and the local container directories used so far."""
        return {"last_steps": dict(self._last), "containers": list(self._containers)}

    def finish(self, state: str) -> None:
        """``coordinator/state``; a failed run ``sys/failed``, an interrupted one the tag
        ``interrupted`` (Neptune has no killed state); then ``stop()``."""
        r = self._r()
        r["coordinator/state"] = state
        if state == "interrupted":
            r["sys/tags"].add("interrupted")
        elif state != "finished":
            r["sys/failed"] = True
        r.stop()
        self._run = None

    def close(self) -> None:
        """``stop()`` a still open run (idempotent)."""
        if self._run is not None:
            run, self._run = self._run, None
            run.stop()

    def read_back(self, name: str) -> list[tuple[int, float]]:
        """(step, value) of a series: offline from Neptune's disk queue, otherwise ``fetch_values``."""
        if self.mode == "offline":
            out: list[tuple[int, float]] = []
            for c in self._containers:
                for d in glob.glob(str(self.data_dir / "offline" / f"run__{c}__*")):
                    out.extend(read_offline_series(d).get(name, []))
            return sorted(out)
        df = self._r()[name].fetch_values(include_timestamp=False)
        return sorted((int(s), float(v)) for s, v in zip(df["step"], df["value"], strict=True))

    def client_version(self) -> str:
        """neptune's version."""
        return str(neptune.__version__)


def _target(path: str) -> str:
    """Where a field goes in Neptune: ``sys/<x>`` under ``coordinator/<x>`` (Neptune owns ``sys/``)."""
    return "coordinator/" + path.removeprefix("sys/") if path.startswith("sys/") else path


def _value(fv: FieldValue) -> Any:
    tag, v = fv
    if tag == "datetime":
        return dt.datetime.fromtimestamp(float(v), dt.UTC)
    if tag == "list":
        return field_text(fv)  # Neptune has no list field type
    return v


def read_offline_series(container_dir: str | os.PathLike[str]) -> dict[str, list[tuple[int, float]]]:
    """Every float series point an offline Neptune run queued, by path, in logging order.

    Reads the operation log Neptune keeps for ``neptune sync`` (``data-*.log``: one JSON
    operation per line); only ``LogFloats`` operations are collected.
    """
    out: dict[str, list[tuple[int, float]]] = {}
    files = sorted(Path(container_dir).glob("data-*.log"), key=lambda p: int(p.stem.split("-")[1]))
    for f in files:
        for line in f.read_text().splitlines():
            if not line.strip():
                continue
            op = json.loads(line)["obj"]
            if op.get("type") == "LogFloats":
                pts = out.setdefault("/".join(op["path"]), [])
                pts.extend((int(v["step"]), float(v["value"])) for v in op["values"])
    return out
