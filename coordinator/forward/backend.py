"""The external-backend interface (MLflow, TensorBoard, W&B, Neptune) and its lazy registry.

A backend is fed by a :class:`~coordinator.forward.forwarder.Forwarder` from the run's journal (the
embedded store); it never sees the ranks. The forwarder owns retrying, batching by size and
the durable cursor; a backend only turns one batch into calls of its tracker's client library
and says, through :meth:`Backend.flush`, when the tracker has accepted it.

Series naming (the same in every backend): the reduced main series of ``train/loss`` is
``train/loss``; rank 3's own series is ``ranks/3/train/loss`` (the ``rank_key`` option, a
``str.format`` template with ``{key}`` and ``{rank}``). The rank is a prefix rather than a
suffix (``train/loss/rank_3``) because a suffix turns the main series' name into a namespace:
Neptune refuses that (``'train/loss' is already defined as an attribute, not a namespace``)
and MLflow's file store would need ``train/loss`` to be both a file and a directory. The
common prefix also keeps thousands of per-rank charts in one section of the W&B/TensorBoard UI.

Beyond :class:`Backend`, an adapter may implement the optional capabilities the forwarder looks
for: :class:`TagBackend` (the run's tag set ``sys/tags`` as the tracker's own tags),
:class:`FileBackend` (artifact fields as files) and :class:`TextBackend` (text series). Without
them, tags and artifacts reach the tracker as text through :meth:`Backend.set_tags`/
:meth:`Backend.log_params`, and text series are counted as ``texts_skipped``.

Adapters read their options with :mod:`~coordinator.forward.options`, turn fields into text with
:func:`~coordinator.forward.fields.field_text`, and may expose a server's ``Retry-After`` the way
:func:`coordinator.core.retry.retry_after_of` reads it.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

from coordinator.core.values import FieldValue
from coordinator.errors import ConfigError, MissingExtraError, SinkError, missing_extra
from coordinator.forward.settings import ForwarderSettings
from coordinator.journal.store import RunInfo
from coordinator.settings import env_name

__all__ = [
    "BACKENDS",
    "Artifact",
    "Backend",
    "BackendRejectedError",
    "FileBackend",
    "Point",
    "Series",
    "TagBackend",
    "TextBackend",
    "TextPoint",
    "TextSeries",
    "TextsSent",
    "check_backends",
    "get_backend",
    "resolve_backends",
]

BACKEND_ENV = env_name("backend")
BACKEND_OPTIONS_ENV = env_name("backend_options")


Point = tuple[int, float, float]
"""(step, value, time in seconds since the epoch) of one metric point."""


@dataclass(frozen=True, slots=True)
class Series:
    """Points of one backend series in one forwarded batch, in journal order."""

    name: str
    """The name in the backend (see the module docstring for the naming rule)."""
    key: str
    """The coordinator's metric key."""
    rank: int | None
    """``None`` for the reduced main series, else the rank whose own points these are."""
    points: Sequence[Point]


TextPoint = tuple[int, str, float]
"""(step, text, time in seconds since the epoch) of one text-series entry."""


@dataclass(frozen=True, slots=True)
class TextSeries:
    """Entries of one rank's text series in one forwarded batch, in journal order."""

    name: str
    """The name in the backend: ``ranks/<r>/<key>`` (``rank_key``); text series are per rank."""
    key: str
    rank: int
    points: Sequence[TextPoint]


class TextsSent(NamedTuple):
    """What :meth:`TextBackend.log_texts` did with a batch's entries beyond storing them."""

    dropped: int = 0
    """Entries the tracker cannot store (counted as ``dropped_texts``, not retried)."""
    cut: int = 0
    """Entries stored shortened to the tracker's limit (counted as ``cut_texts``; Neptune keeps 1000 characters)."""


class Artifact(NamedTuple):
    """An ``artifact`` field: a file uploaded into the run (``core/values.py`` describes the payload)."""

    name: str
    """The file's own name (``diff.patch``, ``model.pt``)."""
    size: int
    sha256: str
    copied: bool
    """True: ``location`` is the run's own copy; False: a reference to a file too large to copy."""
    location: Path
    """The copy in the run's directory (found there even after the directory moved), or the original."""


class BackendRejectedError(SinkError):
    """The backend refused the data or the configuration; retrying the same request cannot help."""


@runtime_checkable
class Backend(Protocol):
    """One external tracker, written by one forwarder thread (not thread-safe).

    Lifecycle: ``check()`` (may run alone, e.g. at ``init_run`` on rank 0), then ``open()``,
    any number of ``log_*``/``set_tags`` calls each followed by ``flush()``, then ``finish()``
    (once, when the run has ended) and ``close()``.
    """

    name: str
    """Registry name (``mlflow``, ``tensorboard``, ``wandb``, ``neptune``)."""

    def __init__(self, options: Mapping[str, object], run_dir: Path | None = None) -> None:
        """Read the options (an unknown one or a bad value raises ``ConfigError``); nothing is contacted yet."""

    def check(self) -> None:
        """Validate URI, credentials and project without writing anything; blocks (network).

        Raises:
            SinkError: with the backend's own message, prefixed by the backend name.
        """

    def open(self, run: RunInfo, state: Mapping[str, Any] | None) -> None:
        """Create, or with ``state`` (what :meth:`state` returned last time) resume, the run.

        Raises:
            SinkError: the run cannot be created or resumed.
        """

    def log_metrics(self, batch: Sequence[Series]) -> int:
        """Send every point of ``batch``; return how many points the backend cannot store.

        The returned count is for points the tracker has no place for (for example Neptune's
        non-increasing steps); they are reported, not retried. Anything else raises.
        """

    def log_params(self, params: Mapping[str, FieldValue]) -> None:
        """Record the run's user fields (new or changed ones) as parameters/config."""

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Record the coordinator's ``sys/*`` fields (mutable) as tags/summary values."""

    def flush(self) -> None:
        """Return once the tracker has accepted everything sent so far (the cursor moves after)."""

    def state(self) -> dict[str, Any]:
        """JSON-safe state to store with the cursor, handed back to :meth:`open` on resume."""

    def finish(self, state: str) -> None:
        """Mark the run ended (``finished`` or ``failed``); idempotent."""

    def close(self) -> None:
        """Release the client (idempotent); does not mark the run ended."""

    def read_back(self, name: str) -> list[tuple[int, float]]:
        """(step, value) pairs of series ``name`` as the tracker stored them (``doctor`` and tests)."""

    def client_version(self) -> str:
        """The version of the tracker's client library."""


@runtime_checkable
class TagBackend(Protocol):
    """A tracker with its own tag set (W&B, Neptune; MLflow and TensorBoard by a convention)."""

    def set_run_tags(self, tags: Sequence[str], added: Sequence[str], removed: Sequence[str]) -> None:
        """Make the tracker's tags ``tags`` (sorted); ``added``/``removed``: the change since last sent.

        Called again with the same arguments after a crash before the cursor moved: idempotent.
        """


@runtime_checkable
class FileBackend(Protocol):
    """A tracker that stores files (MLflow, W&B, Neptune) or describes them (TensorBoard)."""

    def log_file(self, path: str, artifact: Artifact) -> None:
        """Record the artifact field ``path``: upload ``artifact.location`` when ``copied``.

        A reference (not copied) is recorded as text. Sending the same file again replaces it.
        """


@runtime_checkable
class TextBackend(Protocol):
    """A tracker that takes text series."""

    def log_texts(self, batch: Sequence[TextSeries]) -> TextsSent:
        """Send every entry of ``batch``; return how many the tracker cannot store or stores shortened."""


BACKENDS: dict[str, tuple[str, str, str]] = {
    "mlflow": ("coordinator.forward.mlflow", "MlflowBackend", "mlflow"),
    "tensorboard": ("coordinator.forward.tensorboard", "TensorBoardBackend", "tensorboard"),
    "wandb": ("coordinator.forward.wandb", "WandbBackend", "wandb"),
    "neptune": ("coordinator.forward.neptune", "NeptuneBackend", "neptune"),
}
"""Backend name -> (module, class, pip extra)."""


def get_backend(name: str) -> type[Backend]:
    """The backend class registered as ``name``; its client library is imported only now.

    Raises:
        ConfigError: no backend of that name.
        ImportError: its client library is missing; the message names the extra to install.
    """
    try:
        module, cls, extra = BACKENDS[name]
    except KeyError:
        raise ConfigError(f"unknown backend {name!r}; choose one of {', '.join(sorted(BACKENDS))}") from None
    try:
        mod = importlib.import_module(module)
    except MissingExtraError:
        raise  # the adapter already named its extra
    except ImportError as e:
        raise missing_extra(f"backend {name!r}", extra, e) from e
    backend: type[Backend] = getattr(mod, cls)
    return backend


def resolve_backends(
    backend: str | Sequence[str] | None,
    backend_options: Mapping[str, object] | None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, dict[str, object]]:
    """Normalise ``init_run(backend=..., backend_options=...)`` (or the environment) to name -> options.

    ``backend`` is one name, several (a sequence, or a comma-separated string), or ``None`` for
    ``$COORDINATOR_BACKEND``. ``backend_options`` (or ``$COORDINATOR_BACKEND_OPTIONS``, JSON) is
    either one flat dict (every backend gets it; only with one backend) or a dict keyed by
    backend name. The result is JSON-safe, so it can travel in the aggregator's ``--config``.

    Raises:
        ConfigError: an unknown backend, bad JSON, or flat options given for several backends.
    """
    env = os.environ if environ is None else environ
    if backend is None:
        backend = env.get(BACKEND_ENV) or None
    if backend is None:
        return {}
    names = [n.strip() for n in (backend.split(",") if isinstance(backend, str) else backend) if n.strip()]
    for n in names:
        if n not in BACKENDS:
            raise ConfigError(f"unknown backend {n!r}; choose one of {', '.join(sorted(BACKENDS))}")
    if len(set(names)) != len(names):
        raise ConfigError(f"backend names repeat: {names}")
    opts: Mapping[str, object]
    if backend_options is None:
        raw = env.get(BACKEND_OPTIONS_ENV)
        try:
            opts = json.loads(raw) if raw else {}
        except ValueError as e:
            raise ConfigError(f"{BACKEND_OPTIONS_ENV} is not valid JSON: {e}") from None
        if not isinstance(opts, dict):
            raise ConfigError(f"{BACKEND_OPTIONS_ENV} must be a JSON object")
    else:
        opts = backend_options
    keyed = bool(opts) and all(k in BACKENDS and isinstance(v, Mapping) for k, v in opts.items())
    if keyed:
        extra = sorted(set(opts) - set(names))
        if extra:
            raise ConfigError(f"backend_options for {', '.join(extra)}, which is not among the backends {names}")
        out: dict[str, dict[str, object]] = {}
        for n in names:
            sub = opts.get(n)
            out[n] = dict(sub) if isinstance(sub, Mapping) else {}
        return out
    if opts and len(names) > 1:
        raise ConfigError("with several backends, key backend_options by backend name: {'mlflow': {...}, ...}")
    return {n: dict(opts) for n in names}


def check_backends(backends: Mapping[str, Mapping[str, object]], run_dir: Path) -> None:
    """Build each configured backend and run its ``check()``: rank 0 calls it at ``init_run``.

    Validates the forwarder options too, so a typo fails at start, not at the end of a run.
    Blocks (network, up to the backends' check timeouts).

    Raises:
        ConfigError: an unknown backend or option. ImportError: a client library is missing
        (the message names the extra). SinkError: the backend refused the configuration,
        with its own message, prefixed by the backend's name.
    """
    for name, options in backends.items():
        _, backend_options = ForwarderSettings.split(options)
        backend = get_backend(name)(backend_options, run_dir)
        backend.check()
