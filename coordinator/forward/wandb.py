"""Weights & Biases backend: one W&B run per coordinator run, through the ``wandb`` client.

Options: ``project`` (default: the run's project), ``entity``, ``mode`` (``online``/``offline``;
default ``$WANDB_MODE`` or ``online``), ``dir`` (default: the run directory; offline runs land
in ``<dir>/wandb/offline-run-*``, upload them with ``wandb sync``), ``api_key`` (default
``$WANDB_API_KEY``), ``run_id`` (default: the coordinator run id), ``step_key`` (default
``coordinator/step``), ``check_timeout_s`` (default 10).

Mapping: W&B history is a sequence of rows; each row holds the points of one step (all series
that have a point at that step in the batch) plus ``coordinator/step`` = the step, declared as
the x-axis of every series (``define_metric("*", step_metric=...)``), so series logged at
different rates and batches that arrive out of step order plot correctly. The main series is
under its key, a rank's series under ``ranks/<r>/<key>``. User fields go to ``run.config``,
``sys/*`` fields to ``run.summary``. End of run: ``finish(exit_code=0)``, or 1 when the run failed.
The run's tags are W&B's own ``run.tags`` (the whole set, so removals show too). An artifact
field copied into the run is a run file (``run.save``, at ``<path>/<name>``, staged under
``<dir>/coordinator-files``), and its description is in ``run.summary`` at ``<path>``.

Text series: strings in history rows (``ranks/<r>/<key>`` at ``coordinator/step``), one row per
step as for metrics. Not a ``wandb.Table``: a table cannot be appended to, so each forwarded
batch would log a new table file (thousands in a long run), while a string per step keeps each
text at its step, costs one row, and is read back by ``scan_history`` like any series.

Delivery: a batch is accepted once ``run.log`` returned (the W&B client owns it from there and
writes its transaction log, then uploads). A forwarder that crashes after that but before its
cursor moved sends that batch again on resume (``resume="allow"`` on the same run id): at most
one batch is doubled in the offline files, and W&B keeps both rows.

Repeated step (a replaced main-series value): a new row with the same ``coordinator/step``;
W&B plots both points at that x value.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import shutil
import struct
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from coordinator.errors import missing_extra

try:
    import wandb
    from wandb.proto import wandb_internal_pb2
except ImportError as e:
    raise missing_extra("the W&B backend", "wandb", e) from e

from coordinator.core.values import FieldValue
from coordinator.errors import ConfigError, SinkError
from coordinator.forward.backend import Artifact, BackendRejectedError, Series, TextSeries, TextsSent
from coordinator.forward.fields import field_text
from coordinator.forward.options import check_options, option_float, option_str
from coordinator.journal.store import RunInfo

__all__ = ["WandbBackend", "read_offline_history"]

_log = logging.getLogger(__name__)

_OPTIONS = ("project", "entity", "mode", "dir", "api_key", "run_id", "step_key", "check_timeout_s")
_Mode = Literal["online", "offline"]
_MODES: tuple[_Mode, ...] = ("online", "offline")
_EXIT_CODES = {"finished": 0, "failed": 1, "interrupted": 130}
"""The run's end state as the exit code W&B records (failed for anything non-zero)."""


def _mode(value: str) -> _Mode:
    """``value`` as one of :data:`_MODES`.

    Raises:
        ConfigError: any other value.
    """
    for mode in _MODES:
        if value == mode:
            return mode
    raise ConfigError(f"wandb: mode must be one of {', '.join(_MODES)}, got {value!r}")


def _viewer(api: Any) -> object:
    """The API key's user: reading ``Api.viewer`` makes the authenticated request (a bad key raises)."""
    return api.viewer


class WandbBackend:
    """Writes one coordinator run into one W&B run (see the module docstring)."""

    name = "wandb"

    def __init__(self, options: Mapping[str, object], run_dir: Path | None = None) -> None:
        """Read the options; nothing is contacted yet.

        Raises:
            ConfigError: an unknown option or a bad value.
        """
        check_options(self.name, options, _OPTIONS)
        self.project = option_str(options, "project")
        self.entity = option_str(options, "entity")
        self.mode = _mode(option_str(options, "mode") or os.environ.get("WANDB_MODE") or "online")
        d = option_str(options, "dir") or (str(run_dir) if run_dir is not None else None)
        self.dir = Path(d).expanduser() if d else Path.cwd()
        self.api_key = option_str(options, "api_key") or os.environ.get("WANDB_API_KEY")
        self.run_id = option_str(options, "run_id")
        self.step_key = option_str(options, "step_key", "coordinator/step") or "coordinator/step"
        self.check_timeout_s = option_float(options, "check_timeout_s", 10.0) or 10.0
        self._run: Any = None
        self._rid: str | None = None

    def destination(self) -> str:
        """Mode, directory, entity and project: the cursor's key."""
        return f"{self.mode} dir={self.dir.resolve()} entity={self.entity or ''} project={self.project or ''}"

    def check(self) -> None:
        """Offline: the directory is writable. Online: the API key is accepted by the server.

        Raises:
            SinkError: ``wandb: ...`` with the client's message.
        """
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SinkError(f"wandb: cannot create {self.dir}: {e}") from e
        if self.mode == "offline":
            return
        if not self.api_key:
            raise SinkError("wandb: no API key (set WANDB_API_KEY or the api_key option, or use mode=offline)")
        try:
            _viewer(wandb.Api(api_key=self.api_key, timeout=int(self.check_timeout_s)))
        except Exception as e:  # every client failure (bad key, network) becomes the named SinkError
            raise SinkError(f"wandb: the API key was not accepted or the server is unreachable: {e}") from e

    def open(self, run: RunInfo, state: Mapping[str, Any] | None) -> None:
        """Start (or resume, same id) the W&B run and declare the step axis."""
        rid = str((state or {}).get("run_id") or self.run_id or _wandb_id(run.id))
        self._rid = rid
        kw: dict[str, Any] = dict(
            silent=True,
            console="off",
            x_disable_stats=True,
            disable_git=True,
            save_code=False,
            disable_code=True,
            disable_job_creation=True,
            x_disable_machine_info=True,
        )
        if self.api_key and self.mode == "online":
            kw["api_key"] = self.api_key
        settings = wandb.Settings(**kw)
        try:
            self._run = wandb.init(
                project=self.project or run.project,
                entity=self.entity,
                dir=str(self.dir),
                id=rid,
                name=run.name,
                mode=self.mode,
                resume="allow",
                settings=settings,
                reinit="create_new",
            )
        except wandb.errors.UsageError as e:
            raise BackendRejectedError(f"wandb: {e}") from e
        self._run.define_metric(self.step_key)
        self._run.define_metric("*", step_metric=self.step_key)

    def _r(self) -> Any:
        if self._run is None:
            raise SinkError("wandb: the backend is not open")
        return self._run

    def log_metrics(self, batch: Sequence[Series]) -> int:
        """One history row per step (per repeat of a step); nothing is dropped."""
        r = self._r()
        rows: dict[int, list[dict[str, float]]] = {}
        for s in batch:
            for step, value, _ in s.points:
                at = rows.setdefault(step, [])
                for row in at:
                    if s.name not in row:
                        row[s.name] = value
                        break
                else:
                    at.append({s.name: value})
        for step in sorted(rows):
            for row in rows[step]:
                r.log({**row, self.step_key: step})
        return 0

    def log_texts(self, batch: Sequence[TextSeries]) -> TextsSent:
        """Strings in history rows, one row per step (per repeat of a step); nothing is dropped."""
        r = self._r()
        rows: dict[int, list[dict[str, str]]] = {}
        for s in batch:
            for step, text, _ in s.points:
                at = rows.setdefault(step, [])
                for row in at:
                    if s.name not in row:
                        row[s.name] = text
                        break
                else:
                    at.append({s.name: text})
        for step in sorted(rows):
            for row in rows[step]:
                r.log({**row, self.step_key: step})
        return TextsSent()

    def set_run_tags(self, tags: Sequence[str], added: Sequence[str], removed: Sequence[str]) -> None:
        """``run.tags``: the whole set."""
        self._r().tags = tuple(tags)

    def log_file(self, path: str, artifact: Artifact) -> None:
        """A copied artifact as the run file ``<path>/<name>``; its description in ``run.summary``."""
        r = self._r()
        a = artifact
        where = "copied into the run" if a.copied else f"reference: {a.location}"
        r.summary.update({path: f"{a.name} ({a.size} bytes, sha256 {a.sha256}, {where})"})
        if not a.copied:
            return
        root = self.dir / "coordinator-files"
        staged = root / path / a.name
        staged.parent.mkdir(parents=True, exist_ok=True)
        # A copy that stays: W&B links the run file to it and uploads it later (wandb sync).
        shutil.copyfile(a.location, staged)
        r.save(str(staged), base_path=str(root), policy="now")

    def log_params(self, params: Mapping[str, FieldValue]) -> None:
        """User fields into ``run.config`` (changes allowed)."""
        self._r().config.update({k: _plain(v) for k, v in params.items()}, allow_val_change=True)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """``sys/*`` fields into ``run.summary``."""
        self._r().summary.update(dict(tags))

    def flush(self) -> None:
        """Nothing to wait for: ``run.log`` handed the rows to the W&B client."""

    def state(self) -> dict[str, Any]:
        """The W&B run id (to resume the same run)."""
        return {} if self._rid is None else {"run_id": self._rid}

    def finish(self, state: str) -> None:
        """``run.finish``: exit code 0 (finished), 1 (failed), 130 (interrupted, as for Ctrl-C).

        W&B shows a non-zero exit as failed, the nearest it has to MLflow's KILLED; the summary's
        ``sys/state`` names the exact state.
        """
        r = self._r()
        r.summary.update({"sys/state": state})
        r.finish(exit_code=_EXIT_CODES.get(state, 1))
        self._run = None

    def close(self) -> None:
        """Finish a still open W&B run as failed (exit code 1; resuming reopens it), stop the W&B service.

        ``wandb.teardown()`` ends this process's ``wandb-core`` helper, which would otherwise
        outlive the forwarder: the forwarding process (the aggregator, the CLI) owns it.
        """
        if self._run is not None:
            run, self._run = self._run, None
            run.finish(exit_code=1)
        wandb.teardown()

    def read_back(self, name: str) -> list[tuple[int, float]]:
        """(step, value) of a series: offline from the run's ``.wandb`` files, online via ``wandb.Api``."""
        rid = self._rid or self.run_id or ""
        if self.mode == "offline":
            out: list[tuple[int, float]] = []
            for f in sorted(glob.glob(str(self.dir / "wandb" / "offline-run-*" / "run-*.wandb"))):
                if rid and not f.endswith(f"run-{rid}.wandb"):
                    continue
                for row in read_offline_history(f):
                    if name in row and self.step_key in row:
                        out.append((int(row[self.step_key]), float(row[name])))
            return sorted(out)
        api = wandb.Api(api_key=self.api_key)
        run = api.run(f"{self.entity or api.default_entity}/{self.project}/{rid}")
        return sorted((int(h[self.step_key]), float(h[name])) for h in run.scan_history(keys=[self.step_key, name]))

    def client_version(self) -> str:
        """wandb's version."""
        return str(wandb.__version__)


def _wandb_id(run_id: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_-]", "-", run_id)
    return safe[:64]


def _plain(fv: FieldValue) -> Any:
    tag, v = fv
    return field_text(fv) if tag == "datetime" else v


# ---------------------------------------------------------------------------- offline file reader

_pb: Any = wandb_internal_pb2  # generated protobuf module: no static attributes
_BLOCK = 32 * 1024
_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _records(path: str) -> Iterator[bytes]:
    """The records of a W&B transaction log (``run-<id>.wandb``).

    The wandb package has no public reader for it. The format is LevelDB's log format (32 KiB
    blocks of records with a 7-byte header: CRC, little-endian length, type full/first/middle/
    last) after a 7-byte file header starting with ``:W&B``. CRCs are not verified here.
    """
    data = Path(path).read_bytes()
    if not data.startswith(b":W&B"):
        raise SinkError(f"{path} is not a W&B transaction log")
    pos = _HEADER
    buf = b""
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        chunk = data[pos + _HEADER : pos + _HEADER + length]
        pos += _HEADER + length
        if kind == 0 and length == 0:
            continue  # zero padding at the end of a block
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            buf = chunk
        elif kind == _MIDDLE:
            buf += chunk
        elif kind == _LAST:
            yield buf + chunk
            buf = b""


def read_offline_history(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every history row of an offline W&B run file, as ``{key: value}`` dicts, in logging order.

    Values are decoded from the JSON W&B stores per item (``_step``, ``_timestamp``, ... included).
    """
    rows: list[dict[str, Any]] = []
    for raw in _records(str(path)):
        rec = _pb.Record()
        rec.ParseFromString(raw)
        if rec.WhichOneof("record_type") != "history":
            continue
        row: dict[str, Any] = {}
        for item in rec.history.item:
            key = item.key or "/".join(item.nested_key)
            row[key] = json.loads(item.value_json)
        rows.append(row)
    return rows
