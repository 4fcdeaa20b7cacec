"""MLflow's request limits, its name rules and its errors, as the MLflow backend needs them.

The limits are MLflow's documented ``log_batch`` limits (``mlflow.utils.validation``): at most
1000 metrics, 100 params, 100 tags, 1000 entities in all, and 1 MB per request.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from typing import Any

from coordinator.errors import missing_extra

try:
    from mlflow.entities import Metric
    from mlflow.exceptions import MlflowException, RestException
    from mlflow.utils import validation as _limits
except ImportError as e:
    raise missing_extra("the MLflow backend", "mlflow", e) from e

from coordinator.errors import SinkError
from coordinator.forward.backend import BackendRejectedError

__all__ = [
    "MAX_PARAMS_TAGS",
    "MAX_PARAM_VAL",
    "MAX_TAG_VAL",
    "error_code",
    "message",
    "metric_name",
    "metric_requests",
    "quote",
    "wrap",
]

_MAX_METRICS = int(getattr(_limits, "MAX_METRICS_PER_BATCH", 1000))
MAX_PARAMS_TAGS = int(getattr(_limits, "MAX_PARAMS_TAGS_PER_BATCH", 100))
_MAX_ENTITIES = int(getattr(_limits, "MAX_ENTITIES_PER_BATCH", 1000))
_MAX_REQUEST_BYTES = int(getattr(_limits, "MAX_BATCH_LOG_REQUEST_SIZE", 1_000_000))
_MAX_KEY = int(getattr(_limits, "MAX_ENTITY_KEY_LENGTH", 250))
MAX_PARAM_VAL = int(getattr(_limits, "MAX_PARAM_VAL_LENGTH", 6000))
MAX_TAG_VAL = int(getattr(_limits, "MAX_TAG_VAL_LENGTH", 8000))
_REQUEST_BUDGET_BYTES = int(_MAX_REQUEST_BYTES * 0.8)
"""Our size estimate of a request is approximate: keep a margin below MLflow's limit."""

_BAD_CHARS = re.compile(r"[^/\w.\- :]")
_PERMANENT_CODES = frozenset(
    {
        "INVALID_PARAMETER_VALUE",
        "BAD_REQUEST",
        "INVALID_STATE",
        "PERMISSION_DENIED",
        "UNAUTHENTICATED",
        "RESOURCE_DOES_NOT_EXIST",
        "FEATURE_DISABLED",
        "ENDPOINT_NOT_FOUND",
    }
)


def metric_name(name: str) -> str:
    """``name`` as MLflow accepts it: refused characters become ``_``, long names get a hash suffix."""
    out = _BAD_CHARS.sub("_", name)
    if len(out) > _MAX_KEY:
        h = hashlib.sha256(name.encode()).hexdigest()[:10]
        out = f"{out[: _MAX_KEY - 11]}~{h}"
    return out


def metric_requests(metrics: Iterator[Metric]) -> Iterator[list[Metric]]:
    """Group metrics into requests of at most 1000 metrics and ~0.8 MB (JSON size estimate)."""
    cur: list[Metric] = []
    size = 0
    for m in metrics:
        # {"key": "...", "value": -1.2345678901234567e-300, "timestamp": 1700000000000, "step": 123}
        est = len(m.key) + 90
        if cur and (len(cur) >= min(_MAX_METRICS, _MAX_ENTITIES) or size + est > _REQUEST_BUDGET_BYTES):
            yield cur
            cur, size = [], 0
        cur.append(m)
        size += est
    if cur:
        yield cur


def error_code(e: MlflowException) -> str:
    return str(getattr(e, "error_code", "") or "")


def message(e: BaseException) -> str:
    msg = getattr(e, "message", None) or str(e)
    return " ".join(str(msg).split())[:500]


def wrap(e: MlflowException) -> SinkError:
    """A refused request (4xx codes) is permanent; anything else (5xx, network) is retried."""
    code = error_code(e)
    get_status: Any = e.get_http_status_code if isinstance(e, RestException) else None
    status = get_status() if get_status is not None else None
    if code in _PERMANENT_CODES or (status is not None and 400 <= status < 500 and status not in (408, 429)):
        return BackendRejectedError(f"mlflow: {code}: {message(e)}")
    err = SinkError(f"mlflow: {code or type(e).__name__}: {message(e)}")
    return err


def quote(s: str) -> str:
    return s.replace("\\", "\\\\").replace("'", "\\'")
