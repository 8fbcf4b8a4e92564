"""Prometheus text exposition: counters, gauges and histograms, rendered byte for byte.

Pure bookkeeping; the server decides when to observe and passes durations in
(docs/api.md "GET /metrics"; D11 in docs/decisions.md).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol, TypeAlias

import numpy as np
import numpy.typing as npt

from gigastt.config import VAD_THRESHOLD

__all__ = [
    "BUCKETS",
    "METHOD_LABELS",
    "STATUS_LABELS",
    "Counter",
    "Gauge",
    "Histogram",
    "Metric",
    "ServerMetrics",
    "format_value",
    "render",
]

BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# A live session's lag is at least one partial interval (0.5 s) even when idle.
LAG_BUCKETS: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 60.0)

LabelSet: TypeAlias = tuple[tuple[str, str], ...]

# Label values come from fixed sets, never from the client: any token is a valid HTTP method,
# so a label per method would let every request mint a series (docs/api.md, /metrics). Anything
# outside a set is counted as "other".
METHOD_LABELS = frozenset({"GET", "HEAD", "POST", "OPTIONS"})
STATUS_LABELS = frozenset({101, 200, 204, 400, 401, 403, 404, 405, 408, 413, 415, 422, 426, 429,
                           431, 500, 503})


def format_value(x: float) -> str:
    """Shortest round-trip decimal, positional only, no ``.0`` on whole numbers (Rust Display)."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    sign = "-" if math.copysign(1.0, x) < 0 else ""
    mantissa, _, exp = repr(abs(x)).partition("e")
    whole, _, frac = mantissa.partition(".")
    digits = whole + frac
    point = len(whole) + (int(exp) if exp else 0)  # digits[:point] is the integer part
    if point <= 0:
        text = "0." + "0" * -point + digits
    elif point >= len(digits):
        text = digits + "0" * (point - len(digits))
    else:
        text = digits[:point] + "." + digits[point:]
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    int_part, dot, rest = text.partition(".")
    return sign + (int_part.lstrip("0") or "0") + dot + rest


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: LabelSet, extra: str = "") -> str:
    parts = [f'{key}="{_escape(value)}"' for key, value in labels]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Family:
    kind = ""

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)

    def _key(self, labels: Mapping[str, str] | None) -> LabelSet:
        given = dict(labels or {})
        if set(given) != set(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {tuple(given)}")
        # Sorted by key, so the sample order of docs/api.md is plain tuple order.
        return tuple(sorted(given.items()))

    def samples(self) -> list[str]:
        raise NotImplementedError


class _Scalar(_Family):
    """A number per label set (whole numbers render without ``.0``); none until first touched."""

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help, labelnames)
        self._values: dict[LabelSet, float] = {}

    def value(self, labels: Mapping[str, str] | None = None) -> float:
        return self._values.get(self._key(labels), 0)

    def _add(self, labels: Mapping[str, str] | None, amount: float) -> None:
        key = self._key(labels)
        self._values[key] = self._values.get(key, 0) + amount

    def samples(self) -> list[str]:
        return [f"{self.name}{_labels(k)} {format_value(v)}"
                for k, v in sorted(self._values.items())]


class Counter(_Scalar):
    """A monotonically increasing number."""

    kind = "counter"

    def inc(self, labels: Mapping[str, str] | None = None, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        self._add(labels, amount)


class Gauge(_Scalar):
    """A number that may go up and down."""

    kind = "gauge"

    def set(self, value: float, labels: Mapping[str, str] | None = None) -> None:
        self._values[self._key(labels)] = value

    def inc(self, labels: Mapping[str, str] | None = None, amount: float = 1) -> None:
        self._add(labels, amount)

    def dec(self, labels: Mapping[str, str] | None = None, amount: float = 1) -> None:
        self._add(labels, -amount)


class Histogram(_Family):
    """Observations counted into fixed cumulative buckets, plus their sum and count."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        help: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = BUCKETS,
    ) -> None:
        super().__init__(name, help, labelnames)
        self.buckets = tuple(sorted(buckets))
        # Per label set: per-bucket (non-cumulative) counts with +Inf last, then the sum.
        self._series: dict[LabelSet, tuple[list[int], list[float]]] = {}

    def observe(self, value: float, labels: Mapping[str, str] | None = None) -> None:
        key = self._key(labels)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = ([0] * (len(self.buckets) + 1), [0.0])
        # le is inclusive: a value equal to a bound belongs to that bucket.
        series[0][bisect_left(self.buckets, value)] += 1
        series[1][0] += value

    def count(self, labels: Mapping[str, str] | None = None) -> int:
        series = self._series.get(self._key(labels))
        return sum(series[0]) if series else 0

    def samples(self) -> list[str]:
        lines: list[str] = []
        bounds = [f'le="{format_value(b)}"' for b in self.buckets] + ['le="+Inf"']
        for key, (counts, total) in sorted(self._series.items()):
            running = 0
            for le, n in zip(bounds, counts, strict=True):
                running += n
                lines.append(f"{self.name}_bucket{_labels(key, le)} {running}")
            lines.append(f"{self.name}_sum{_labels(key)} {format_value(total[0])}")
            lines.append(f"{self.name}_count{_labels(key)} {running}")
        return lines


Metric: TypeAlias = Counter | Gauge | Histogram

_KIND_ORDER = {"counter": 0, "gauge": 1, "histogram": 2}


def render(families: Iterable[Metric]) -> str:
    """Counters, then gauges, then histograms, each by name; a blank line after each family."""
    out: list[str] = []
    for fam in sorted(families, key=lambda f: (_KIND_ORDER[f.kind], f.name)):
        out.append(f"# HELP {fam.name} {fam.help}\n# TYPE {fam.name} {fam.kind}\n")
        out.extend(line + "\n" for line in fam.samples())
        out.append("\n")
    return "".join(out)


class LagSource(Protocol):
    """A live session, asked for its lag when ``/metrics`` is scraped."""

    def lag_seconds(self) -> float:
        """Audio received but not yet recognised, in seconds."""
        ...


class ServerMetrics:
    """The gigastt families with their exact HELP texts (docs/api.md "GET /metrics").

    The gauges always have a sample (0 until set); the pool gauges are set from the pool by the
    scrape itself (``set_pool``), and the lag gauge from the live sessions, so they are current
    when rendered. ``pool_size``, if given, seeds ``gigastt_pool_available`` and is the total
    that ``gigastt_pool_utilisation`` divides by. No family has a per-session label (D43).
    """

    def __init__(self, *, pool_size: int | None = None) -> None:
        self.pool_total = pool_size or 0
        self.live_sessions: set[LagSource] = set()
        self.http_requests = Counter(
            "gigastt_http_requests_total",
            "Total HTTP requests processed",
            ("method", "path", "status"),
        )
        self.http_duration = Histogram(
            "gigastt_http_request_duration_seconds",
            "HTTP request duration in seconds",
            ("method", "path"),
        )
        self.pool_available = Gauge(
            "gigastt_pool_available", "Number of session triplets currently available in the pool"
        )
        self.pool_waiters = Gauge(
            "gigastt_pool_waiters", "Number of tasks currently waiting for a pool checkout"
        )
        self.pool_checkout = Histogram(
            "gigastt_pool_checkout_duration_seconds", "Time spent waiting for a pool checkout"
        )
        self.pool_timeouts = Counter("gigastt_pool_timeouts_total", "Total pool checkout timeouts")
        self.ws_active = Gauge(
            "gigastt_ws_active_connections", "Number of active WebSocket connections"
        )
        self.inference = Histogram(
            "gigastt_inference_duration_seconds", "Inference duration in seconds"
        )
        self.rate_limit_rejections = Counter(
            "gigastt_rate_limit_rejections_total", "Total requests rejected by rate limiter"
        )
        self.pool_utilisation = Gauge(
            "gigastt_pool_utilisation", "Fraction of the pool's slots in use (0 to 1)"
        )
        self.ws_lag = Histogram(
            "gigastt_ws_lag_seconds",
            "Live audio received but not yet recognised, at each pass start",
            buckets=LAG_BUCKETS,
        )
        self.ws_lag_max = Gauge(
            "gigastt_ws_lag_max_seconds", "Largest lag of the live sessions open now"
        )
        self.live_audio = Counter(
            "gigastt_live_audio_seconds_total", "Seconds of live audio received"
        )
        self.live_encoded = Counter(
            "gigastt_live_encoded_seconds_total",
            "Seconds of audio passed to the encoder by live passes",
        )
        # D28: per route, seconds of audio and of VAD speech (what the VAD saved).
        self.vad_audio = Counter(
            "gigastt_vad_audio_seconds_total",
            "Seconds of audio passed through the VAD", ("route",),
        )
        self.vad_speech = Counter(
            "gigastt_vad_speech_seconds_total",
            "Seconds of audio the VAD found to be speech", ("route",),
        )
        self.families: tuple[Metric, ...] = (
            self.http_requests,
            self.http_duration,
            self.pool_available,
            self.pool_waiters,
            self.pool_checkout,
            self.pool_timeouts,
            self.ws_active,
            self.inference,
            self.rate_limit_rejections,
            self.pool_utilisation,
            self.ws_lag,
            self.ws_lag_max,
            self.live_audio,
            self.live_encoded,
            self.vad_audio,
            self.vad_speech,
        )
        self.set_pool(pool_size or 0, 0)
        self.ws_active.set(0)
        self.ws_lag_max.set(0)
        # From 0, so that the re-encode factor (their ratio) has both series from the start.
        self.live_audio.inc(amount=0)
        self.live_encoded.inc(amount=0)

    def observe_request(self, method: str, path: str, status: int, seconds: float) -> None:
        """``path`` must already be the route or ``"other"`` (D11: bounded cardinality)."""
        method = method if method in METHOD_LABELS else "other"
        code = str(status) if status in STATUS_LABELS else "other"
        self.http_requests.inc({"method": method, "path": path, "status": code})
        self.http_duration.observe(seconds, {"method": method, "path": path})

    def set_pool(self, available: int, waiters: int) -> None:
        self.pool_available.set(available)
        self.pool_waiters.set(waiters)
        total = self.pool_total
        self.pool_utilisation.set((total - available) / total if total > 0 else 0)

    def observe_checkout(self, seconds: float) -> None:
        self.pool_checkout.observe(seconds)

    def pool_timeout(self) -> None:
        self.pool_timeouts.inc()

    def ws_opened(self) -> None:
        self.ws_active.inc()

    def ws_closed(self) -> None:
        self.ws_active.dec()

    def observe_inference(self, seconds: float) -> None:
        self.inference.observe(seconds)

    def rate_limited(self) -> None:
        self.rate_limit_rejections.inc()

    def live_audio_received(self, seconds: float) -> None:
        self.live_audio.inc(amount=seconds)

    def live_pass_started(self, encoded_seconds: float, lag_seconds: float) -> None:
        """A live pass was submitted: its length feeds the re-encode factor, its lag the
        histogram (encoded / audio seconds, both totals, is the factor)."""
        self.live_encoded.inc(amount=encoded_seconds)
        self.ws_lag.observe(lag_seconds)

    def vad_chunks(self, route: str, probabilities: npt.NDArray[np.float32],
                   chunk_seconds: float) -> None:
        """The VAD judged these chunks of a stream (live or SSE): speech = at the threshold."""
        speech = int(np.count_nonzero(probabilities >= VAD_THRESHOLD))
        self.vad_seen(route, probabilities.shape[0] * chunk_seconds, speech * chunk_seconds)

    def vad_seen(self, route: str, audio_seconds: float, speech_seconds: float) -> None:
        """Audio went through the VAD on ``route`` (a fixed name: transcribe, openai, ws...)."""
        self.vad_audio.inc({"route": route}, amount=audio_seconds)
        self.vad_speech.inc({"route": route}, amount=speech_seconds)

    def render(self) -> str:
        lags = [source.lag_seconds() for source in self.live_sessions]
        self.ws_lag_max.set(max(lags, default=0))
        return render(self.families)
