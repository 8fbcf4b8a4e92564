"""Metrics exposition tests: the byte layout of docs/api.md "GET /metrics", the first scrape,
parser acceptance.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from gigastt.server.metrics import (
    BUCKETS,
    Counter,
    Gauge,
    Histogram,
    Metric,
    ServerMetrics,
    format_value,
    render,
)

FIRST_SCRAPE = """\
# HELP gigastt_http_requests_total Total HTTP requests processed
# TYPE gigastt_http_requests_total counter

# HELP gigastt_live_audio_seconds_total Seconds of live audio received
# TYPE gigastt_live_audio_seconds_total counter
gigastt_live_audio_seconds_total 0

# HELP gigastt_live_encoded_seconds_total Seconds of audio passed to the encoder by live passes
# TYPE gigastt_live_encoded_seconds_total counter
gigastt_live_encoded_seconds_total 0

# HELP gigastt_pool_timeouts_total Total pool checkout timeouts
# TYPE gigastt_pool_timeouts_total counter

# HELP gigastt_rate_limit_rejections_total Total requests rejected by rate limiter
# TYPE gigastt_rate_limit_rejections_total counter

# HELP gigastt_vad_audio_seconds_total Seconds of audio passed through the VAD
# TYPE gigastt_vad_audio_seconds_total counter

# HELP gigastt_vad_speech_seconds_total Seconds of audio the VAD found to be speech
# TYPE gigastt_vad_speech_seconds_total counter

# HELP gigastt_pool_available Number of session triplets currently available in the pool
# TYPE gigastt_pool_available gauge
gigastt_pool_available 4

# HELP gigastt_pool_utilisation Fraction of the pool's slots in use (0 to 1)
# TYPE gigastt_pool_utilisation gauge
gigastt_pool_utilisation 0

# HELP gigastt_pool_waiters Number of tasks currently waiting for a pool checkout
# TYPE gigastt_pool_waiters gauge
gigastt_pool_waiters 0

# HELP gigastt_ws_active_connections Number of active WebSocket connections
# TYPE gigastt_ws_active_connections gauge
gigastt_ws_active_connections 0

# HELP gigastt_ws_lag_max_seconds Largest lag of the live sessions open now
# TYPE gigastt_ws_lag_max_seconds gauge
gigastt_ws_lag_max_seconds 0

# HELP gigastt_http_request_duration_seconds HTTP request duration in seconds
# TYPE gigastt_http_request_duration_seconds histogram

# HELP gigastt_inference_duration_seconds Inference duration in seconds
# TYPE gigastt_inference_duration_seconds histogram

# HELP gigastt_pool_checkout_duration_seconds Time spent waiting for a pool checkout
# TYPE gigastt_pool_checkout_duration_seconds histogram

# HELP gigastt_ws_lag_seconds Live audio received but not yet recognised, at each pass start
# TYPE gigastt_ws_lag_seconds histogram

"""


def test_first_scrape_byte_for_byte() -> None:
    # Unlike the reference, every gauge has a sample from the start (a live value, not the
    # last one some request happened to set).
    metrics = ServerMetrics()
    metrics.set_pool(4, 0)
    assert metrics.render() == FIRST_SCRAPE
    assert ServerMetrics(pool_size=4).render() == FIRST_SCRAPE


def test_empty_registry_is_empty_string() -> None:
    assert render([]) == ""


def test_m7_counter_labels_sorted_by_key() -> None:
    c = Counter("name", "help", ("status", "method", "path"))
    for _ in range(3):
        c.inc({"status": "200", "path": "/health", "method": "GET"})
    assert render([c]) == (
        "# HELP name help\n# TYPE name counter\n"
        'name{method="GET",path="/health",status="200"} 3\n\n'
    )


def test_m7_escaping() -> None:
    c = Counter("esc", "h", ("path",))
    c.inc({"path": 'a"b\\c\nd'})
    assert 'esc{path="a\\"b\\\\c\\nd"} 1\n' in render([c])


def test_samples_sorted_by_label_set() -> None:
    c = Counter("c", "h", ("method", "path"))
    for method, path in [("POST", "/a"), ("GET", "/z"), ("GET", "/b"), ("DELETE", "/z")]:
        c.inc({"method": method, "path": path})
    lines = [line for line in render([c]).splitlines() if line.startswith("c{")]
    assert lines == [
        'c{method="DELETE",path="/z"} 1',
        'c{method="GET",path="/b"} 1',
        'c{method="GET",path="/z"} 1',
        'c{method="POST",path="/a"} 1',
    ]


def test_label_names_are_checked() -> None:
    c = Counter("c", "h", ("method",))
    with pytest.raises(ValueError):
        c.inc({"path": "/"})
    with pytest.raises(ValueError):
        c.inc()
    with pytest.raises(ValueError):
        c.inc({"method": "GET"}, -1)


def test_m7_histogram() -> None:
    h2 = Histogram("h2", "x")
    for value in (0.004, 0.04, 0.46, 4.0):
        h2.observe(value)
    text = render([h2])
    assert text == (
        "# HELP h2 x\n# TYPE h2 histogram\n"
        'h2_bucket{le="0.005"} 1\n'
        'h2_bucket{le="0.01"} 1\n'
        'h2_bucket{le="0.025"} 1\n'
        'h2_bucket{le="0.05"} 2\n'
        'h2_bucket{le="0.1"} 2\n'
        'h2_bucket{le="0.25"} 2\n'
        'h2_bucket{le="0.5"} 3\n'
        'h2_bucket{le="1"} 3\n'
        'h2_bucket{le="2.5"} 3\n'
        'h2_bucket{le="5"} 4\n'
        'h2_bucket{le="10"} 4\n'
        'h2_bucket{le="+Inf"} 4\n'
        "h2_sum 4.504\n"
        "h2_count 4\n\n"
    )
    h3 = Histogram("h3", "x")
    for value in (0.5, 1.5, 2.5):
        h3.observe(value)
    assert "h3_sum 4.5\n" in render([h3])
    assert h3.count() == 3


def test_histogram_bound_is_inclusive_and_overflow_goes_to_inf() -> None:
    h = Histogram("h", "x")
    h.observe(0.005)
    h.observe(10)
    h.observe(11)
    text = render([h])
    assert 'h_bucket{le="0.005"} 1\n' in text
    assert 'h_bucket{le="10"} 2\n' in text
    assert 'h_bucket{le="+Inf"} 3\n' in text
    assert "h_sum 21.005000000000003\nh_count 3\n" in text  # float addition, shown exactly


def test_labelled_histogram() -> None:
    h = Histogram("d", "x", ("method", "path"))
    h.observe(0.001, {"path": "/v1/models", "method": "GET"})
    text = render([h])
    assert 'd_bucket{method="GET",path="/v1/models",le="0.005"} 1\n' in text
    assert 'd_sum{method="GET",path="/v1/models"} 0.001\n' in text
    assert 'd_count{method="GET",path="/v1/models"} 1\n' in text


def test_family_order_is_kind_then_name() -> None:
    fams: list[Metric] = [
        Histogram("a_h", "x"),
        Gauge("b_g", "x"),
        Counter("z_c", "x"),
        Counter("a_c", "x"),
    ]
    names = [line.split()[2] for line in render(fams).splitlines() if line.startswith("# TYPE")]
    assert names == ["a_c", "z_c", "b_g", "a_h"]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1.0, "1"),
        (2.5, "2.5"),
        (10.0, "10"),
        (0.005, "0.005"),
        (0.0000001, "0.0000001"),
        (1.5e-7, "0.00000015"),
        (0.0, "0"),
        (-0.0, "-0"),
        (4.5, "4.5"),
        (1e16, "10000000000000000"),
        (1.2345e20, "123450000000000000000"),
        (0.1 + 0.2, "0.30000000000000004"),
        (float("inf"), "+Inf"),
        (float("nan"), "NaN"),
    ],
)
def test_format_value(value: float, text: str) -> None:
    assert format_value(value) == text


def test_buckets() -> None:
    assert BUCKETS == (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def busy_server_metrics() -> ServerMetrics:
    m = ServerMetrics()
    m.observe_request("GET", "/v1/models", 200, 0.002)
    m.observe_request("GET", "/v1/models", 200, 0.003)
    m.observe_request("POST", "/v1/transcribe", 503, 30.0)
    m.observe_request("GET", "other", 404, 0.0001)
    m.set_pool(3, 2)
    m.observe_checkout(0.2)
    m.pool_timeout()
    m.ws_opened()
    m.ws_opened()
    m.ws_closed()
    m.observe_inference(1.25)
    m.rate_limited()
    m.live_audio_received(1.5)
    m.live_pass_started(1.0, 0.6)
    m.vad_seen("transcribe", 600.0, 180.5)
    return m


def test_server_metrics_convenience_methods() -> None:
    m = busy_server_metrics()
    text = m.render()
    assert 'gigastt_http_requests_total{method="GET",path="/v1/models",status="200"} 2\n' in text
    assert 'gigastt_http_requests_total{method="GET",path="other",status="404"} 1\n' in text
    assert (
        'gigastt_http_request_duration_seconds_bucket{method="GET",path="/v1/models",le="0.005"} 2'
    ) in text
    assert (
        'gigastt_http_request_duration_seconds_bucket{method="POST",path="/v1/transcribe",'
        'le="10"} 0\n'
    ) in text
    assert "gigastt_pool_available 3\n" in text
    assert "gigastt_pool_waiters 2\n" in text
    assert "gigastt_pool_timeouts_total 1\n" in text
    assert "gigastt_ws_active_connections 1\n" in text
    assert "gigastt_rate_limit_rejections_total 1\n" in text
    assert 'gigastt_inference_duration_seconds_bucket{le="2.5"} 1\n' in text
    assert "gigastt_inference_duration_seconds_sum 1.25\n" in text
    assert "gigastt_pool_checkout_duration_seconds_count 1\n" in text
    assert text.endswith("\n\n")


def test_prometheus_client_parser_accepts_output() -> None:
    parser = pytest.importorskip("prometheus_client.parser")
    m = busy_server_metrics()
    esc = Counter("gigastt_escape_total", "Escapes", ("path",))
    esc.inc({"path": 'we"ird\\pa\nth'})
    families = {
        f.name: f for f in parser.text_string_to_metric_families(render([*m.families, esc]))
    }
    # prometheus_client drops the _total suffix from counter family names.
    assert set(families) == {
        "gigastt_http_requests",
        "gigastt_http_request_duration_seconds",
        "gigastt_pool_available",
        "gigastt_pool_waiters",
        "gigastt_pool_checkout_duration_seconds",
        "gigastt_pool_timeouts",
        "gigastt_ws_active_connections",
        "gigastt_inference_duration_seconds",
        "gigastt_rate_limit_rejections",
        "gigastt_pool_utilisation",
        "gigastt_ws_lag_seconds",
        "gigastt_ws_lag_max_seconds",
        "gigastt_live_audio_seconds",
        "gigastt_live_encoded_seconds",
        "gigastt_vad_audio_seconds",
        "gigastt_vad_speech_seconds",
        "gigastt_escape",
    }
    for family in families.values():
        assert family.samples, family.name
    requests = families["gigastt_http_requests"]
    assert requests.type == "counter"
    assert requests.documentation == "Total HTTP requests processed"
    sample = next(s for s in requests.samples if s.labels["path"] == "/v1/models")
    assert sample.value == 2 and sample.labels == {
        "method": "GET",
        "path": "/v1/models",
        "status": "200",
    }
    assert families["gigastt_escape"].samples[0].labels == {"path": 'we"ird\\pa\nth'}
    hist = families["gigastt_inference_duration_seconds"]
    assert hist.type == "histogram"
    inf = next(s for s in hist.samples if s.labels.get("le") == "+Inf")
    assert inf.value == 1
    # The first-scrape document (families without samples) parses too.
    assert len(list(parser.text_string_to_metric_families(FIRST_SCRAPE))) == 16


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not on PATH")
def test_promtool_check_metrics() -> None:
    for text in (busy_server_metrics().render(), FIRST_SCRAPE):
        result = subprocess.run(
            ["promtool", "check", "metrics"],
            input=text,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_label_values_come_from_fixed_sets() -> None:
    m = ServerMetrics()
    for method in ("GET", "get", "BREW", "X" * 10_000, "DELETE", "POST"):
        for status in (200, 404, 599, 299, 101):
            m.observe_request(method, "other", status, 0.001)
    text = m.render()
    series = [line for line in text.splitlines() if line.startswith("gigastt_http_requests_total{")]
    assert len(series) == 3 * 4  # methods GET, POST, other; statuses 101, 200, 404, other
    assert 'gigastt_http_requests_total{method="other",path="other",status="other"} 8\n' in text
    assert 'gigastt_http_requests_total{method="GET",path="other",status="404"} 1\n' in text
    assert "BREW" not in text and "599" not in text


class _Lagging:
    def __init__(self, lag: float) -> None:
        self.lag = lag

    def lag_seconds(self) -> float:
        return self.lag


def test_live_metrics_have_no_per_session_labels_and_read_the_lag_at_scrape_time() -> None:
    m = ServerMetrics(pool_size=4)
    sessions = [_Lagging(0.5), _Lagging(2.25), _Lagging(1.0)]
    m.live_sessions.update(sessions)
    m.live_audio_received(0.1)
    m.live_audio_received(0.2)
    m.live_pass_started(0.3, 0.3)
    m.live_pass_started(0.75, 2.5)
    m.set_pool(1, 0)
    text = m.render()
    assert "gigastt_ws_lag_max_seconds 2.25\n" in text
    assert "gigastt_pool_utilisation 0.75\n" in text
    assert "gigastt_live_audio_seconds_total 0.30000000000000004\n" in text
    assert "gigastt_live_encoded_seconds_total 1.05\n" in text
    assert 'gigastt_ws_lag_seconds_bucket{le="0.5"} 1\n' in text
    assert 'gigastt_ws_lag_seconds_bucket{le="3"} 2\n' in text
    assert "gigastt_ws_lag_seconds_count 2\n" in text
    sessions[1].lag = 0.0
    m.live_sessions.discard(sessions[0])
    assert "gigastt_ws_lag_max_seconds 1\n" in m.render()
    m.live_sessions.clear()
    assert "gigastt_ws_lag_max_seconds 0\n" in m.render()
    # One series per family whatever the number of sessions (D43).
    assert not [line for line in m.render().splitlines()
                if line.startswith(("gigastt_ws_lag", "gigastt_live_")) and "{" in line
                and "le=" not in line]
