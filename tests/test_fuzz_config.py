"""Fuzzing the configuration parsers: the ``--config`` file reader and the environment parsers
return a value within range or raise ConfigError, never anything else.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gigastt.cli import build_parser
from gigastt.config import (
    INT_RANGES,
    LIMIT_ENV,
    LIMIT_KEYS,
    ConfigError,
    parse_bool,
    parse_setting,
    parse_uint,
    read_limits_file,
    serve_config,
)


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    # Hypothesis reuses one function across examples, so a module-wide file, not tmp_path.
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder) / "gigastt.toml"


def _check_limits_file(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    try:
        values = read_limits_file(path)
    except ConfigError:
        return
    assert set(values) <= set(LIMIT_KEYS)
    for key, value in values.items():
        low, high = INT_RANGES[key]
        assert type(value) is int and low <= value <= high


_numbers = st.one_of(
    st.integers(), st.integers(min_value=-(10**500), max_value=10**500),
    st.just("9" * 5000), st.floats(allow_nan=True).map(repr), st.booleans().map(str).map(str.lower),
    st.text(max_size=5).map(lambda s: '"' + s.replace('"', "") + '"'),
    st.integers(1, 2000).map(lambda n: "[" * n + "1" + "]" * n),
    st.integers(1, 2000).map(lambda n: "{a=" * n + "1" + "}" * n),
)
_lines = st.one_of(
    st.tuples(st.sampled_from(LIMIT_KEYS), _numbers).map(lambda kv: f"{kv[0]} = {kv[1]}"),
    st.text(max_size=40),
)
toml_like = st.lists(_lines, max_size=8).map("\n".join)


@given(toml_like)
def test_limits_file_from_toml_like_text(scratch: Path, text: str) -> None:
    _check_limits_file(scratch, text.encode("utf-8", "surrogatepass"))


@given(st.binary(max_size=512))
def test_limits_file_from_random_bytes(scratch: Path, data: bytes) -> None:
    _check_limits_file(scratch, data)


_env_values = st.one_of(st.text(max_size=30), st.integers(-5, 10**25).map(str),
                        st.just("9" * 5000), st.just(" 0010 "), st.just("١٢"))


@given(st.sampled_from(sorted(INT_RANGES)), _env_values)
def test_integer_settings_parse_within_range_or_raise_config_error(key: str, text: str) -> None:
    try:
        value = parse_setting(key, "GIGASTT_X", text)
    except ConfigError as exc:
        assert "GIGASTT_X" in str(exc)
        return
    low, high = INT_RANGES[key]
    assert type(value) is int and low <= value <= high
    assert value == parse_uint("GIGASTT_X", text)


@given(_env_values)
def test_parse_bool_is_a_bool_or_config_error(text: str) -> None:
    with contextlib.suppress(ConfigError):
        assert parse_bool("GIGASTT_X", text) in (True, False)


@given(st.dictionaries(st.sampled_from([*LIMIT_ENV.values(), "GIGASTT_METRICS",
                                        "GIGASTT_MAX_CONNECTIONS", "GIGASTT_WS_PING_SECS",
                                        "GIGASTT_HEADER_TIMEOUT_SECS", "GIGASTT_MODEL_URL"]),
                       _env_values, max_size=4))
def test_serve_environment_is_a_config_or_config_error(env: dict[str, str]) -> None:
    args = build_parser().parse_args(["serve"])
    try:
        config = serve_config(args, env)
    except ConfigError:
        return
    for key in LIMIT_KEYS:
        low, high = INT_RANGES[key]
        # The documented clamps may only raise a value to 1 or lower rpm to 60000.
        assert max(low, 0) <= getattr(config.limits, key) <= high
