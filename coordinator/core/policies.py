"""Reduction policies: their names, and which policy each metric key has (globs, per-key overrides)."""

from __future__ import annotations

import fnmatch

__all__ = ["POLICIES", "POLICY_PREFIX", "PolicyTable"]

POLICY_PREFIX = "sys/policy/"
"""Field path prefix a rank uses to set one key's policy (``log(..., policy=...)``)."""

POLICIES = ("mean", "sum", "min", "max", "rank0", "per_rank", "all")
"""Reduction policies. ``per_rank`` keeps only the ranks' own series (no main series);
``all`` keeps the mean as the main series; every policy keeps the per-rank series."""


class PolicyTable:
    """Maps a key to its policy by the first matching glob (``fnmatch``), default ``mean``."""

    def __init__(self, rules: dict[str, str] | None = None, default: str = "mean") -> None:
        """Raises ValueError naming an unknown policy."""
        self.rules = dict(rules or {})
        for pat, pol in [*self.rules.items(), ("<default>", default)]:
            if pol not in POLICIES:
                raise ValueError(f"policy {pol!r} for {pat!r} is not one of {', '.join(POLICIES)}")
        self.default = default
        self._cache: dict[str, str] = {}

    def override(self, key: str, policy: str) -> None:
        """Give ``key`` its own policy (a per-call override); raises ValueError for an unknown one."""
        if policy not in POLICIES:
            raise ValueError(f"policy {policy!r} for {key!r} is not one of {', '.join(POLICIES)}")
        self._cache[key] = policy

    def __call__(self, key: str) -> str:
        pol = self._cache.get(key)
        if pol is None:
            pol = next((p for g, p in self.rules.items() if fnmatch.fnmatchcase(key, g)), self.default)
            self._cache[key] = pol
        return pol
