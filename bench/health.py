"""HTTP: ``/health`` throughput of our server vs uvicorn+h11, and ``/health`` latency under load.

    python bench/health.py [--quick] [--model small|medium|full] [--client auto|wrk|python]
                         [--part all|rps|busy] [--json OUT]

Part 1 (rps): ``gigastt serve`` (small generated model; the model plays no part in /health) and
``uvicorn --http h11 --loop asyncio`` serving ``bench/asgi_health.py`` (same JSON body) run side
by side; the same load generator drives each in turn, alternating over ``--rounds`` rounds:
``wrk`` (one thread, keep-alive) when installed, else a small asyncio raw-socket generator
(N connections × sequential keep-alive requests, no pipelining). Medians over the rounds, and
each server's CPU time per request (utime + stime over the run ÷ requests): with the Python
generator the client, not the server, often sets the pace, and the two cores are shared, so req/s
swings from round to round while CPU per request stays put.

Part 2 (busy): our server with ``--model`` (default medium) transcribes four 60 s files at once
(``POST /v1/transcribe``, four threads) while a prober process sends ``GET /health`` on a fresh
connection every 15 ms (``--probe-interval``): p50/p99/max latency while the inference lanes are
busy, next to the idle figures (latency = connect to last body byte, measured by the prober).

Needs ``uvicorn`` (``pip install uvicorn``), a benchmark-only dependency. Benchmarks, not tests.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import common

# ----------------------------------------------------------------------------------------------
# load generators


@dataclass
class Load:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    cpu_us: float = float("nan")  # the server's CPU time per request, filled in by rps_part


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _wrk_ms(text: str, label: str) -> float:
    match = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.MULTILINE)
    return float(match.group(1)) * _UNITS[match.group(2)] if match else float("nan")


def run_wrk(host: str, port: int, connections: int, seconds: float) -> Load:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
           f"http://{host}:{port}/health"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    errors = 0
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if socket_errors:
        errors += sum(int(x) for x in socket_errors.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        errors += int(non2xx.group(1))
    return Load(
        rps=float(rps.group(1)) if rps else float("nan"),
        p50_ms=_wrk_ms(out, "50"),
        p99_ms=_wrk_ms(out, "99"),
        requests=int(total.group(1)) if total else 0,
        errors=errors,
    )


_REQUEST = b"GET /health HTTP/1.1\r\nHost: bench\r\n\r\n"
_LENGTH = re.compile(rb"(?im)^content-length:\s*(\d+)")


async def _connection(host: str, port: int, deadline: float, latencies: list[float],
                      errors: list[int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            writer.write(_REQUEST)
            head = await reader.readuntil(b"\r\n\r\n")
            match = _LENGTH.search(head)
            await reader.readexactly(int(match.group(1)) if match else 0)
            latencies.append(time.perf_counter() - start)
            if not head.startswith(b"HTTP/1.1 200"):
                errors.append(1)
    except (OSError, asyncio.IncompleteReadError):
        errors.append(1)
    finally:
        writer.close()


def run_python(host: str, port: int, connections: int, seconds: float) -> Load:
    """N keep-alive connections, each sending its next request when the last one is answered."""
    latencies: list[float] = []
    errors: list[int] = []

    async def main() -> float:
        start = time.perf_counter()
        deadline = start + seconds
        await asyncio.gather(*(_connection(host, port, deadline, latencies, errors)
                               for _ in range(connections)))
        return time.perf_counter() - start

    elapsed = asyncio.run(main())
    ms = [x * 1e3 for x in latencies]
    return Load(len(latencies) / elapsed, common.percentile(ms, 50), common.percentile(ms, 99),
                len(latencies), len(errors))


# ----------------------------------------------------------------------------------------------
# part 1: requests per second, ours vs uvicorn


class Uvicorn:
    def __init__(self) -> None:
        self.port = common.free_port()
        # bench.asgi_health from the repository root: bench/ itself must not be on uvicorn's path
        cmd = [sys.executable, "-m", "uvicorn", "bench.asgi_health:app",
               "--host", "127.0.0.1", "--port", str(self.port), "--http", "h11",
               "--loop", "asyncio", "--no-access-log", "--no-server-header",
               "--log-level", "warning", "--workers", "1"]
        self.proc = subprocess.Popen(cmd, cwd=common.ROOT, stdout=subprocess.DEVNULL)
        common.wait_port("127.0.0.1", self.port)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def rps_part(args: Any, client: str) -> dict[str, Any]:
    import uvicorn

    run = run_wrk if client == "wrk" else run_python
    rounds = args.rounds or (1 if args.quick else 3)
    seconds = args.seconds or (3.0 if args.quick else 10.0)
    ours = common.Server(common.model_dir("small"))
    theirs = Uvicorn()
    targets = {"gigastt": ("127.0.0.1", ours.port), "uvicorn+h11": ("127.0.0.1", theirs.port)}
    pids = {"gigastt": ours.pid, "uvicorn+h11": theirs.proc.pid}
    loads: dict[str, list[Load]] = {name: [] for name in targets}
    try:
        for host, port in targets.values():  # warm-up, not recorded
            run(host, port, args.connections, 1.0)
        for i in range(rounds):
            order = list(targets) if i % 2 == 0 else list(reversed(targets))
            for name in order:
                print(f"  rps round {i + 1}/{rounds}: {name}", file=sys.stderr, flush=True)
                cpu = common.proc_cpu_seconds(pids[name])
                load = run(*targets[name], args.connections, seconds)
                cpu = common.proc_cpu_seconds(pids[name]) - cpu
                load.cpu_us = cpu / load.requests * 1e6 if load.requests else float("nan")
                loads[name].append(load)
        ours_rss = common.proc_status(ours.pid)
        theirs_rss = common.proc_status(theirs.proc.pid)
    finally:
        ours.stop()
        theirs.stop()
    summary: dict[str, Any] = {}
    for name, runs in loads.items():
        summary[name] = {
            "rps": common.median([x.rps for x in runs]),
            "p50_ms": common.median([x.p50_ms for x in runs]),
            "p99_ms": common.median([x.p99_ms for x in runs]),
            "requests": sum(x.requests for x in runs),
            "cpu_us": common.median([x.cpu_us for x in runs]),
            "errors": sum(x.errors for x in runs),
            "rounds": [x.__dict__ for x in runs],
        }
    summary["gigastt"]["rss_mb"] = ours_rss.get("VmRSS", float("nan"))
    summary["uvicorn+h11"]["rss_mb"] = theirs_rss.get("VmRSS", float("nan"))
    return {"client": client, "connections": args.connections, "seconds": seconds,
            "rounds": rounds, "uvicorn": uvicorn.__version__, "servers": summary}


# ----------------------------------------------------------------------------------------------
# part 2: /health while four 60 s files are transcribed


def _upload(host: str, port: int, body: bytes, out: list[float], index: int) -> None:
    import http.client

    start = time.perf_counter()
    conn = http.client.HTTPConnection(host, port, timeout=1800)
    try:
        conn.request("POST", "/v1/transcribe", body=body,
                     headers={"content-type": "audio/wav"})
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            raise RuntimeError(f"upload {index}: HTTP {resp.status}")
    finally:
        conn.close()
    out[index] = time.perf_counter() - start


def _latency_summary(latencies: list[float]) -> dict[str, float | int]:
    ms = [x * 1e3 for x in latencies]
    return {"n": len(ms), "p50_ms": common.percentile(ms, 50), "p99_ms": common.percentile(ms, 99),
            "max_ms": max(ms) if ms else float("nan"),
            "over_50ms": sum(1 for x in ms if x > 50.0)}


def busy_part(args: Any) -> dict[str, Any]:
    import numpy as np

    from gigastt.testing.audio import wav_bytes

    files = [wav_bytes(np.load(common.synthetic_audio(60, seed=seed))) for seed in (101, 102,
                                                                                    103, 104)]
    server = common.Server(common.model_dir(args.model, int8=args.int8), "--pool-size", "4")
    try:
        idle_prober = common.ProbeProcess(server.host, server.port, args.probe_interval)
        time.sleep(2.0)
        idle, _ = idle_prober.stop()
        durations = [float("nan")] * len(files)
        threads = [threading.Thread(target=_upload, args=(server.host, server.port, body,
                                                          durations, i))
                   for i, body in enumerate(files)]
        prober = common.ProbeProcess(server.host, server.port, args.probe_interval)
        cpu0 = common.proc_cpu_seconds(server.pid)
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        busy, probe_errors = prober.stop()
        wall = time.perf_counter() - start
        cpu = common.proc_cpu_seconds(server.pid) - cpu0
        rss = common.proc_status(server.pid)
    finally:
        server.stop()
    return {
        "model": args.model, "files": len(files), "file_s": 60.0,
        "idle": _latency_summary(idle), "busy": _latency_summary(busy),
        "probe_errors": probe_errors,
        "probe_interval_s": args.probe_interval, "upload_s": durations, "wall_s": wall,
        "server_cpu_pct": cpu / wall * 100.0, "server_rss_mb": rss.get("VmRSS", float("nan")),
        "server_hwm_mb": rss.get("VmHWM", float("nan")),
    }


# ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = common.arg_parser(__doc__.split("\n", 1)[0], default_model="medium")
    parser.add_argument("--client", choices=("auto", "wrk", "python"), default="auto",
                        help="load generator (auto: wrk when installed)")
    parser.add_argument("--part", choices=("all", "rps", "busy"), default="all")
    parser.add_argument("--connections", type=int, default=16, help="keep-alive connections")
    parser.add_argument("--seconds", type=float, default=None,
                        help="seconds per load run (default 10, --quick 3)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="alternating rounds (default 3, --quick 1)")
    parser.add_argument("--probe-interval", type=float, default=0.015,
                        help="seconds between /health probes in the busy part (default 0.015)")
    args = parser.parse_args(argv)
    client = args.client
    if client == "auto":
        client = "wrk" if shutil.which("wrk") else "python"
    info = common.machine_info()
    payload: dict[str, Any] = {"benchmark": "http", "machine": info}

    if args.part in ("all", "rps"):
        rps = rps_part(args, client)
        payload["rps"] = rps
        servers = rps["servers"]
        base = servers["uvicorn+h11"]
        rows = [[name, common.fmt(s["rps"], 0), common.fmt(s["rps"] / base["rps"]) + "×",
                 common.fmt(s["cpu_us"], 1), common.fmt(base["cpu_us"] / s["cpu_us"]) + "×",
                 common.fmt(s["p50_ms"]), common.fmt(s["p99_ms"]), str(s["requests"]),
                 str(s["errors"]), common.fmt(s["rss_mb"], 0)]
                for name, s in servers.items()]
        pairs = zip(servers["gigastt"]["rounds"], base["rounds"], strict=True)
        per_round = ", ".join(f"{a['rps'] / b['rps']:.2f}×/{b['cpu_us'] / a['cpu_us']:.2f}×"
                              for a, b in pairs)
        print(f"\n### `/health` throughput — {client}, {rps['connections']} keep-alive "
              f"connections, {rps['seconds']:.0f} s × {rps['rounds']} alternating rounds "
              f"(medians), uvicorn {rps['uvicorn']}\n")
        print(common.markdown_table(
            ["server", "req/s", "÷ uvicorn", "CPU µs/req", "uvicorn CPU ÷ this", "p50 ms",
             "p99 ms", "requests", "errors", "RSS MB"], rows))
        print(f"\ngigastt per round, req/s ÷ uvicorn / uvicorn CPU per request ÷ gigastt's: "
              f"{per_round}")

    if args.part in ("all", "busy"):
        busy = busy_part(args)
        payload["busy"] = busy
        rows = []
        for label, key in (("idle", "idle"), ("4 × 60 s transcriptions running", "busy")):
            s = busy[key]
            rows.append([label, str(s["n"]), common.fmt(s["p50_ms"]), common.fmt(s["p99_ms"]),
                         common.fmt(s["max_ms"]), str(s["over_50ms"])])
        uploads = ", ".join(common.fmt(x, 1) for x in busy["upload_s"])
        print(f"\n### `/health` latency while busy — model `{args.model}`, fresh connection "
              f"every {busy['probe_interval_s'] * 1e3:.0f} ms\n")
        print(common.markdown_table(
            ["server state", "probes", "p50 ms", "p99 ms", "max ms", "> 50 ms"], rows))
        print(f"\nUploads took {uploads} s (wall {busy['wall_s']:.1f} s); server CPU "
              f"{busy['server_cpu_pct']:.0f} %, RSS {busy['server_rss_mb']:.0f} MB "
              f"(peak {busy['server_hwm_mb']:.0f} MB); probe errors {busy['probe_errors']}.")

    print(f"\nMachine: {common.machine_line(info)}")
    common.write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
