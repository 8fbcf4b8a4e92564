"""Streaming: N concurrent real-time WebSocket streams of Golos audio against one server.

    python bench/streaming.py [--quick] [--model small|medium|full] [--int8] [--streams 1,4,8,16]
                              [--seconds S] [--upload S] [--json OUT]

One ``gigastt serve --pool-size max(N)`` subprocess serves every level. Each stream is Golos clips
(starting at a different clip per stream) joined by 1 s silences until it reaches ``--seconds``
(default 30, --quick 10) and ending right after the last clip, resampled to 48 kHz PCM16 and sent
in 100 ms frames paced at real time (stream starts staggered over one frame), then ``stop``.
With ``--upload S``, every level also POSTs an S-second synthetic file as it starts (issue 8's
"8 streams and one upload").

Columns: time from the last audio frame to the ``final`` that answers ``stop`` (median and max
over streams); partial cadence (the median interval between consecutive partials of a stream,
median and max over streams); partials per stream; server CPU % (utime+stime delta from
/proc/<pid>/stat over the level's wall time; 100 % = one core); server RSS (max of VmRSS sampled
every 100 ms, and VmHWM after resetting it through /proc/<pid>/clear_refs before the level);
``/health`` p99 (fresh connection every 50 ms from a separate prober process: event-loop lag as a
client sees it); the client's worst pacing lag (large values mean the client could not keep up and
the figures are not real time). Benchmarks, not tests.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import common
import numpy as np

FRAME_S = 0.1
RATE = 48_000


def stream_audio(index: int, seconds: float, clips: list[common.F32]) -> bytes:
    """Golos clips from clip ``index`` on, 1 s silences between, as 48 kHz PCM16."""
    from gigastt.engine.audio import resample

    parts: list[common.F32] = []
    total = 0
    k = index
    while total < seconds * 16000:
        if parts:
            parts.append(np.zeros(16000, dtype=np.float32))
            total += 16000
        clip = clips[k % len(clips)]
        parts.append(clip)
        total += clip.shape[0]
        k += 1
    return common.pcm16(resample(np.concatenate(parts), 16000, RATE))


@dataclass
class StreamResult:
    audio_s: float
    events: list[tuple[float, str]] = field(default_factory=list)  # (receive time, type)
    last_frame_at: float = 0.0
    live_end_at: float = 0.0  # when a live source would have sent its last frame
    stop_at: float = 0.0
    max_send_lag: float = 0.0
    close_code: int | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def final_latency(self) -> float:
        finals = [t for t, kind in self.events if kind == "final" and t >= self.stop_at]
        return finals[-1] - self.last_frame_at if finals else float("nan")

    @property
    def final_after_live_end(self) -> float:
        """Like ``final_latency``, from when the audio ended in real time.

        The two differ when the server holds a client back (its ``send`` calls block).
        """
        return self.final_latency + self.last_frame_at - self.live_end_at

    @property
    def partial_intervals(self) -> list[float]:
        times = [t for t, kind in self.events if kind == "partial" and t < self.stop_at]
        return [b - a for a, b in pairwise(times)]

    def count(self, kind: str) -> int:
        return sum(1 for _, k in self.events if k == kind)


async def run_stream(url: str, pcm: bytes, start_at: float) -> StreamResult:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    frame_bytes = int(RATE * FRAME_S) * 2
    result = StreamResult(audio_s=len(pcm) / 2 / RATE)
    await asyncio.sleep(max(0.0, start_at - time.perf_counter()))
    async with connect(url, max_size=None, compression=None, open_timeout=60,
                       close_timeout=60, ping_interval=None) as ws:
        ready = json.loads(await ws.recv())
        if ready.get("type") != "ready":
            raise RuntimeError(f"unexpected first message: {ready}")
        await ws.send(json.dumps({"type": "configure", "sample_rate": RATE}))

        async def receive() -> None:
            try:
                async for message in ws:
                    kind = json.loads(message).get("type", "?")
                    result.events.append((time.perf_counter(), kind))
                    if kind == "error":
                        result.errors.append(str(message))
            except ConnectionClosed:
                pass

        receiver = asyncio.create_task(receive())
        t0 = time.perf_counter()
        for k, offset in enumerate(range(0, len(pcm), frame_bytes)):
            # frame k holds audio [k, k + 1) × 100 ms: a live source has it at (k + 1) × 100 ms
            due = t0 + (k + 1) * FRAME_S
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                result.max_send_lag = max(result.max_send_lag, -delay)
            await ws.send(pcm[offset : offset + frame_bytes])
        result.last_frame_at = time.perf_counter()
        result.live_end_at = t0 + -(-len(pcm) // frame_bytes) * FRAME_S
        await ws.send(json.dumps({"type": "stop"}))
        result.stop_at = time.perf_counter()
        await asyncio.wait_for(receiver, 600)
        result.close_code = ws.close_code
    return result


class RssSampler:
    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self.max_rss = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.max_rss = max(self.max_rss, common.proc_status(self.pid).get("VmRSS", 0.0))
            self._stop.wait(self.interval)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join(5)
        return self.max_rss


def run_level(server: common.WatchedServer, n: int, seconds: float, clips: list[common.F32],
              upload: bytes | None = None) -> dict[str, Any]:
    audio = [stream_audio(i, seconds, clips) for i in range(n)]
    uploaded: dict[str, float] = {}

    def post() -> None:
        assert upload is not None
        started = time.perf_counter()
        reply = server.request("POST", "/v1/transcribe", upload, timeout=3600)
        uploaded.update(status=reply.status, seconds=time.perf_counter() - started)

    uploader = threading.Thread(target=post)
    url = f"ws://{server.host}:{server.port}/v1/ws"
    hwm_reset = common.reset_peak_rss(server.pid)
    sampler = RssSampler(server.pid)
    prober = common.ProbeProcess(server.host, server.port, 0.05)
    cpu0 = common.proc_cpu_seconds(server.pid)
    since = time.monotonic()
    wall0 = time.perf_counter()
    if upload is not None:
        uploader.start()  # runs through the whole level: the streams share the server with it

    async def all_streams() -> list[StreamResult]:
        base = time.perf_counter() + 0.2
        return await asyncio.gather(*(run_stream(url, pcm, base + i * FRAME_S / n)
                                      for i, pcm in enumerate(audio)))

    results = asyncio.run(all_streams())
    wall = time.perf_counter() - wall0
    until = time.monotonic()
    cpu = common.proc_cpu_seconds(server.pid) - cpu0
    probes, probe_errors = prober.stop()
    if upload is not None:
        uploader.join()
    max_rss = sampler.stop()
    status = common.proc_status(server.pid)
    latencies = [r.final_latency for r in results]
    cadences = [common.median(r.partial_intervals) for r in results]
    probes_ms = [x * 1e3 for x in probes]
    time.sleep(1.2)  # the lag file is flushed once a second
    lag_ms = [x * 1e3 for x in server.loop_lag(since, until)]
    after_live_end = [r.final_after_live_end for r in results]
    return {
        "streams": n,
        "audio_s": float(np.mean([r.audio_s for r in results])),
        "final_latency_s": latencies,
        "final_latency_p50_s": common.median(latencies),
        "final_latency_max_s": max(latencies),
        "final_after_live_end_p50_s": common.median(after_live_end),
        "partial_interval_s": cadences,
        "partial_interval_p50_s": common.median(cadences),
        "partial_interval_max_s": max(cadences),
        "partials_per_stream": float(np.mean([r.count("partial") for r in results])),
        "finals_per_stream": float(np.mean([r.count("final") for r in results])),
        "errors": [e for r in results for e in r.errors],
        "close_codes": sorted({r.close_code for r in results if r.close_code is not None}),
        "max_send_lag_s": max(r.max_send_lag for r in results),
        "wall_s": wall,
        "server_cpu_pct": cpu / wall * 100.0,
        "rss_max_mb": max_rss,
        "rss_end_mb": status.get("VmRSS", float("nan")),
        "hwm_mb": status.get("VmHWM", float("nan")),
        "hwm_reset": hwm_reset,
        "health_p50_ms": common.percentile(probes_ms, 50),
        "health_p99_ms": common.percentile(probes_ms, 99),
        "health_max_ms": max(probes_ms) if probes_ms else float("nan"),
        "health_probes": len(probes_ms),
        "health_errors": probe_errors,
        "loop_lag_p50_ms": common.percentile(lag_ms, 50),
        "loop_lag_p99_ms": common.percentile(lag_ms, 99),
        "loop_lag_max_ms": max(lag_ms) if lag_ms else float("nan"),
        "loop_lag_samples": len(lag_ms),
        "upload_status": uploaded.get("status"),
        "upload_s": uploaded.get("seconds"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = common.arg_parser(__doc__.split("\n", 1)[0])
    parser.add_argument("--streams", default="1,4,8,16",
                        help="comma-separated concurrency levels (default 1,4,8,16)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="audio per stream (default 30, --quick 10)")
    parser.add_argument("--upload", type=int, default=0, metavar="S",
                        help="also POST an S-second file at the start of every level")
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.streams.split(",")]
    seconds = args.seconds or (10.0 if args.quick else 30.0)
    info = common.machine_info()
    clips = common.golos_clips()
    model = common.model_dir(args.model, int8=args.int8)
    upload = None
    if args.upload:
        from gigastt.testing.audio import wav_bytes

        upload = wav_bytes(np.load(common.synthetic_audio(args.upload, seed=args.upload)))
    results: list[dict[str, Any]] = []
    pool = max(levels) + (1 if upload else 0)
    with common.WatchedServer(model, "--pool-size", str(pool)) as server:
        time.sleep(1.0)
        idle = common.proc_status(server.pid)
        for n in levels:
            print(f"  {n} stream(s) of ~{seconds:.0f} s ...", file=sys.stderr, flush=True)
            results.append(run_level(server, n, seconds, clips, upload))
            time.sleep(2.0)

    base_rss = results[0]["rss_max_mb"]
    rows = []
    for r in results:
        rows.append([
            str(r["streams"]), common.fmt(r["audio_s"], 1),
            common.fmt(r["final_latency_p50_s"] * 1e3, 0),
            common.fmt(r["final_latency_max_s"] * 1e3, 0),
            common.fmt(r["final_after_live_end_p50_s"] * 1e3, 0),
            common.fmt(r["partial_interval_p50_s"] * 1e3, 0),
            common.fmt(r["partial_interval_max_s"] * 1e3, 0),
            common.fmt(r["partials_per_stream"], 1), common.fmt(r["server_cpu_pct"], 0),
            common.fmt(r["rss_max_mb"], 0), common.fmt(r["rss_max_mb"] / base_rss) + "×",
            common.fmt(r["hwm_mb"], 0) if r["hwm_reset"] else "–",
            common.fmt(r["loop_lag_p99_ms"], 1), common.fmt(r["health_p99_ms"], 1),
            common.fmt(r["max_send_lag_s"] * 1e3, 0),
            *([common.fmt(r["upload_s"], 1)] if upload else []),
        ])
    encoder = "INT8" if args.int8 else "FP32"
    beside = f", each level beside a {args.upload} s upload" if upload else ""
    print(f"\n### Real-time WebSocket streams — model `{args.model}`, {encoder} encoder, "
          f"pool {pool}, 100 ms frames at 48 kHz{beside}\n")
    print(common.markdown_table(
        ["streams", "audio s", "final p50 ms", "final max ms", "final after live end p50 ms",
         "partial interval p50 ms",
         "partial interval max ms", "partials/stream", "server CPU %", "RSS max MB",
         "RSS ÷ 1 stream", "VmHWM MB", "loop lag p99 ms", "/health p99 ms", "send lag max ms",
         *(["upload s"] if upload else [])], rows))
    print("\nfinal = last audio frame sent → `final` received after `stop` (after live end: from"
          " when the audio ended in real time; they differ when the server holds a client back,"
          " see send lag); partial interval = median gap between a stream's partials (p50/max"
          " over streams); loop lag = how late the server's event loop woke from 10 ms sleeps,"
          " measured inside the server; /health = a separate process's GET round trip.")
    problems = [f"{r['streams']} streams: {len(r['errors'])} errors, close codes "
                f"{r['close_codes']}" for r in results
                if r["errors"] or any(c != 1000 for c in r["close_codes"])]
    print(f"\nServer idle before the first level: RSS {idle.get('VmRSS', 0):.0f} MB.")
    if problems:
        print("Problems: " + "; ".join(problems))
    print(f"\nMachine: {common.machine_line(info)}")
    common.write_json(args.json, {"benchmark": "streaming", "model": args.model,
                                  "encoder": encoder.lower(), "upload_s": args.upload,
                                  "pool_size": pool, "seconds": seconds,
                                  "machine": info, "idle": idle, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
