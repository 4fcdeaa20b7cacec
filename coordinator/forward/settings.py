"""How one forwarder batches, retries, names and thins: :class:`ForwarderSettings` and its option keys.

Every key is also an option (``--option k=v``, ``init_run(backend_options=...)``): the forwarder
takes its own keys out of a backend's options and hands the rest to the backend. The defaults are
:data:`coordinator.settings.DEFAULTS`' ``forward_*`` fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from coordinator.errors import ConfigError
from coordinator.forward.options import option_bool, option_float, option_int, option_str
from coordinator.settings import DEFAULTS

__all__ = ["ForwarderSettings"]

_NON_NEGATIVE = ("poll_interval_s", "fields_interval_s", "base_backoff_s", "max_backoff_s", "max_retry_after_s")


@dataclass(kw_only=True, slots=True)
class ForwarderSettings:
    """How one forwarder batches, retries, names and thins; every field is also an option key."""

    batch_points: int = DEFAULTS.forward_batch_points
    """Points read from the journal per batch (the backend splits it into its own request sizes)."""
    poll_interval_s: float = DEFAULTS.forward_poll_interval_s
    """How often a caught-up forwarder looks for new chunks."""
    fields_interval_s: float = DEFAULTS.forward_fields_interval_s
    """While the run is live, changed fields are sent at most this often (always at the end)."""
    base_backoff_s: float = DEFAULTS.forward_base_backoff_s
    """First retry delay; doubles per failed attempt."""
    max_backoff_s: float = DEFAULTS.forward_max_backoff_s
    """Longest retry delay without a ``Retry-After``."""
    max_retry_after_s: float = DEFAULTS.forward_max_retry_after_s
    """Longest wait a server's ``Retry-After`` can impose."""
    max_rejected_attempts: int = DEFAULTS.forward_max_rejected_attempts
    """Attempts of a batch the backend refuses as invalid before the forwarder stops."""
    per_rank: bool = DEFAULTS.forward_per_rank
    """Also send each rank's own series (named by ``rank_key``)."""
    rank_key: str = DEFAULTS.forward_rank_key
    """Name of a rank's series in the backend: ``str.format`` template with ``{key}`` and ``{rank}``."""
    max_points_per_key_per_s: float | None = DEFAULTS.forward_max_points_per_key_per_s
    """Downsampling: most points per series per second of journal time sent to this backend."""
    sys_ranks: bool = DEFAULTS.forward_sys_ranks
    """Also send the per-rank health fields ``sys/ranks/*`` (many ranks: many tags)."""

    def __post_init__(self) -> None:
        if self.batch_points < 1:
            raise ConfigError(f"batch_points must be >= 1, got {self.batch_points}")
        for nm in _NON_NEGATIVE:
            if getattr(self, nm) < 0:
                raise ConfigError(f"{nm} must be >= 0, got {getattr(self, nm)}")
        if self.max_rejected_attempts < 1:
            raise ConfigError(f"max_rejected_attempts must be >= 1, got {self.max_rejected_attempts}")
        if self.max_points_per_key_per_s is not None and self.max_points_per_key_per_s <= 0:
            raise ConfigError(f"max_points_per_key_per_s must be > 0, got {self.max_points_per_key_per_s}")
        self._check_rank_key()

    def _check_rank_key(self) -> None:
        try:
            probe = self.rank_key.format(key="k", rank=0)
        except (KeyError, IndexError, ValueError) as e:
            raise ConfigError(f"rank_key {self.rank_key!r} must use only {{key}} and {{rank}}: {e}") from None
        if probe == "k" or "{rank}" not in self.rank_key or "{key}" not in self.rank_key:
            raise ConfigError(f"rank_key {self.rank_key!r} must contain both {{key}} and {{rank}}")

    @classmethod
    def split(cls, options: Mapping[str, object]) -> tuple[ForwarderSettings, dict[str, object]]:
        """Take the forwarder's keys out of ``options``; returns (settings, the backend's options).

        Raises:
            ConfigError: a forwarder option has a bad value.
        """
        mine = {f.name for f in fields(cls)}
        d = cls()
        kw: dict[str, Any] = {}
        for k in mine & set(options):
            default = getattr(d, k)
            if isinstance(default, bool):
                kw[k] = option_bool(options, k, default)
            elif isinstance(default, int):
                kw[k] = option_int(options, k, default)
            elif k == "rank_key":
                kw[k] = option_str(options, k, default)
            else:
                kw[k] = option_float(options, k, default)
        return cls(**kw), {k: v for k, v in options.items() if k not in mine}
