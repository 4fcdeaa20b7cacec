"""The trackers a run feeds, with their options: ``Settings.forward_*`` as defaults, a backend's own option winning."""

from __future__ import annotations

from coordinator.forward.backend import resolve_backends
from coordinator.settings import DEFAULTS, Settings

__all__ = ["FORWARD_OPTIONS", "run_backends"]

FORWARD_OPTIONS: tuple[str, ...] = (
    "batch_points",
    "poll_interval_s",
    "fields_interval_s",
    "base_backoff_s",
    "max_backoff_s",
    "max_retry_after_s",
    "max_rejected_attempts",
    "per_rank",
    "rank_key",
    "max_points_per_key_per_s",
    "sys_ranks",
)
"""The forwarder's option names; each is the setting ``forward_<name>``."""


def run_backends(settings: Settings) -> dict[str, dict[str, object]]:
    """Backend name -> options, from ``settings.backend`` and ``settings.backend_options``.

    A ``forward_*`` setting that differs from its default becomes the option of the same name
    (without the prefix) of every backend that does not set that option itself. The result is
    JSON-safe: it travels in the aggregator's ``--config``.

    Raises:
        ConfigError: an unknown backend, or options that do not fit the backends.
    """
    # The settings already took the environment in: the backend module must not read it again.
    backends = resolve_backends(settings.backend or None, settings.backend_options, environ={})
    defaults: dict[str, object] = {}
    for name in FORWARD_OPTIONS:
        value = getattr(settings, f"forward_{name}")
        if value != getattr(DEFAULTS, f"forward_{name}"):
            defaults[name] = value
    return {n: {**defaults, **opts} for n, opts in backends.items()}
