"""The paths a rank has used: which are series, which are fields, and each key's declared policy.

A path is either a series or a field, never both; ``sys/*`` belongs to the coordinator; a run
has at most ``MAX_KEYS_PER_RUN`` series; a key keeps the reduction policy it was first logged
with. Callers hold the run's buffer lock (except :meth:`KeyRegistry.claim_policy`: slow path).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from coordinator.core.limits import MAX_KEYS_PER_RUN
from coordinator.core.policies import POLICIES, POLICY_PREFIX
from coordinator.core.values import check_key

__all__ = ["KeyRegistry"]


class KeyRegistry:
    """The rules between a run's series, fields and policies, and what was used so far."""

    __slots__ = ("fields", "policies", "run_id", "series")

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.series: set[str] = set()
        """Keys logged as series."""
        self.fields: set[str] = set()
        """Paths assigned as fields."""
        self.policies: dict[str, str] = {}
        """Key -> policy declared with ``log(..., policy=)``."""

    def check_new(self, key: object) -> None:
        """Raise unless ``key`` (not yet a series) may become one.

        Raises:
            TypeError, ValueError: a malformed key, a field's path, or too many keys.
        """
        check_key(key)
        if key in self.fields or (isinstance(key, str) and key.startswith("sys/")):
            raise ValueError(f"{key!r} is a field; a path is either a field or a series")
        if len(self.series) >= MAX_KEYS_PER_RUN:
            raise ValueError(
                f"more than {MAX_KEYS_PER_RUN} distinct metric keys in run {self.run_id}; "
                "put varying parts (ids, indices) in values, not in keys"
            )

    def add_series(self, key: str) -> None:
        """Record ``key`` as a series, checking it first if it is new (see :meth:`check_new`)."""
        if key not in self.series:
            self.check_new(key)
            self.series.add(key)

    def check_fields(self, paths: Iterable[str]) -> None:
        """Raise unless every path may be a field written by the user.

        Raises:
            ValueError: a series' key, or a ``sys/*`` path.
        """
        for p in paths:
            if p in self.series:
                raise ValueError(f"{p!r} is a series; a path is either a field or a series")
            if p.startswith("sys/"):
                raise ValueError(f"{p!r}: sys/* fields are written by the coordinator")

    def declare_policy(self, keys: Iterable[object], policy: str) -> Iterator[str]:
        """Claim ``policy`` for each key in turn; yields the field path announcing each new claim.

        The caller queues each path before the next key is claimed, so a key that raises leaves
        the earlier ones claimed and announced.

        Raises:
            ValueError: an unknown policy; see :meth:`claim_policy`.
        """
        if policy not in POLICIES:
            raise ValueError(f"policy {policy!r} is not one of {', '.join(POLICIES)}")
        for k in keys:
            if self.claim_policy(k, policy):
                yield f"{POLICY_PREFIX}{k}"

    def claim_policy(self, key: object, policy: str) -> bool:
        """Declare ``key``'s reduction policy (a known one); True when new (to be sent), False when already so.

        Raises:
            ValueError: a malformed key, or a key that already has another
                policy (declared, or from ``init_run`` because it was logged before).
        """
        check_key(key)
        assert isinstance(key, str)
        had = self.policies.get(key)
        if had == policy:
            return False
        if had is not None or key in self.series:
            raise ValueError(f"{key!r} already has policy {had or 'from init_run'}; a key keeps its first policy")
        self.policies[key] = policy
        return True
