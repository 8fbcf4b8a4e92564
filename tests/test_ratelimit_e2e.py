"""Per-IP rate limiting against a real server: RL1, forged forwarding headers, untrusted peers (D8).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serverproc import ServerProcess


@pytest.fixture(scope="module")
def limited(small_model: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(small_model, "--rate-limit-per-minute", "30", "--rate-limit-burst", "1",
                         "--metrics")
    yield proc
    assert proc.stop() == 0


def test_rl1_burst_then_429_then_refill(limited: ServerProcess) -> None:
    headers = {"X-Forwarded-For": "198.51.100.1"}
    assert limited.request("GET", "/v1/models", headers=headers).status == 200
    reply = limited.request("GET", "/v1/models", headers=headers)
    # D22: the seconds until the bucket holds a token again (one token per 2 s at 30 rpm).
    assert reply.status == 429 and reply.headers["retry-after"] == "2"
    assert reply.body == b'{"code":"rate_limited","error":"Too many requests"}'
    time.sleep(2.5)
    assert limited.request("GET", "/v1/models", headers=headers).status == 200


def test_health_ready_are_never_limited(limited: ServerProcess) -> None:
    headers = {"X-Forwarded-For": "198.51.100.2"}
    for _ in range(5):
        assert limited.request("GET", "/health", headers=headers).status == 200
        assert limited.request("GET", "/ready", headers=headers).status == 200


def test_forged_clients_behind_a_loopback_proxy_get_separate_buckets(
        limited: ServerProcess) -> None:
    for ip in ("203.0.113.7", "203.0.113.8", "2001:db8::1"):
        assert limited.request("GET", "/v1/models",
                               headers={"X-Forwarded-For": f"{ip}, 10.0.0.1"}).status == 200
    assert limited.request("GET", "/v1/models",
                           headers={"X-Forwarded-For": "203.0.113.7"}).status == 429
    # X-Real-IP is the fallback when X-Forwarded-For is garbage.
    assert limited.request("GET", "/v1/models", headers={
        "X-Forwarded-For": "not-an-ip", "X-Real-IP": "203.0.113.9"}).status == 200
    assert limited.request("GET", "/v1/models", headers={"X-Real-IP": "203.0.113.9"}).status == 429


def test_denied_origin_costs_no_token_and_429_is_counted(limited: ServerProcess) -> None:
    headers = {"X-Forwarded-For": "198.51.100.77", "Origin": "https://evil.example.com"}
    for _ in range(3):
        assert limited.request("GET", "/v1/models", headers=headers).status == 403
    del headers["Origin"]
    assert limited.request("GET", "/v1/models", headers=headers).status == 200
    metrics = limited.request("GET", "/metrics", headers={"X-Forwarded-For": "198.51.100.78"})
    assert b"gigastt_rate_limit_rejections_total " in metrics.body


# --- an untrusted peer, in a network namespace made by the test -----------------------------


def _netns_available() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None


@pytest.fixture(scope="module")
def namespace() -> Iterator[tuple[str, str, str]]:
    """A namespace with a veth pair: (name, host-side address, namespace-side address)."""
    if not _netns_available():
        pytest.skip("needs root and iproute2 for a network namespace")
    name = f"gigastt-t{os.getpid()}"
    host_if, ns_if = f"gh{os.getpid() % 100000}", f"gn{os.getpid() % 100000}"
    host_ip, ns_ip = "10.231.77.1", "10.231.77.2"
    steps = [
        ["ip", "netns", "add", name],
        ["ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if],
        ["ip", "link", "set", ns_if, "netns", name],
        ["ip", "addr", "add", f"{host_ip}/30", "dev", host_if],
        ["ip", "link", "set", host_if, "up"],
        ["ip", "netns", "exec", name, "ip", "addr", "add", f"{ns_ip}/30", "dev", ns_if],
        ["ip", "netns", "exec", name, "ip", "link", "set", ns_if, "up"],
        ["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"],
    ]
    try:
        for step in steps:
            result = subprocess.run(step, capture_output=True, text=True)
            if result.returncode:
                pytest.skip(f"cannot create a network namespace: {result.stderr.strip()}")
        yield name, host_ip, ns_ip
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


CLIENT = """
import http.client, sys
host, port = sys.argv[1], int(sys.argv[2])
for forged in sys.argv[3:]:
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request("GET", "/v1/models", headers={"X-Forwarded-For": forged, "X-Real-IP": forged})
    print(conn.getresponse().status)
    conn.close()
"""


def _from_namespace(ns: str, host: str, port: int, *forged: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", CLIENT, host,
                          str(port), *forged], capture_output=True, text=True, timeout=60,
                         check=True).stdout
    return [int(line) for line in out.split()]


@pytest.mark.parametrize("trust_proxy", [False, True])
def test_untrusted_peer_cannot_choose_its_bucket(small_model: Path,
                                                 namespace: tuple[str, str, str],
                                                 trust_proxy: bool) -> None:
    ns, host_ip, _ = namespace
    flags = ["--bind-all", "--rate-limit-per-minute", "30", "--rate-limit-burst", "1"]
    if trust_proxy:
        flags.append("--trust-proxy")
    proc = ServerProcess(small_model, *flags, host=host_ip)
    try:
        statuses = _from_namespace(ns, host_ip, proc.port, "203.0.113.10", "203.0.113.11",
                                   "203.0.113.12")
        if trust_proxy:
            # --trust-proxy trusts RFC 1918 peers (a proxy in another container): headers count.
            assert statuses == [200, 200, 200]
        else:
            # The peer 10.231.77.2 is not trusted: every forged value lands in its own bucket.
            assert statuses == [200, 429, 429]
    finally:
        assert proc.stop() == 0
