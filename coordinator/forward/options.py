"""Backend configuration: typed option values, the unknown-option check, env-only client settings.

Options reach a backend as strings (``--option k=v``, JSON from the environment) or as Python
values (``init_run(backend_options=...)``); these helpers read both the same way and name the
option in every error.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import SupportsFloat, SupportsInt, cast

from coordinator.errors import ConfigError

__all__ = ["check_options", "option_bool", "option_float", "option_int", "option_str", "scoped_env"]


def option_str(options: Mapping[str, object], key: str, default: str | None = None) -> str | None:
    """A string option (``None`` when absent and no default)."""
    v = options.get(key, default)
    return None if v is None else str(v)


def option_bool(options: Mapping[str, object], key: str, default: bool) -> bool:
    """A boolean option: ``true/false/1/0/yes/no/on/off`` strings or a bool.

    Raises:
        ConfigError: naming the option.
    """
    v = options.get(key, default)
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"option {key}={v!r} is not a boolean")


def option_float(options: Mapping[str, object], key: str, default: float | None) -> float | None:
    """A float option (``None``/``none`` disables).

    Raises:
        ConfigError: naming the option.
    """
    v = options.get(key, default)
    if v is None or (isinstance(v, str) and v.strip().lower() in ("", "none")):
        return None
    try:
        return float(cast(SupportsFloat | str, v))  # float() is the check: what it refuses raises below
    except (TypeError, ValueError):
        raise ConfigError(f"option {key}={v!r} is not a number") from None


def option_int(options: Mapping[str, object], key: str, default: int) -> int:
    """An integer option.

    Raises:
        ConfigError: naming the option.
    """
    v = options.get(key, default)
    try:
        return int(cast(SupportsInt | str, v))  # int() is the check: what it refuses raises below
    except (TypeError, ValueError):
        raise ConfigError(f"option {key}={v!r} is not an integer") from None


def check_options(backend: str, options: Mapping[str, object], known: Sequence[str]) -> None:
    """Reject options a backend does not know (a typo must not be ignored).

    Raises:
        ConfigError: naming the unknown options and the known ones.
    """
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(f"{backend}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")


_env_lock = threading.Lock()


@contextlib.contextmanager
def scoped_env(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of a client call, then restore them.

    Some clients (MLflow's HTTP retries, Neptune's data directory) read settings only from the
    environment. Variables the user already set are left alone. Serialised by a lock; other
    threads of the process see the values meanwhile, which is why it wraps short calls only.
    """
    with _env_lock:
        saved: dict[str, str | None] = {}
        for k, v in values.items():
            if k in os.environ:
                continue
            saved[k] = None
            os.environ[k] = v
        try:
            yield
        finally:
            for k in saved:
                os.environ.pop(k, None)
