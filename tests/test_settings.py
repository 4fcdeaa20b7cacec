"""Settings: precedence (argument > settings= > environment > default), environment parsing,
validation, unknown variables, and init_run's deprecated keywords."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest

import coordinator
from coordinator.client import rowpath
from coordinator.client.deprecated import DEPRECATED_KEYWORDS
from coordinator.settings import DEFAULTS, Settings, env_name
from tests.untyped import bad

# ------------------------------------------------------------------------------ precedence


def test_resolve_takes_argument_over_settings_over_environment_over_default() -> None:
    """Each field comes from the first source that sets it."""
    env = {
        "COORDINATOR_FLUSH_INTERVAL_S": "0.5",
        "COORDINATOR_CLOSE_TIMEOUT_S": "7",
        "COORDINATOR_STOP_GRACE_S": "3",
    }
    given = Settings(flush_interval_s=0.25, close_timeout_s=9.0)
    s = Settings.resolve(given, env, flush_interval_s=0.125)
    assert s.flush_interval_s == 0.125  # argument
    assert s.close_timeout_s == 9.0  # settings= over the environment
    assert s.stop_grace_s == 3.0  # environment
    assert s.group_timeout_s == DEFAULTS.group_timeout_s  # default
    assert Settings.resolve(None, env, flush_interval_s=None).flush_interval_s == 0.5  # None is "not given"


def test_a_settings_field_at_its_default_does_not_override_the_environment() -> None:
    """settings= contributes only the fields that differ from the defaults."""
    env = {"COORDINATOR_BACKPRESSURE": "block"}
    assert Settings.resolve(Settings(backpressure="spool"), env).backpressure == "block"
    assert Settings.resolve(Settings(backpressure="drop_oldest"), env).backpressure == "drop_oldest"


def test_init_run_resolves_mode_and_placement_in_that_order(monkeypatch: pytest.MonkeyPatch, store_dir: Path) -> None:
    """Real (disabled) runs: the environment, then settings=, then the argument decide."""
    monkeypatch.setenv("COORDINATOR_MODE", "disabled")
    monkeypatch.setenv("COORDINATOR_RANK", "3")
    monkeypatch.setenv("COORDINATOR_WORLD_SIZE", "4")
    run = coordinator.init_run()
    assert (run.mode, run.rank, run.world_size) == ("disabled", 3, 4)
    run.stop()
    monkeypatch.setenv("COORDINATOR_MODE", "async")
    run = coordinator.init_run(settings=Settings(mode="disabled", rank=1))
    assert (run.mode, run.rank, run.world_size) == ("disabled", 1, 4)
    run.stop()
    run = coordinator.init_run(mode="disabled", settings=Settings(mode="read-only"))
    assert run.mode == "disabled"
    run.stop()


def test_a_bad_environment_value_fails_init_run_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, store_dir: Path
) -> None:
    """A typo in a value is a ConfigError at init_run, naming the variable."""
    monkeypatch.setenv("COORDINATOR_FLUSH_INTERVAL_S", "fast")
    with pytest.raises(coordinator.ConfigError, match="COORDINATOR_FLUSH_INTERVAL_S"):
        coordinator.init_run(mode="disabled")


# ------------------------------------------------------------------------------ environment parsing


@pytest.mark.parametrize(
    ("field", "raw", "value"),
    [
        ("debug", "1", True),
        ("debug", "Yes", True),
        ("insecure_tcp", "off", False),
        ("handle_sigterm", "false", False),
        ("max_buffer_points", "1000", 1000),
        ("aggregator_nice", "-2", -2),
        ("flush_interval_s", "0.02", 0.02),
        ("kill_window_s", "0.05", 0.05),
        ("forward_max_points_per_key_per_s", "2.5", 2.5),
        ("backend", "mlflow, tensorboard,", ("mlflow", "tensorboard")),
        ("backend_options", '{"mlflow": {"tracking_uri": "http://x"}}', {"mlflow": {"tracking_uri": "http://x"}}),
        ("dir", "/tmp/store", "/tmp/store"),
        ("run_id", "abc", "abc"),
        ("backpressure", "drop_oldest", "drop_oldest"),
        ("forward_rank_key", "r{rank}/{key}", "r{rank}/{key}"),
    ],
)
def test_each_kind_of_variable_parses_as_its_field_type(field: str, raw: str, value: object) -> None:
    """bool, int, float, optional float, comma list, JSON object, optional str, literal, str."""
    got = getattr(Settings.from_env({env_name(field): raw}), field)
    assert got == value and type(got) is type(value)


def test_an_empty_variable_is_not_set() -> None:
    """``COORDINATOR_X=`` leaves the field at its default (an optional stays None)."""
    s = Settings.from_env({"COORDINATOR_DIR": "", "COORDINATOR_MAX_BUFFER_POINTS": ""})
    assert s.dir is None and s.max_buffer_points == DEFAULTS.max_buffer_points


@pytest.mark.parametrize(
    ("field", "raw"),
    [
        ("debug", "maybe"),
        ("max_buffer_points", "1e3"),
        ("flush_interval_s", "fast"),
        ("forward_max_points_per_key_per_s", "many"),
        ("backend_options", "{not json"),
        ("backend_options", "[1, 2]"),
    ],
)
def test_a_value_that_does_not_parse_is_a_config_error_naming_the_variable(field: str, raw: str) -> None:
    """The message names the variable and the field."""
    with pytest.raises(coordinator.ConfigError, match=env_name(field)) as e:
        Settings.from_env({env_name(field): raw})
    assert f"Settings.{field}" in str(e.value)


def test_a_literal_outside_its_choices_names_the_field() -> None:
    """Literal values are checked by the Settings itself."""
    with pytest.raises(coordinator.ConfigError, match=r"Settings\.transport"):
        Settings.from_env({"COORDINATOR_TRANSPORT": "udp"})


def test_unknown_coordinator_variables_are_warned_about_with_a_suggestion(caplog: pytest.LogCaptureFixture) -> None:
    """A typo'd name is logged once with the closest real name; the secret variables and the switch to the
    Python path are read elsewhere, not settings, and not warned about."""
    env = {"COORDINATOR_FLUSH_INTERVALL_S": "1", "COORDINATOR_SECRET": "x" * 20, "COORDINATOR_SECRET_FILE": "/f"}
    env[rowpath.PURE_ENV] = "1"
    with caplog.at_level(logging.WARNING, logger="coordinator"):
        s = Settings.from_env(env)
        Settings.from_env(env)
    msgs = [r.getMessage() for r in caplog.records if "COORDINATOR_" in r.getMessage()]
    assert len(msgs) == 1, msgs
    assert "COORDINATOR_FLUSH_INTERVALL_S" in msgs[0] and "did you mean COORDINATOR_FLUSH_INTERVAL_S" in msgs[0]
    assert s == DEFAULTS


# ------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"mode": "fast"}, "mode"),
        ({"backpressure": "drop"}, "backpressure"),
        ({"transport": "udp"}, "transport"),
        ({"flush_interval_s": -1.0}, "flush_interval_s"),
        ({"flush_interval_s": 0}, "flush_interval_s"),
        ({"kill_window_s": 0.0}, "kill_window_s"),
        ({"kill_window_s": float("nan")}, "kill_window_s"),
        ({"max_spool_bytes": -1}, "max_spool_bytes"),
        ({"max_window_batches": 0}, "max_window_batches"),
        ({"max_aggregator_restarts": -1}, "max_aggregator_restarts"),
        ({"backend": "mlflow"}, "backend"),
    ],
)
def test_invalid_settings_name_the_field(kwargs: dict[str, Any], field: str) -> None:
    """Settings(...) refuses a bad value with a ConfigError naming Settings.<field>."""
    with pytest.raises(coordinator.ConfigError, match=rf"Settings\.{field}"):
        Settings(**kwargs)


@pytest.mark.parametrize(
    ("world_size", "interval"),
    [(1, 0.05), (8, 0.05), (128, 0.05), (129, 129 / 2560), (1024, 0.4), (4096, 1.6), (5120, 2.0), (20000, 2.0)],
)
def test_an_unset_flush_interval_grows_with_the_job_past_128_ranks(world_size: int, interval: float) -> None:
    """Unset, 50 ms up to 128 ranks, then ``world_size / 2560`` s, at most 2 s: ~2,560 batches a second."""
    assert DEFAULTS.flush_interval_s is None
    assert DEFAULTS.flush_interval(world_size) == pytest.approx(interval)
    if world_size <= 5120:
        assert world_size / DEFAULTS.flush_interval(world_size) <= 2560 + 1e-6


def test_a_flush_interval_that_is_set_is_kept_at_any_job_size() -> None:
    """Set by an argument or the environment, the interval is the user's, even at 4096 ranks."""
    assert Settings(flush_interval_s=0.05).flush_interval(4096) == 0.05
    env = {"COORDINATOR_FLUSH_INTERVAL_S": "0.01"}
    assert Settings.resolve(None, env).flush_interval(1024) == 0.01
    assert Settings.resolve(None, {}).flush_interval(1024) == 0.4
    with pytest.raises(coordinator.ConfigError, match="flush_interval_s"):
        Settings(flush_interval_s=float("nan"))


@pytest.mark.parametrize(("world_size", "kill"), [(1, None), (128, None), (129, 0.05), (1024, 0.05), (20000, 0.05)])
def test_an_unset_kill_window_stays_50_ms_when_the_unset_flush_interval_grows(
    world_size: int, kill: float | None
) -> None:
    """Past 128 ranks the automatic interval grows and the kill window does not: 50 ms, as below."""
    assert DEFAULTS.kill_window_s is None
    assert DEFAULTS.kill_window(world_size) == kill


def test_a_kill_window_or_flush_interval_the_user_set_decides_what_a_kill_loses_at_any_job_size() -> None:
    """A set kill window is kept; a set flush interval is the kill window (None: no copies), even at 4096 ranks."""
    assert Settings(kill_window_s=0.2).kill_window(4096) == 0.2
    assert Settings(kill_window_s=0.2).kill_window(8) == 0.2
    assert Settings(flush_interval_s=1.0).kill_window(4096) is None
    assert Settings.resolve(None, {"COORDINATOR_FLUSH_INTERVAL_S": "0.5"}).kill_window(1024) is None


def test_resolve_refuses_a_non_field_and_a_non_settings() -> None:
    """An argument that is not a field, or settings= of another type, is a ConfigError."""
    with pytest.raises(coordinator.ConfigError, match="flush_every"):
        Settings.resolve(None, {}, flush_every=1)
    with pytest.raises(coordinator.ConfigError, match="settings="):
        Settings.resolve(bad({"mode": "sync"}), {})


# ------------------------------------------------------------------------------ deprecated keywords


def _value(kw: str, tmp_path: Path) -> object:
    values: dict[str, object] = {
        "rank": 0,
        "world_size": 1,
        "dir": tmp_path / "store",
        "default_policy": "sum",
        "max_buffer_points": 10,
        "flush_interval_s": 0.125,
        "close_timeout_s": 1.5,
        "group_timeout_s": 2.5,
        "liveness_timeout_s": 3.5,
        "stop_grace_s": 4.5,
        "rendezvous_timeout_s": 5.5,
        "backpressure": "block",
        "spool_dir": tmp_path / "spool",
        "max_spool_bytes": 1024,
        "handle_sigterm": False,
        "transport": "ipc",
        "insecure_tcp": True,
        "forward_timeout_s": 6.5,
    }
    return values[kw]


@pytest.mark.parametrize("kw", DEPRECATED_KEYWORDS)
def test_each_deprecated_keyword_still_works_and_warns_naming_its_field(
    kw: str, tmp_path: Path, store_dir: Path
) -> None:
    """init_run(kw=...) warns (pointing at the caller) and sets Settings.kw."""
    value = _value(kw, tmp_path)
    with pytest.warns(
        DeprecationWarning, match=rf"init_run\({kw}=\.\.\.\) is deprecated; pass settings=Settings\({kw}="
    ) as w:
        run = coordinator.init_run(mode="disabled", **{kw: value})
    run.stop()
    # Only this call's deprecation: the recording is process-wide, and another thread's or an
    # import's warning (once, in CI: one from typing.py) may land in it.
    assert [r.filename for r in w if "is deprecated; pass settings=" in str(r.message)] == [__file__]
    expected = os.fspath(value) if isinstance(value, Path) else value
    assert getattr(run._settings, kw) == expected


def test_a_deprecated_keyword_overrides_settings_and_an_unknown_one_is_a_type_error(store_dir: Path) -> None:
    """The keyword is an explicit argument (wins over settings=); a keyword init_run never took is a TypeError."""
    with pytest.warns(DeprecationWarning):
        run = coordinator.init_run(mode="disabled", settings=Settings(close_timeout_s=9.0), close_timeout_s=2.0)
    run.stop()
    assert run._settings.close_timeout_s == 2.0
    with pytest.raises(TypeError, match="flush_every"):
        coordinator.init_run(mode="disabled", flush_every=1)
