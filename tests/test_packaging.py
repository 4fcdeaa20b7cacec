"""Packaging: the distribution's name, install hints that name it, and the integrations' import path."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from coordinator.errors import DISTRIBUTION, missing_extra

ROOT = Path(__file__).resolve().parents[1]
HINT = re.compile(r"pip install (-e )?'([^']+)'")


def test_the_distribution_name_is_ours_and_every_error_hint_uses_it() -> None:
    """`coordinator` on PyPI is another project: a hint naming it would install the wrong package."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["name"] == DISTRIBUTION
    err = missing_extra("the MLflow backend", "mlflow", ImportError("No module named 'mlflow'", name="mlflow"))
    assert f"pip install '{DISTRIBUTION}[mlflow]'" in str(err)
    assert "pip install -e '.[mlflow]'" in str(err)
    assert err.name == "mlflow"


@pytest.mark.parametrize(
    "path",
    sorted(
        p
        for p in [*ROOT.glob("coordinator/**/*.py"), *ROOT.glob("integrations/**/*.py"), *ROOT.glob("*.md")]
        if "pip install" in p.read_text()
    ),
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_install_hints_name_the_distribution_or_a_checkout(path: Path) -> None:
    """Every `pip install '...'` in the code and the README installs ours: `ddp-coordinator[x]` or `-e '.[x]'`."""
    for m in HINT.finditer(path.read_text()):
        editable, target = m.group(1), m.group(2)
        ours = target.startswith((f"{DISTRIBUTION}[", "{DISTRIBUTION}["))  # the latter: missing_extra's template
        assert (editable and target.startswith(".[")) or ours, m.group(0)


def test_integrations_import_as_part_of_the_package() -> None:
    """`pip install -e .` maps the top-level integrations/ folder to coordinator.integrations."""
    import coordinator.integrations.torch_ddp as ddp

    assert Path(ddp.__file__).resolve() == ROOT / "integrations" / "torch_ddp.py"
    assert callable(ddp.ddp_run)
