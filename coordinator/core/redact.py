"""Keeping secrets out of what we print: log lines, error messages, reports, ``coordinator show``.

Backend options may hold credentials (a W&B ``api_key``, a Neptune ``api_token``, a
``user:password@`` in an MLflow tracking URI). Every place that formats options or a message that
may quote them passes it through :func:`redact_text` or :func:`redact_options` first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "MASK",
    "SECRET_KEY_PATTERN",
    "is_secret_key",
    "redact_options",
    "redact_text",
    "redact_tree",
    "redact_url",
    "secret_values",
]

MASK = "***"
SECRET_KEY_PATTERN = re.compile(
    r"(?:^|[^a-z0-9])(?:api[_-]?key|apikey|token|secret|password|passwd|credentials?|auth)(?:$|[^a-z0-9])",
    re.IGNORECASE,
)
"""Option names whose values are secrets: a whole word of the name is ``token``, ``api_key``,
``password``, ... (``api_token``, ``hub_token``, ``WANDB_API_KEY``), not a word that merely
contains one (``include_num_input_tokens_seen`` is not a secret)."""

_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^/@:\s]*):(?P<pw>[^/@\s]*)@")


def is_secret_key(name: str) -> bool:
    """Whether an option of this name holds a secret."""
    return bool(SECRET_KEY_PATTERN.search(name))


def redact_url(url: str) -> str:
    """``scheme://user:password@host`` -> ``scheme://user:***@host`` (other URLs unchanged)."""
    return _URL_USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", url)


def redact_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of (possibly nested, per-backend) options with secret values masked and URLs cleaned."""
    out: dict[str, Any] = {}
    for k, v in options.items():
        if isinstance(v, Mapping):
            out[k] = redact_options(v)
        elif is_secret_key(str(k)) and v not in (None, ""):
            out[k] = MASK
        elif isinstance(v, str):
            out[k] = redact_url(v)
        else:
            out[k] = v
    return out


def secret_values(options: Mapping[str, Any]) -> list[str]:
    """The secret strings inside (nested) options: secret-named values and URL passwords."""
    found: list[str] = []
    for k, v in options.items():
        if isinstance(v, Mapping):
            found.extend(secret_values(v))
        elif isinstance(v, str):
            if is_secret_key(str(k)) and v:
                found.append(v)
            found.extend(m["pw"] for m in _URL_USERINFO.finditer(v) if m["pw"])
    return found


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every given secret replaced by the mask, and URL passwords masked."""
    for s in sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True):
        text = text.replace(s, MASK)
    return redact_url(text)


def redact_tree(obj: Any, secrets: Iterable[str] = ()) -> Any:
    """A copy of JSON-like data (a report, a forwarder's stats) with every string passed through
    :func:`redact_text` and secret-named values masked."""
    secrets = list(secrets)
    if isinstance(obj, Mapping):
        return {
            k: MASK if is_secret_key(str(k)) and isinstance(v, str) and v else redact_tree(v, secrets)
            for k, v in obj.items()
        }
    if isinstance(obj, list | tuple):
        return [redact_tree(v, secrets) for v in obj]
    if isinstance(obj, str):
        return redact_text(obj, secrets)
    return obj
