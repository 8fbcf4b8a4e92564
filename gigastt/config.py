"""Every setting in one place: defaults, flags, environment variables, config file, validation.

Precedence is built-in default < ``--config`` file < environment < command-line flag (decision D12).
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
import tomllib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9876
MAX_RPM = 60_000


def default_model_dir() -> Path:
    home = os.environ.get("HOME")
    return Path(home) / ".gigastt" / "models" if home else Path(".gigastt") / "models"


class ConfigError(ValueError):
    """A setting is invalid; the message names it. Usage errors exit 2, file errors exit 1."""


@dataclass(frozen=True, slots=True)
class Limits:
    """The runtime limits that a ``--config`` file may set and SIGHUP reloads."""

    idle_timeout_secs: int = 300
    ws_frame_max_bytes: int = 524_288
    body_limit_bytes: int = 52_428_800
    rate_limit_per_minute: int = 0
    rate_limit_burst: int = 10
    max_session_secs: int = 3600
    shutdown_drain_secs: int = 10
    pool_checkout_timeout_secs: int = 30

    def clamped(self) -> Limits:
        """Apply the documented clamps (drain and checkout at least 1 s, rpm at most 60000)."""
        return dataclasses.replace(
            self,
            shutdown_drain_secs=max(1, self.shutdown_drain_secs),
            pool_checkout_timeout_secs=max(1, self.pool_checkout_timeout_secs),
            rate_limit_per_minute=min(MAX_RPM, self.rate_limit_per_minute),
        )

    def validate(self) -> None:
        if self.rate_limit_per_minute > 0 and self.rate_limit_burst == 0:
            raise ConfigError(
                "--rate-limit-burst must be > 0 when --rate-limit-per-minute is enabled"
            )


LIMIT_KEYS = tuple(f.name for f in dataclasses.fields(Limits))
LIMIT_ENV = {key: "GIGASTT_" + key.upper() for key in LIMIT_KEYS}


@dataclass(frozen=True, slots=True)
class ServeConfig:
    """Everything ``gigastt serve`` needs; built once at start-up (limits may be reloaded)."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    model_dir: Path = field(default_factory=default_model_dir)
    pool_size: int = 4
    bind_all: bool = False
    allow_origins: tuple[str, ...] = ()
    cors_allow_any: bool = False
    metrics: bool = False
    skip_quantize: bool = False
    trust_proxy: bool = False
    config_path: Path | None = None
    # Mirror for the model files (flag --model-url, env GIGASTT_MODEL_URL); None = Hugging Face.
    model_url: str | None = None
    max_connections: int = 256
    header_timeout_secs: float = 10.0
    keepalive_timeout_secs: float = 75.0
    ws_ping_secs: int = 20
    threads: int = 0
    limits: Limits = field(default_factory=Limits)
    # Names of limits fixed by env or flag at start-up: a reload never overrides them (D12).
    pinned: frozenset[str] = frozenset()


# --- boolean and integer parsing -------------------------------------------------------------

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_bool(name: str, value: str) -> bool:
    """Decision D6: 1/0, true/false, yes/no, on/off, case-insensitive."""
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigError(f"invalid boolean {value!r} for {name} (use 1/0, true/false, yes/no, on/off)")


def parse_uint(name: str, value: str, *, bits: int = 64) -> int:
    text = value.strip()
    if not text.isdigit() or not text.isascii():
        raise ConfigError(f"invalid value {value!r} for {name}: expected a non-negative integer")
    number = int(text)
    if number >= 1 << bits:
        raise ConfigError(f"value {value!r} for {name} is out of range")
    return number


def parse_model_url(name: str, value: str) -> str:
    """A model mirror base URL: ``http(s)://host[/path]``; files are fetched as ``<url>/<file>``."""
    text = value.strip()
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"invalid URL {value!r} for {name}: expected http(s)://host/path")
    return text


# --- bind guard ---------------------------------------------------------------------------------


def is_loopback_host(host: str) -> bool:
    """Loopback test of server.md §1.3: ``localhost``, ``::1``, ``[::1]``, 127.0.0.0/8."""
    text = host.strip().lower()
    if text in ("localhost", "::1"):
        return True
    try:
        address = ipaddress.ip_address(text.removeprefix("[").removesuffix("]"))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address):
        return address == ipaddress.IPv6Address("::1")
    return address.is_loopback


def bind_allowed(host: str, bind_all: bool, env: Mapping[str, str]) -> bool:
    if is_loopback_host(host) or bind_all:
        return True
    return env.get("GIGASTT_ALLOW_BIND_ANY", "").strip() in ("1", "true", "TRUE", "yes", "YES")


def bind_refusal(host: str) -> str:
    return (
        f"refusing to bind to '{host}': non-loopback addresses require `--bind-all`"
        " (or env GIGASTT_ALLOW_BIND_ANY=1) to prevent accidental public exposure of local"
        " transcription"
    )


def listen_host(host: str) -> str:
    """The address to bind: brackets dropped, ``localhost`` resolved to 127.0.0.1 (decision D5)."""
    text = host.strip()
    if text.lower() == "localhost":
        return "127.0.0.1"
    return text.removeprefix("[").removesuffix("]")


# --- config file ----------------------------------------------------------------------------------


def read_limits_file(path: Path) -> dict[str, int]:
    """The integer limit keys set in a TOML file; unknown keys ignored, wrong types rejected."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"Failed to read config file: {path}: {exc.strerror}") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"Failed to parse config file: {path}: {exc}") from exc
    values: dict[str, int] = {}
    for key in LIMIT_KEYS:
        if key not in data:
            continue
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(
                f"Failed to parse config file: {path}: {key} must be a non-negative integer"
            )
        values[key] = value
    return values


def merged_limits(
    file_values: Mapping[str, int], overrides: Mapping[str, int]
) -> Limits:
    """Defaults < file < overrides (the env and flag values given at start-up)."""
    return Limits(**{**file_values, **overrides}).clamped()


def reload_limits(config: ServeConfig, overrides: Mapping[str, int]) -> Limits:
    """Limits after SIGHUP: the file re-read, start-up overrides kept on top (D12)."""
    if config.config_path is None:
        raise ConfigError("no config file specified")
    limits = merged_limits(read_limits_file(config.config_path), overrides)
    limits.validate()
    return limits


# --- serve arguments --------------------------------------------------------------------------

_SERVE_ENV_BOOLS = {
    "metrics": "GIGASTT_METRICS",
    "skip_quantize": "GIGASTT_SKIP_QUANTIZE",
    "trust_proxy": "GIGASTT_TRUST_PROXY",
}
_SERVE_ENV_INTS = {**LIMIT_ENV, "max_connections": "GIGASTT_MAX_CONNECTIONS",
                   "ws_ping_secs": "GIGASTT_WS_PING_SECS",
                   "header_timeout_secs": "GIGASTT_HEADER_TIMEOUT_SECS"}


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``gigastt serve``; unset flags stay ``None`` so env and file can fill them."""
    d = ServeConfig()
    lim = Limits()
    uint = _argparse_uint
    parser.add_argument("-p", "--port", type=_argparse_port, default=None,
                        help=f"TCP port (default {d.port}; 0 = any free port)")
    parser.add_argument("--host", default=None, help=f"bind address (default {d.host})")
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="model directory (default ~/.gigastt/models)")
    parser.add_argument("--pool-size", type=uint, default=None,
                        help=f"concurrent inference sessions/jobs (default {d.pool_size})")
    parser.add_argument("--bind-all", action="store_true", default=None,
                        help="allow a non-loopback --host (also env GIGASTT_ALLOW_BIND_ANY=1)")
    parser.add_argument("--allow-origin", action="append", default=None, metavar="URL",
                        help="extra allowed browser Origin (repeatable; `null` must be listed "
                        "to be allowed)")
    parser.add_argument("--cors-allow-any", action="store_true", default=None,
                        help="allow every Origin (access-control-allow-origin: *)")
    for key in LIMIT_KEYS:
        parser.add_argument("--" + key.replace("_", "-"), type=uint, default=None,
                            help=f"(env {LIMIT_ENV[key]}, default {getattr(lim, key)})")
    parser.add_argument("--metrics", action="store_true", default=None,
                        help="serve Prometheus metrics on /metrics (env GIGASTT_METRICS)")
    parser.add_argument("--skip-quantize", action="store_true", default=None,
                        help="do not create the INT8 encoder (env GIGASTT_SKIP_QUANTIZE)")
    parser.add_argument("--model-url", type=argparse_model_url, default=None, metavar="URL",
                        help="download missing model files from this mirror instead of Hugging"
                             " Face (env GIGASTT_MODEL_URL)")
    parser.add_argument("--trust-proxy", action="store_true", default=None,
                        help="also trust forwarding headers from RFC 1918/ULA peers"
                             " (env GIGASTT_TRUST_PROXY)")
    parser.add_argument("--max-connections", type=uint, default=None,
                        help=f"open TCP connections cap (env GIGASTT_MAX_CONNECTIONS,"
                             f" default {d.max_connections})")
    parser.add_argument("--header-timeout-secs", type=uint, default=None,
                        help=f"request head deadline (env GIGASTT_HEADER_TIMEOUT_SECS,"
                             f" default {int(d.header_timeout_secs)})")
    parser.add_argument("--ws-ping-secs", type=uint, default=None,
                        help=f"WebSocket keep-alive ping interval, 0 = off"
                             f" (env GIGASTT_WS_PING_SECS, default {d.ws_ping_secs})")
    parser.add_argument("--threads", type=uint, default=None,
                        help="onnxruntime intra-op threads (default 0 = one per core)")
    parser.add_argument("--config", type=Path, default=None, dest="config_path",
                        help="TOML file with runtime limits, re-read on SIGHUP")


def _argparse_uint(value: str) -> int:
    try:
        return parse_uint("value", value)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def argparse_model_url(value: str) -> str:
    try:
        return parse_model_url("--model-url", value)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _argparse_port(value: str) -> int:
    number = _argparse_uint(value)
    if number > 65535:
        raise argparse.ArgumentTypeError(f"port {value} is out of range 0..65535")
    return number


def serve_config(args: argparse.Namespace, env: Mapping[str, str]) -> ServeConfig:
    """Combine flags, environment and defaults; raises ConfigError (a usage error).

    The config file is applied separately (``with_config_file``) because its errors are runtime
    errors (exit 1), not usage errors.
    """
    values: dict[str, Any] = {}
    for name, var in _SERVE_ENV_BOOLS.items():
        if var in env:
            values[name] = parse_bool(var, env[var])
    ints: dict[str, int] = {}
    for name, var in _SERVE_ENV_INTS.items():
        if var in env:
            ints[name] = parse_uint(var, env[var])
    for name in (*LIMIT_KEYS, "max_connections", "ws_ping_secs", "header_timeout_secs"):
        flag = getattr(args, name, None)
        if flag is not None:
            ints[name] = flag
    if env.get("GIGASTT_MODEL_URL", "").strip():
        values["model_url"] = parse_model_url("GIGASTT_MODEL_URL", env["GIGASTT_MODEL_URL"])
    for name in ("host", "port", "model_dir", "pool_size", "bind_all", "cors_allow_any",
                 "metrics", "skip_quantize", "trust_proxy", "config_path", "threads",
                 "model_url"):
        flag = getattr(args, name, None)
        if flag is not None:
            values[name] = flag
    if args.allow_origin:
        values["allow_origins"] = tuple(args.allow_origin)
    if values.get("pool_size", 1) == 0:
        raise ConfigError("--pool-size must be at least 1")
    overrides = {k: v for k, v in ints.items() if k in LIMIT_KEYS}
    for name in ("max_connections", "ws_ping_secs"):
        if name in ints:
            values[name] = ints[name]
    if "header_timeout_secs" in ints:
        values["header_timeout_secs"] = float(max(1, ints["header_timeout_secs"]))
    if values.get("max_connections", 1) == 0:
        raise ConfigError("--max-connections must be at least 1")
    return ServeConfig(
        **values, limits=merged_limits({}, overrides), pinned=frozenset(overrides)
    )


def with_config_file(config: ServeConfig) -> ServeConfig:
    """Apply the ``--config`` file under the start-up overrides and validate the result."""
    overrides = {k: getattr(config.limits, k) for k in config.pinned}
    if config.config_path is None:
        limits = merged_limits({}, overrides)
    else:
        limits = merged_limits(read_limits_file(config.config_path), overrides)
    limits.validate()
    return dataclasses.replace(config, limits=limits)


def startup_overrides(config: ServeConfig) -> dict[str, int]:
    return {k: getattr(config.limits, k) for k in config.pinned}

