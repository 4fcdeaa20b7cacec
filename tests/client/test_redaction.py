"""Redaction of personal data on the rank (issue 13, item 7): globs, regexes, a callable, the count."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import pytest

import coordinator
from coordinator.client.redaction import REDACTED, Redactor
from coordinator.errors import ConfigError
from coordinator.journal.store import LocalStore
from coordinator.settings import Settings
from tests.untyped import bad

SSN = r"\b\d{3}-\d{2}-\d{4}\b"


def test_globs_replace_values_and_regexes_replace_matches_in_strings_and_list_items() -> None:
    r = Redactor(keys=("user/*", "*/email"), values=(SSN,))
    out = r.apply(
        [
            ("user/name", ("str", "Ada")),
            ("user/age", ("int", 36)),
            ("user/ids", ("list", [1, 2])),
            ("team/lead/email", ("str", "a@b.c")),
            ("notes", ("str", "ssn 123-45-6789 and 987-65-4321")),
            ("ids", ("list", ["123-45-6789", "x", 3])),
            ("lr", ("float", 0.1)),
            ("email_count", ("int", 2)),
        ]
    )
    assert dict(out) == {
        "user/name": ("str", REDACTED),
        "user/age": ("str", REDACTED),
        "user/ids": ("list", [REDACTED, REDACTED]),
        "team/lead/email": ("str", REDACTED),
        "notes": ("str", f"ssn {REDACTED} and {REDACTED}"),
        "ids": ("list", [REDACTED, "x", 3]),
        "lr": ("float", 0.1),
        "email_count": ("int", 2),
    }
    assert r.count() == 4 + 2 + 1


def test_the_callable_runs_last_none_drops_and_an_unchanged_value_is_not_counted() -> None:
    seen: list[tuple[str, Any]] = []

    def red(path: str, value: Any) -> Any:
        seen.append((path, value))
        if path == "drop":
            return None
        return value.upper() if isinstance(value, str) else value

    r = Redactor(keys=("k",), func=red)
    out = r.apply([("a", ("str", "x")), ("n", ("int", 3)), ("drop", ("str", "y")), ("k", ("str", "secret"))])
    assert out == [("a", ("str", "X")), ("n", ("int", 3)), ("k", ("str", "[REDACTED]"))]
    assert ("k", REDACTED) in seen  # the glob ran first
    assert r.count() == 1 + 1 + 2


def test_a_raising_or_invalid_callable_drops_the_field_counts_it_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def red(path: str, value: Any) -> Any:
        if path == "bad_type":
            return object()
        raise RuntimeError("boom 123-45-6789")

    r = Redactor(func=red)
    with caplog.at_level(logging.WARNING, logger="coordinator"):
        assert r.apply([("a", ("str", "v")), ("b", ("str", "w")), ("bad_type", ("int", 1))]) == []
    assert r.count() == 3
    warnings = [rec.getMessage() for rec in caplog.records if "redact()" in rec.getMessage()]
    assert len(warnings) == 1 and "RuntimeError" in warnings[0] and "123-45" not in warnings[0]


def test_bad_settings_are_config_errors_naming_the_pattern(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"\(unclosed"):
        Settings(redact_values=("(unclosed",))
    with pytest.raises(ConfigError, match="redact must be a callable"):
        Settings(redact=bad("nope"))
    with pytest.raises(ConfigError, match="not a valid regex"):
        Redactor(values=["[x"])
    monkeypatch.setenv("COORDINATOR_REDACT_KEYS", "user/*, */email")
    monkeypatch.setenv("COORDINATOR_REDACT_VALUES", r"\d{3}-\d{2}-\d{4}")
    s = Settings.from_env()
    assert s.redact_keys == ("user/*", "*/email") and s.redact_values == (r"\d{3}-\d{2}-\d{4}",)
    assert Redactor.from_settings(Settings()) is None


def test_init_run_refuses_an_invalid_regex_before_starting_anything(store_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"\*\*bad"):
        coordinator.init_run(project="p", settings=Settings(redact_values=("**bad",)))
    assert not store_dir.exists() or not any(store_dir.rglob("run.db"))


def _fields_and_report(run: coordinator.Run) -> tuple[dict[str, Any], dict[str, Any]]:
    assert run.store_path is not None
    s = LocalStore(run.store_path, readonly=True)
    try:
        report = s.run_info().report
        assert report is not None
        return s.fields(), report
    finally:
        s.close()


def test_a_real_run_stores_redacted_fields_and_argv_and_reports_the_count(
    store_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no git repository: the capture writes only this rank's facts
    monkeypatch.setattr(sys, "argv", ["train.py", "--patient", "123-45-6789"])
    settings = Settings(
        mode="async", redact_keys=("user/*", "*/email"), redact_values=(SSN,), system_metrics_interval_s=0
    )
    run = coordinator.init_run(project="p", settings=settings)
    try:
        run["user"] = {"name": "Ada", "id": 7}
        run["team/email"] = "ada@example.com"
        run["notes"] = "patient 123-45-6789 enrolled"
        run["tags_list"] = ["ok", "000-11-2222"]
        run["lr"] = 0.1
        run.log({"loss": 123.0}, step=0)
        assert run["notes"].fetch() == f"patient {REDACTED} enrolled"
    finally:
        run.stop(60)
    fields, report = _fields_and_report(run)
    assert fields["user/name"] == ("str", REDACTED) and fields["user/id"] == ("str", REDACTED)
    assert fields["team/email"] == ("str", REDACTED)
    assert fields["notes"] == ("str", f"patient {REDACTED} enrolled")
    assert fields["tags_list"] == ("list", ["ok", REDACTED])
    assert fields["lr"] == ("float", 0.1)
    argv = fields["sys/ranks/0/argv"][1]
    assert REDACTED in argv and "123-45-6789" not in argv
    assert not any("123-45-6789" in str(v) or "Ada" in str(v) for v in fields.values())
    assert report["per_rank"]["0"]["redacted"] == 2 + 1 + 1 + 1 + 1  # user/*, email, notes, list item, argv


def test_a_real_run_with_a_raising_callable_keeps_training_and_drops_the_field(store_dir: Path) -> None:
    def red(path: str, value: Any) -> Any:
        if path == "private":
            raise ValueError("no")
        return value.replace("Ada", "A.") if isinstance(value, str) else value

    settings = Settings(mode="async", redact=red, capture_env=False, system_metrics_interval_s=0)
    run = coordinator.init_run(project="p", settings=settings)
    try:
        run["private"] = "x"
        run["author"] = "Ada Lovelace"
        run["epochs"] = 3
        run.log({"loss": 1.0}, step=0)
    finally:
        run.stop(60)
    fields, report = _fields_and_report(run)
    assert "private" not in fields
    assert fields["author"] == ("str", "A. Lovelace") and fields["epochs"] == ("int", 3)
    assert report["per_rank"]["0"]["redacted"] == 2
    assert report["per_rank"]["0"]["accepted"] == 1
