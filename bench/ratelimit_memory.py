"""Rate-limiter memory: server RSS before and after requests from many distinct forged client IPs.

The bucket table is capped at 100 000 entries (oldest evicted first), so RSS must plateau.
"""

from __future__ import annotations

import ipaddress
import socket
import time

from common import (
    Server,
    arg_parser,
    fmt,
    machine_info,
    machine_line,
    markdown_table,
    model_dir,
    proc_status,
    write_json,
)

BATCH = 500  # pipelined requests per write


def _requests(start: int, count: int) -> bytes:
    base = int(ipaddress.IPv4Address("100.64.0.0"))
    return b"".join(
        f"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: "
        f"{ipaddress.IPv4Address(base + start + i)}\r\n\r\n".encode()
        for i in range(count))


def _send(host: str, port: int, total: int, offset: int) -> float:
    """Pipelined GETs, each from a distinct forged IP; returns the time taken."""
    started = time.perf_counter()
    with socket.create_connection((host, port)) as sock:
        sock.settimeout(60)
        for start in range(0, total, BATCH):
            n = min(BATCH, total - start)
            sock.sendall(_requests(offset + start, n))
            seen = 0
            data = b""
            while seen < n:
                chunk = sock.recv(1 << 20)
                if not chunk:
                    raise RuntimeError("server closed the connection")
                data += chunk
                seen = data.count(b"HTTP/1.1 ")
    return time.perf_counter() - started


def main() -> None:
    parser = arg_parser(__doc__ or "")
    parser.add_argument("--ips", type=int, default=200_000)
    args = parser.parse_args()
    total = 20_000 if args.quick else args.ips
    rows = []
    with Server(model_dir(args.model), "--rate-limit-per-minute", "60000",
                "--rate-limit-burst", "10") as server:
        _send(server.host, server.port, 1000, 10_000_000)  # warm up allocator and caches
        before = proc_status(server.pid)
        rows.append(["before", "0", fmt(before.get("VmRSS")), fmt(before.get("VmHWM")), "-"])
        done = 0
        for step in (total // 4, total // 4, total // 4, total - 3 * (total // 4)):
            took = _send(server.host, server.port, step, done)
            done += step
            now = proc_status(server.pid)
            rows.append([f"after {done}", str(done), fmt(now.get("VmRSS")),
                         fmt(now.get("VmHWM")), fmt(step / took, 0)])
    print(machine_line(machine_info()))
    print(markdown_table(["point", "distinct IPs", "RSS MiB", "peak RSS MiB", "req/s"], rows))
    write_json(args.json, {"rows": rows, "machine": machine_info()})


if __name__ == "__main__":
    main()
