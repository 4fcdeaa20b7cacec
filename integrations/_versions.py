"""Version drift: an integration imported under a framework major version we have not tested warns once."""

from __future__ import annotations

import importlib.metadata
import warnings

__all__ = ["check_tested"]

_warned: set[str] = set()


def check_tested(dist: str, tested_majors: tuple[int, ...], *, integration: str) -> str | None:
    """Warn once per process when ``dist``'s installed major version is not one of ``tested_majors``.

    Returns:
        The installed version, or ``None`` when the distribution is not installed.
    """
    try:
        version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None
    major_text = version.split(".", 1)[0]
    major = int(major_text) if major_text.isdigit() else -1
    if major not in tested_majors and dist not in _warned:
        _warned.add(dist)
        tested = " or ".join(f"{m}.x" for m in tested_majors)
        warnings.warn(
            f"coordinator.integrations.{integration} was tested with {dist} {tested}; "
            f"{dist} {version} is installed: it may work, but report what breaks",
            RuntimeWarning,
            stacklevel=3,
        )
    return version
