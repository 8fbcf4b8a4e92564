"""The command line: exit codes, usage errors, the bind guard, settings precedence.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from gigastt import __version__
from gigastt.cli import build_parser
from gigastt.config import (
    INT_RANGES,
    LIMIT_ENV,
    LIMIT_KEYS,
    ConfigError,
    InvalidSetting,
    Limits,
    bind_allowed,
    is_loopback_host,
    parse_bool,
    read_limits_file,
    reload_limits,
    serve_config,
    with_config_file,
)
from tests.conftest import ROOT


def gigastt(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    full = {k: v for k, v in os.environ.items() if not k.startswith("GIGASTT_")}
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "gigastt", *args], capture_output=True,
                          text=True, timeout=120, cwd=ROOT, env=full)


def test_version_and_help() -> None:
    result = gigastt("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"gigastt {__version__}"
    assert gigastt("--help").returncode == 0
    assert "--pool-size" in gigastt("serve", "--help").stdout


@pytest.mark.parametrize("args", [
    ("serve", "--port", "70000"),
    ("serve", "--port", "abc"),
    ("serve", "--no-such-flag"),
    ("serve", "--pool-size", "0"),
    ("serve", "--idle-timeout-secs", "-1"),
    ("transcribe",),
    ("nosuchcommand",),
    ("--log-level", "loud", "serve"),
])
def test_usage_errors_exit_2(args: tuple[str, ...]) -> None:
    result = gigastt(*args)
    assert result.returncode == 2, result.stderr
    assert "usage:" in result.stderr


@pytest.mark.parametrize(("var", "value"), [
    ("GIGASTT_METRICS", "maybe"),
    ("GIGASTT_IDLE_TIMEOUT_SECS", ""),
    ("GIGASTT_IDLE_TIMEOUT_SECS", "ten"),
])
def test_bad_environment_values_exit_2_naming_the_variable(var: str, value: str,
                                                           tmp_path: Path) -> None:
    result = gigastt("serve", "--model-dir", str(tmp_path), env={var: value})
    assert result.returncode == 2 and var in result.stderr


def test_bind_guard_runs_first_and_refuses_public_addresses(tmp_path: Path) -> None:
    model_dir = tmp_path / "models"
    result = gigastt("serve", "--host", "0.0.0.0", "--model-dir", str(model_dir))
    assert result.returncode == 1
    assert not model_dir.exists()  # nothing was downloaded or created before the guard
    assert result.stderr.strip().endswith(
        "Error: refusing to bind to '0.0.0.0': non-loopback addresses require `--bind-all` (or"
        " env GIGASTT_ALLOW_BIND_ANY=1) to prevent accidental public exposure of local"
        " transcription")


def test_bind_all_passes_the_guard_then_needs_the_model(tmp_path: Path) -> None:
    # The model URL points at a closed loopback port: the download fails at once, offline.
    mirror = {"GIGASTT_MODEL_URL": "http://127.0.0.1:9/", "GIGASTT_DOWNLOAD_RETRIES": "0"}
    for args, env in ((("--bind-all",), {}), ((), {"GIGASTT_ALLOW_BIND_ANY": "yes"})):
        result = gigastt("serve", "--host", "0.0.0.0", *args, "--model-dir",
                         str(tmp_path / "models"), env={**env, **mirror})
        assert result.returncode == 1
        assert "model files missing" in result.stderr and "gigastt download" in result.stderr


def test_m4_loopback_detection() -> None:
    for host in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2", " LOCALHOST "):
        assert is_loopback_host(host), host
    for host in ("0.0.0.0", "192.168.1.10", "example.com", "::", "::ffff:127.0.0.1"):
        assert not is_loopback_host(host), host
    assert not bind_allowed("0.0.0.0", False, {})
    assert bind_allowed("0.0.0.0", True, {})
    assert bind_allowed("0.0.0.0", False, {"GIGASTT_ALLOW_BIND_ANY": " TRUE "})
    assert not bind_allowed("0.0.0.0", False, {"GIGASTT_ALLOW_BIND_ANY": "on"})


def test_d6_booleans() -> None:
    for text in ("1", "true", "YES", "On"):
        assert parse_bool("X", text) is True
    for text in ("0", "False", "no", "OFF"):
        assert parse_bool("X", text) is False
    with pytest.raises(ConfigError, match="X"):
        parse_bool("X", "2")


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", *argv])


def test_m9_defaults_and_config_file(tmp_path: Path) -> None:
    limits = Limits()
    assert (limits.rate_limit_per_minute, limits.rate_limit_burst, limits.max_session_secs,
            limits.shutdown_drain_secs) == (0, 10, 3600, 10)
    path = tmp_path / "gigastt.toml"
    path.write_text("idle_timeout_secs = 600\nrate_limit_per_minute = 120\nunknown = 'x'\n")
    config = with_config_file(serve_config(_args("--config", str(path)), {}))
    assert config.limits == Limits(idle_timeout_secs=600, rate_limit_per_minute=120)


def test_precedence_default_file_env_flag(tmp_path: Path) -> None:
    path = tmp_path / "gigastt.toml"
    path.write_text("idle_timeout_secs = 600\nmax_session_secs = 100\nbody_limit_bytes = 5\n")
    env = {"GIGASTT_IDLE_TIMEOUT_SECS": "700", "GIGASTT_MAX_SESSION_SECS": "200"}
    config = with_config_file(serve_config(
        _args("--config", str(path), "--max-session-secs", "300"), env))
    assert config.limits.idle_timeout_secs == 700  # env over file
    assert config.limits.max_session_secs == 300  # flag over env
    assert config.limits.body_limit_bytes == 5  # file over default
    # A reload re-reads the file but keeps what env and flags pinned at start-up (D12).
    path.write_text("idle_timeout_secs = 1\nbody_limit_bytes = 9\nshutdown_drain_secs = 0\n")
    overrides = {k: getattr(config.limits, k) for k in config.pinned}
    reloaded = reload_limits(config, overrides)
    assert (reloaded.idle_timeout_secs, reloaded.max_session_secs) == (700, 300)
    assert reloaded.body_limit_bytes == 9 and reloaded.shutdown_drain_secs == 1


@pytest.mark.parametrize(("content", "message"), [
    ("idle_timeout_secs = 'ten'\n", "idle_timeout_secs must be an integer in 0..604800"),
    ("idle_timeout_secs = -1\n", "idle_timeout_secs must be an integer in 0..604800"),
    ("idle_timeout_secs = true\n", "idle_timeout_secs must be an integer in 0..604800"),
    ("idle_timeout_secs = 1.5\n", "idle_timeout_secs must be an integer in 0..604800"),
    ("this is not toml", "Failed to parse config file"),
    ("idle_timeout_secs = " + "[" * 5000 + "]" * 5000, "nested too deeply"),
    ("idle_timeout_secs = " + "9" * 5000, "number too long"),
    ("rate_limit_per_minute = 10\nrate_limit_burst = 0\n", "--rate-limit-burst must be > 0"),
])
def test_bad_config_files(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        with_config_file(serve_config(_args("--config", str(path)), {}))


def test_missing_config_file_is_a_runtime_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="Failed to read config file"):
        read_limits_file(tmp_path / "absent.toml")
    result = gigastt("serve", "--config", str(tmp_path / "absent.toml"), "--model-dir",
                     str(tmp_path))
    assert result.returncode == 1


def test_clamps() -> None:
    config = serve_config(_args("--shutdown-drain-secs", "0", "--pool-checkout-timeout-secs", "0",
                                "--rate-limit-per-minute", "120000"), {})
    assert config.limits.shutdown_drain_secs == 1
    assert config.limits.pool_checkout_timeout_secs == 1
    assert config.limits.rate_limit_per_minute == 60000


def test_one_range_per_limit_for_flag_environment_and_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    for key in LIMIT_KEYS:
        high = INT_RANGES[key][1]
        flag = "--" + key.replace("_", "-")
        path.write_text(f"{key} = {high}\n")
        assert read_limits_file(path) == {key: high}
        clamped = getattr(Limits(**{key: high}).clamped(), key)  # only the rpm is clamped
        assert getattr(serve_config(_args(flag, str(high)), {}).limits, key) in (high, 60000)
        assert getattr(serve_config(_args(flag, str(high)), {}).limits, key) == clamped
        env = {LIMIT_ENV[key]: str(high)}
        assert getattr(serve_config(_args(), env).limits, key) in (high, 60000)  # rpm clamp
        assert getattr(serve_config(_args(), env).limits, key) == clamped
        path.write_text(f"{key} = {high + 1}\n")
        with pytest.raises(InvalidSetting, match=f"{key} must be an integer in 0..{high}"):
            read_limits_file(path)
        with pytest.raises(SystemExit):
            _args(flag, str(high + 1))
        with pytest.raises(InvalidSetting, match=LIMIT_ENV[key]):
            serve_config(_args(), {LIMIT_ENV[key]: str(high + 1)})
