"""TensorBoard backend: one event file per run, written with the ``tensorboard`` package's record writer.

Options: ``logdir`` (default ``<run dir>/tensorboard``; point ``tensorboard --logdir`` at it, or
at a parent holding several runs).

Mapping: every point is one ``Event`` with a ``simple_value`` scalar (float32, as TensorBoard
stores scalars), ``step`` = the step, ``wall_time`` = the journal batch time; the main series
under its key, a rank's series under ``ranks/<r>/<key>``. Fields are text summaries under
``fields/<path>`` (the step is the number of field updates so far). TensorBoard has no tags and
no files: the run's tags are the text summary ``fields/sys/tags`` (a Markdown list, rewritten at
each change), an artifact field the text summary ``fields/<path>`` with its name, size, full
sha256 and where the file is. A text series is the text summary ``ranks/<r>/<key>`` (the Text
dashboard), one event per entry at its step and time.

Exactly once: the file is ours alone (``events.out.tfevents.<created>.<host>.coordinator.<run id>``),
written through :class:`tensorboard.summary.writer.record_writer.RecordWriter`, fsynced at
every :meth:`TensorBoardBackend.flush`, and its size is saved with the forwarder's cursor. On
resume the file is cut back to that size, so what was written after the last committed cursor
(and will be sent again) is not in it twice.

Repeated step (a main-series value replaced after an elastic restart, sent in a later batch
than the original): both events stay in the file, the replacement after the original.
TensorBoard's readers keep both (``EventAccumulator`` purges only on ``SessionLog.START``, which
would drop every tag's later steps, so the adapter never writes one); the chart draws the
replacement last.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from coordinator.errors import missing_extra

try:
    import tensorboard
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.plugins.text.summary_v2 import text_pb
    from tensorboard.summary.writer.record_writer import RecordWriter
except ImportError as e:
    raise missing_extra("the TensorBoard backend", "tensorboard", e) from e

from coordinator.core.values import FieldValue
from coordinator.errors import ConfigError, SinkError
from coordinator.forward.backend import Artifact, Series, TextSeries, TextsSent
from coordinator.forward.fields import field_text
from coordinator.forward.options import check_options, option_str
from coordinator.journal.store import RunInfo

__all__ = ["TensorBoardBackend"]

_OPTIONS = ("logdir",)


class TensorBoardBackend:
    """Writes one coordinator run as one TensorBoard event file (see the module docstring)."""

    name = "tensorboard"

    def __init__(self, options: Mapping[str, object], run_dir: Path | None = None) -> None:
        """Read the options.

        Raises:
            ConfigError: an unknown option, or no ``logdir`` and no run directory.
        """
        check_options(self.name, options, _OPTIONS)
        logdir = option_str(options, "logdir")
        if logdir is None:
            if run_dir is None:
                raise ConfigError("tensorboard: set the logdir option")
            logdir = str(run_dir / "tensorboard")
        self.logdir = Path(logdir).expanduser()
        self.file: Path | None = None
        self._fh: Any = None
        self._writer: Any = None
        self._field_updates = 0

    def check(self) -> None:
        """The log directory can be created and written.

        Raises:
            SinkError: ``tensorboard: cannot write to <logdir>: ...``.
        """
        try:
            self.logdir.mkdir(parents=True, exist_ok=True)
            probe = self.logdir / f".coordinator-probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise SinkError(f"tensorboard: cannot write to {self.logdir}: {e}") from e

    def destination(self) -> str:
        """The log directory (absolute): the cursor's key."""
        return str(self.logdir.resolve())

    def holds(self, state: Mapping[str, Any]) -> bool:
        """Whether the event file the cursor names exists with at least the saved size."""
        saved = state.get("file")
        if not isinstance(saved, str):
            return False
        try:
            return (self.logdir / saved).stat().st_size >= int(state.get("offset", 0))
        except OSError:
            return False

    def open(self, run: RunInfo, state: Mapping[str, Any] | None) -> None:
        """Create the event file, or reopen it cut back to the size saved with the cursor."""
        self.logdir.mkdir(parents=True, exist_ok=True)
        st = dict(state or {})
        self._field_updates = int(st.get("field_updates", 0))
        saved = st.get("file")
        if isinstance(saved, str) and (self.logdir / saved).exists():
            self.file = self.logdir / saved
            fh = open(self.file, "r+b")  # owned until close()
            fh.truncate(int(st.get("offset", 0)))
            fh.seek(0, os.SEEK_END)
            self._fh = fh
            self._writer = RecordWriter(fh)
            if fh.tell() == 0:
                self._header(run)
            return
        host = socket.gethostname().replace(".", "_")
        self.file = self.logdir / f"events.out.tfevents.{int(run.created):010d}.{host}.coordinator.{run.id}"
        self._fh = open(self.file, "wb")  # owned until close()
        self._writer = RecordWriter(self._fh)
        self._header(run)

    def _header(self, run: RunInfo) -> None:
        ev = event_pb2.Event(wall_time=run.created, file_version="brain.Event:2")
        self._writer.write(ev.SerializeToString())

    def log_metrics(self, batch: Sequence[Series]) -> int:
        """One scalar event per point; nothing is dropped."""
        w = self._writer
        if w is None:
            raise SinkError("tensorboard: the backend is not open")
        for s in batch:
            for step, value, ts in s.points:
                summ = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=s.name, simple_value=value)])
                w.write(event_pb2.Event(wall_time=ts, step=step, summary=summ).SerializeToString())
        return 0

    def log_params(self, params: Mapping[str, FieldValue]) -> None:
        """Fields as text summaries ``fields/<path>``."""
        self._text({f"fields/{k}": field_text(v) for k, v in params.items()})

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """``sys/*`` fields as text summaries ``fields/sys/...``."""
        self._text({f"fields/{k}": v for k, v in tags.items()})

    def set_run_tags(self, tags: Sequence[str], added: Sequence[str], removed: Sequence[str]) -> None:
        """The tags as the text summary ``fields/sys/tags``: a Markdown list (``(none)`` when empty)."""
        self._text({"fields/sys/tags": "\n".join(f"* {t}" for t in tags) or "(none)"})

    def log_file(self, path: str, artifact: Artifact) -> None:
        """The artifact described as the text summary ``fields/<path>`` (TensorBoard stores no files)."""
        a = artifact
        where = f"copied into the run: {a.location}" if a.copied else f"reference: {a.location}"
        self._text({f"fields/{path}": f"{a.name} · {a.size} bytes · sha256 {a.sha256} · {where}"})

    def log_texts(self, batch: Sequence[TextSeries]) -> TextsSent:
        """One text-summary event per entry, at its step and time; nothing is dropped."""
        w = self._writer
        if w is None:
            raise SinkError("tensorboard: the backend is not open")
        for s in batch:
            for step, text, ts in s.points:
                w.write(event_pb2.Event(wall_time=ts, step=step, summary=text_pb(s.name, text)).SerializeToString())
        return TextsSent()

    def _text(self, items: Mapping[str, str]) -> None:
        if not items:
            return
        if self._writer is None:
            raise SinkError("tensorboard: the backend is not open")
        now = dt.datetime.now(dt.UTC).timestamp()
        for tag, text in items.items():
            ev = event_pb2.Event(wall_time=now, step=self._field_updates, summary=text_pb(tag, text))
            self._writer.write(ev.SerializeToString())
        self._field_updates += 1

    def flush(self) -> None:
        """Write through to the disk (fsync): the cursor may then move past this batch."""
        if self._fh is None:
            raise SinkError("tensorboard: the backend is not open")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def state(self) -> dict[str, Any]:
        """The event file's name and its size at the last flush."""
        if self.file is None or self._fh is None:
            return {}
        return {"file": self.file.name, "offset": self._fh.tell(), "field_updates": self._field_updates}

    def finish(self, state: str) -> None:
        """Record the end state as the text summary ``fields/sys/state`` and flush."""
        self._text({"fields/sys/state": state})
        self.flush()

    def close(self) -> None:
        """Close the event file (idempotent)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
            self._writer = None

    def read_texts(self, name: str) -> list[tuple[int, str]]:
        """(step, text) of a text summary as TensorBoard's ``EventAccumulator`` reads the log directory."""
        acc = EventAccumulator(str(self.logdir), size_guidance={"tensors": 0})
        acc.Reload()
        if name not in acc.Tags().get("tensors", []):
            return []
        return [(e.step, e.tensor_proto.string_val[0].decode()) for e in acc.Tensors(name)]

    def read_back(self, name: str) -> list[tuple[int, float]]:
        """The scalar series as TensorBoard's own ``EventAccumulator`` reads the log directory."""
        acc = EventAccumulator(str(self.logdir), size_guidance={"scalars": 0, "tensors": 0})
        acc.Reload()
        if name not in acc.Tags().get("scalars", []):
            return []
        return [(e.step, e.value) for e in acc.Scalars(name)]

    def client_version(self) -> str:
        """tensorboard's version."""
        return str(tensorboard.__version__)
