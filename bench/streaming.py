"""Streaming: N concurrent real-time WebSocket streams of Golos audio against one server.

    python bench/streaming.py [--quick] [--model small|medium|full] [--int8] [--streams 1,4,8,16]
                              [--speech clips|continuous|dictation|sparse] [--seconds S]
                              [--upload S]
                              [--find-capacity [--max-streams N] [--budget S]] [--json OUT]

One ``gigastt serve --metrics --pool-size max(N)`` subprocess serves every level. Each stream is
Golos clips (starting at a different clip per stream) until it reaches ``--seconds`` (default 30,
--quick 10), ending right after the last clip, resampled to 48 kHz PCM16 and sent in 100 ms frames
paced at real time (stream starts staggered over one frame), then ``stop``. ``--speech``:
``clips`` joins the clips with 1 s silences; ``continuous`` with 0.2 s silences (shorter than the
0.6 s endpoint silence); ``dictation`` is ``continuous`` sent under protocol 1.2 with
``endpoint_mode: manual``, so that utterances run to the 20 s cap (the worst case for the cost of
a stream); ``sparse`` is clips 16 s apart (about 20 % speech), each stream starting with
``index × 3.7 mod 16`` s of silence so that the streams do not speak in step, against a server
with the Silero VAD (``--vad on``, the file from ``common.vad_model``). Every mode asks for
protocol 1.2 when the server offers it (for ``endpoint_reason``).
With ``--upload S``, every level also POSTs an S-second synthetic file as it starts.

``--find-capacity`` searches the largest number of streams that meet the live targets (partial
interval p50 <= 1.0 s, final <= 1.0 s p95 after the utterance's end, no errors): 1, 2, 4, ...
until one fails, then bisects, within ``--budget`` seconds. bench/README.md defines each column.
Benchmarks, not tests.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import common
import numpy as np

from gigastt.engine import streaming  # after common: it puts the repository on the path

FRAME_S = 0.1
RATE = 48_000
GAPS = {"clips": 1.0, "continuous": 0.2, "dictation": 0.2, "sparse": 16.0}
SPARSE_PHASE_S = 3.7
# The server's defaults: the blank-run endpoint silence, the utterance cap, and the encoder
# frame (a word's ``end`` is its last token's frame start).
MIN_SILENCE_S = streaming.MIN_SILENCE_MS / 1000
CAP_S = streaming.MAX_UTTERANCE
ENCODER_FRAME_S = 0.04
# --find-capacity's targets (issue 16).
TARGET_PARTIAL_P50_S = 1.0
TARGET_FINAL_P95_S = 1.0


def stream_audio(index: int, seconds: float, clips: list[common.F32], gap: float = 1.0,
                 lead: float = 0.0) -> bytes:
    """Golos clips from clip ``index`` on, ``gap`` seconds of silence between (``lead`` before
    the first), as 48 kHz PCM16."""
    from gigastt.engine.audio import resample

    parts: list[common.F32] = [np.zeros(round(lead * 16000), dtype=np.float32)]
    total = parts[0].shape[0]
    k = index
    silence = np.zeros(round(gap * 16000), dtype=np.float32)
    while total < seconds * 16000:
        if len(parts) > 1:
            parts.append(silence)
            total += silence.shape[0]
        clip = clips[k % len(clips)]
        parts.append(clip)
        total += clip.shape[0]
        k += 1
    return common.pcm16(resample(np.concatenate(parts), 16000, RATE))


@dataclass
class StreamResult:
    audio_s: float
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)  # (received, message)
    t0: float = 0.0  # frame k is due (a live source has it) at t0 + (k + 1) × FRAME_S
    last_frame_at: float = 0.0
    live_end_at: float = 0.0  # when a live source would have sent its last frame
    stop_at: float = 0.0
    max_send_lag: float = 0.0
    close_code: int | None = None
    v12: bool = False  # the server offered protocol 1.2 (``ready`` has ``min_protocol_version``)
    errors: list[str] = field(default_factory=list)

    def kinds(self, kind: str) -> list[tuple[float, dict[str, Any]]]:
        return [(t, m) for t, m in self.events if m.get("type") == kind]

    @property
    def final_latency(self) -> float:
        """Last audio frame sent → the final that answers ``stop`` (the last final)."""
        finals = [t for t, _ in self.kinds("final") if t >= self.stop_at]
        return finals[-1] - self.last_frame_at if finals else float("nan")

    @property
    def final_after_live_end(self) -> float:
        """Like ``final_latency``, from when the audio ended in real time.

        The two differ when the server holds a client back (its ``send`` calls block).
        """
        return self.final_latency + self.last_frame_at - self.live_end_at

    @property
    def partial_intervals(self) -> list[float]:
        """Gaps before each partial sent before ``stop``, from the stream's previous segment."""
        gaps = []
        previous: float | None = None
        for t, message in self.events:
            kind = message.get("type")
            if kind not in ("partial", "final") or t >= self.stop_at:
                continue
            if kind == "partial" and previous is not None:
                gaps.append(t - previous)
            previous = t
        return gaps

    def live_time(self, position: float) -> float:
        """When a live source had sent the audio up to stream second ``position``."""
        frames = math.ceil(position / FRAME_S - 1e-9)
        return min(self.t0 + max(frames, 1) * FRAME_S, self.live_end_at)

    def utterance_finals(self) -> list[tuple[str, float]]:
        """(endpoint reason, seconds from the utterance's end to its final) for every final.

        The utterance's end is when a live source had sent the audio that decides the endpoint
        (bench/README.md): ``stop`` → the end of the audio; ``blank``/``vad`` → the last word's
        end + one encoder frame + the endpoint silence; ``cap`` → the utterance's start + 20 s,
        its start taken as the end of the previous final's last word (the cut lies after it, so
        the figure is an upper bound). Without ``endpoint_reason`` (protocol 1.0), the last
        final after ``stop`` counts as ``stop`` and every other one as ``blank``.
        """
        out: list[tuple[str, float]] = []
        finals = self.kinds("final")
        utt_start = 0.0
        for i, (t, message) in enumerate(finals):
            words = message.get("words") or []
            reason = message.get("endpoint_reason")
            if reason is None:
                last = i == len(finals) - 1 and t >= self.stop_at
                reason = "stop" if last else "blank"
            if reason == "stop":
                end_at = self.live_end_at
            elif reason == "cap":
                end_at = self.live_time(utt_start + CAP_S)
            elif words:
                end_at = self.live_time(float(words[-1]["end"]) + ENCODER_FRAME_S
                                        + MIN_SILENCE_S)
            else:
                end_at = float("nan")
            out.append((str(reason), t - end_at))
            if words:
                utt_start = float(words[-1]["end"]) + ENCODER_FRAME_S
        return out

    def count(self, kind: str) -> int:
        return len(self.kinds(kind))


async def run_stream(url: str, pcm: bytes, start_at: float, speech: str) -> StreamResult:
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
        result.v12 = "min_protocol_version" in ready
        # Separate messages: a configure is applied all or nothing, so a refused endpoint_mode
        # must not take the sample rate with it.
        await ws.send(json.dumps({"type": "configure", "sample_rate": RATE}))
        if result.v12:
            settings: dict[str, Any] = {"type": "configure", "protocol_version": "1.2"}
            if speech == "dictation":
                settings["endpoint_mode"] = "manual"
            await ws.send(json.dumps(settings))

        async def receive() -> None:
            try:
                async for message in ws:
                    obj = json.loads(message)
                    result.events.append((time.perf_counter(), obj))
                    if obj.get("type") == "error":
                        result.errors.append(str(obj.get("code") or message))
            except ConnectionClosed:
                pass

        receiver = asyncio.create_task(receive())
        t0 = result.t0 = time.perf_counter()
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


def live_counters(server: common.WatchedServer) -> tuple[float, float]:
    """(live audio seconds, encoded seconds) from ``/metrics``; NaN where the server lacks them."""
    values = {"gigastt_live_audio_seconds_total": float("nan"),
              "gigastt_live_encoded_seconds_total": float("nan")}
    try:
        reply = server.request("GET", "/metrics", timeout=30)
    except OSError:
        return float("nan"), float("nan")
    if reply.status == 200:
        for line in reply.body.decode("utf-8", "replace").splitlines():
            name, _, value = line.partition(" ")
            if name in values:
                values[name] = float(value)
    return values["gigastt_live_audio_seconds_total"], values["gigastt_live_encoded_seconds_total"]


def endpoint_notes(results: list[StreamResult], speech: str) -> list[str]:
    """What the server made of protocol 1.2 and ``endpoint_mode: manual`` (said, not raised)."""
    notes = []
    if not all(r.v12 for r in results):
        notes.append("server does not offer protocol 1.2 (no `min_protocol_version` in `ready`):"
                     " sent as 1.0" + (", so dictation ran as continuous" if speech == "dictation"
                                       else ""))
        return notes
    refused = sorted({e for r in results for e in r.errors})
    if refused:
        notes.append(f"server answered the configure/stream with error(s) {refused}"
                     + (": endpoint_mode manual refused?" if speech == "dictation" else ""))
    finals = [m for r in results for _, m in r.kinds("final")]
    if finals and all("endpoint_reason" not in m for m in finals):
        notes.append("finals carry no `endpoint_reason`: protocol 1.2 ignored")
    if speech == "dictation":
        early = sorted({m.get("endpoint_reason") for m in finals} - {"cap", "stop", None})
        if early:
            notes.append(f"endpoint_mode manual ignored: finals ended by {early}")
    return notes


def run_level(server: common.WatchedServer, n: int, seconds: float, clips: list[common.F32],
              upload: bytes | None = None, speech: str = "clips") -> dict[str, Any]:
    audio = [stream_audio(i, seconds, clips, GAPS[speech],
                          (i * SPARSE_PHASE_S) % GAPS[speech] if speech == "sparse" else 0.0)
             for i in range(n)]
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
    live0, encoded0 = live_counters(server)
    load_start = os.getloadavg()[0]
    cpu0 = common.proc_cpu_seconds(server.pid)
    since = time.monotonic()
    wall0 = time.perf_counter()
    if upload is not None:
        uploader.start()  # runs through the whole level: the streams share the server with it

    async def all_streams() -> list[StreamResult]:
        base = time.perf_counter() + 0.2
        return await asyncio.gather(*(run_stream(url, pcm, base + i * FRAME_S / n, speech)
                                      for i, pcm in enumerate(audio)))

    results = asyncio.run(all_streams())
    wall = time.perf_counter() - wall0
    until = time.monotonic()
    cpu = common.proc_cpu_seconds(server.pid) - cpu0
    load_end = os.getloadavg()[0]
    live1, encoded1 = live_counters(server)
    probes, probe_errors = prober.stop()
    if upload is not None:
        uploader.join()
    max_rss = sampler.stop()
    status = common.proc_status(server.pid)
    latencies = [r.final_latency for r in results]
    cadences = [common.median(r.partial_intervals) for r in results]
    intervals = [g for r in results for g in r.partial_intervals]
    after_end = [(reason, s) for r in results for reason, s in r.utterance_finals()]
    after_end_s = [s for _, s in after_end if s == s]
    probes_ms = [x * 1e3 for x in probes]
    time.sleep(1.2)  # the lag file is flushed once a second
    lag_ms = [x * 1e3 for x in server.loop_lag(since, until)]
    after_live_end = [r.final_after_live_end for r in results]
    reasons: dict[str, int] = {}
    for reason, _ in after_end:
        reasons[reason] = reasons.get(reason, 0) + 1
    return {
        "streams": n,
        "speech": speech,
        "audio_s": float(np.mean([r.audio_s for r in results])),
        "final_latency_s": latencies,
        "final_latency_p50_s": common.median(latencies),
        "final_latency_max_s": max(latencies),
        "final_after_live_end_p50_s": common.median(after_live_end),
        "final_after_utterance_end_s": after_end,
        "final_after_utterance_end_p50_s": common.percentile(after_end_s, 50),
        "final_after_utterance_end_p95_s": common.percentile(after_end_s, 95),
        "final_reasons": reasons,
        "partial_interval_s": cadences,
        "partial_interval_p50_s": common.median(cadences),
        "partial_interval_max_s": max(cadences),
        "partial_intervals_p50_s": common.percentile(intervals, 50),
        "partial_intervals_p95_s": common.percentile(intervals, 95),
        "partials_per_stream": float(np.mean([r.count("partial") for r in results])),
        "finals_per_stream": float(np.mean([r.count("final") for r in results])),
        "streams_without_final": sum(1 for x in latencies if math.isnan(x)),
        "reencode_factor": (encoded1 - encoded0) / (live1 - live0) if live1 > live0
        else float("nan"),
        "live_audio_s": live1 - live0,
        "encoded_s": encoded1 - encoded0,
        "errors": [e for r in results for e in r.errors],
        "endpoint_notes": endpoint_notes(results, speech),
        "close_codes": sorted({r.close_code for r in results if r.close_code is not None}),
        "max_send_lag_s": max(r.max_send_lag for r in results),
        "wall_s": wall,
        "server_cpu_pct": cpu / wall * 100.0,
        "cpu_per_stream_pct": cpu / wall / n * 100.0,
        "load_start": load_start,
        "load_end": load_end,
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


def meets_targets(r: dict[str, Any]) -> bool:
    """Issue 16's live targets: partials p50 <= 1 s, finals p95 <= 1 s after the utterance's
    end, every stream answered with its final, no errors, no abnormal close."""
    return (r["partial_intervals_p50_s"] <= TARGET_PARTIAL_P50_S
            and r["final_after_utterance_end_p95_s"] <= TARGET_FINAL_P95_S
            and r["streams_without_final"] == 0 and not r["errors"]
            and all(c == 1000 for c in r["close_codes"]))


def find_capacity(server: common.WatchedServer, seconds: float, clips: list[common.F32],
                  speech: str, max_streams: int, budget: float) -> tuple[int, list[dict[str, Any]]]:
    """1, 2, 4, ... streams until a level misses the targets, then bisect; within ``budget`` s.

    A probe is not started when the time it needs (estimated from the slowest so far) would
    overrun the budget; the answer is then the largest level that met the targets.
    """
    started = time.perf_counter()
    probes: list[dict[str, Any]] = []
    slowest = seconds + 15.0
    good, bad = 0, max_streams + 1

    def probe(n: int) -> bool | None:
        nonlocal slowest
        if time.perf_counter() - started + slowest > budget:
            print(f"  budget: not probing {n} streams", file=sys.stderr, flush=True)
            return None
        print(f"  probe: {n} stream(s) of ~{seconds:.0f} s {speech} ...", file=sys.stderr,
              flush=True)
        t = time.perf_counter()
        r = run_level(server, n, seconds, clips, None, speech)
        r["meets_targets"] = meets_targets(r)
        probes.append(r)
        print("  " + " | ".join(row(r)), file=sys.stderr, flush=True)
        slowest = max(slowest, time.perf_counter() - t + 2.0)
        time.sleep(2.0)
        return bool(r["meets_targets"])

    n = 1
    while n <= max_streams:
        ok = probe(n)
        if ok is None:
            return good, probes
        if not ok:
            bad = n
            break
        good = n
        n *= 2
    if good == max_streams:
        return good, probes
    while bad - good > 1:
        mid = (good + bad) // 2
        ok = probe(mid)
        if ok is None:
            break
        good, bad = (mid, bad) if ok else (good, mid)
    return good, probes


HEADERS = ["streams", "speech", "audio s", "finals/stream", "final after utterance end p50 ms",
           "p95 ms", "final after stop p50 ms", "partial interval p50 ms", "p95 ms",
           "re-encode ×", "CPU/stream %", "server CPU %", "send lag max ms", "load 1 min"]


def row(r: dict[str, Any]) -> list[str]:
    return [
        str(r["streams"]), r["speech"], common.fmt(r["audio_s"], 1),
        common.fmt(r["finals_per_stream"], 1),
        common.fmt(r["final_after_utterance_end_p50_s"] * 1e3, 0),
        common.fmt(r["final_after_utterance_end_p95_s"] * 1e3, 0),
        common.fmt(r["final_after_live_end_p50_s"] * 1e3, 0),
        common.fmt(r["partial_intervals_p50_s"] * 1e3, 0),
        common.fmt(r["partial_intervals_p95_s"] * 1e3, 0),
        common.fmt(r["reencode_factor"], 2),
        common.fmt(r["cpu_per_stream_pct"], 0), common.fmt(r["server_cpu_pct"], 0),
        common.fmt(r["max_send_lag_s"] * 1e3, 0),
        f"{r['load_start']:.1f}→{r['load_end']:.1f}",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = common.arg_parser(__doc__.split("\n", 1)[0])
    parser.add_argument("--streams", default="1,4,8,16",
                        help="comma-separated concurrency levels (default 1,4,8,16)")
    parser.add_argument("--speech", choices=sorted(GAPS), default="clips",
                        help="clips (1 s gaps), continuous (0.2 s gaps), dictation (continuous,"
                             " endpoint_mode manual), sparse (20 %% speech, with the VAD);"
                             " default clips")
    parser.add_argument("--seconds", type=float, default=None,
                        help="audio per stream (default 30, --quick 10)")
    parser.add_argument("--upload", type=int, default=0, metavar="S",
                        help="also POST an S-second file at the start of every level")
    parser.add_argument("--find-capacity", action="store_true",
                        help="search the largest stream count meeting the live targets"
                             " (ignores --streams and --upload)")
    parser.add_argument("--max-streams", type=int, default=32,
                        help="--find-capacity: the most streams probed and the pool size"
                             " (default 32)")
    parser.add_argument("--budget", type=float, default=900.0, metavar="S",
                        help="--find-capacity: seconds for the whole search (default 900)")
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.streams.split(",")]
    seconds = args.seconds or (10.0 if args.quick else 30.0)
    info = common.machine_info()
    clips = common.golos_clips()
    model = common.model_dir(args.model, int8=args.int8)
    upload = None
    if args.upload and not args.find_capacity:
        from gigastt.testing.audio import wav_bytes

        upload = wav_bytes(np.load(common.synthetic_audio(args.upload, seed=args.upload)))
    results: list[dict[str, Any]] = []
    capacity: int | None = None
    pool = args.max_streams if args.find_capacity else max(levels) + (1 if upload else 0)
    vad = ["--vad", "on", "--vad-model", str(common.vad_model())] if args.speech == "sparse" \
        else []
    with common.WatchedServer(model, "--metrics", "--pool-size", str(pool), *vad) as server:
        time.sleep(1.0)
        idle = common.proc_status(server.pid)
        if args.find_capacity:
            capacity, results = find_capacity(server, seconds, clips, args.speech,
                                              args.max_streams, args.budget)
        else:
            for n in levels:
                print(f"  {n} stream(s) of ~{seconds:.0f} s {args.speech} ...", file=sys.stderr,
                      flush=True)
                results.append(run_level(server, n, seconds, clips, upload, args.speech))
                time.sleep(2.0)

    encoder = "INT8" if args.int8 else "FP32"
    beside = f", each level beside a {args.upload} s upload" if upload else ""
    print(f"\n### Real-time WebSocket streams — model `{args.model}`, {encoder} encoder, "
          f"`--speech {args.speech}`, pool {pool}, 100 ms frames at 48 kHz{beside}\n")
    headers = HEADERS + (["meets targets"] if args.find_capacity else [])
    rows = [row(r) + (["yes" if r["meets_targets"] else "no"] if args.find_capacity else [])
            for r in results]
    print(common.markdown_table(headers, rows))
    print("\nfinal after utterance end = from when a live source had sent the audio that decides"
          " the endpoint (the end of the audio for `stop`, utterance start + 20 s for the cap,"
          " last word + 0.6 s for a blank endpoint) to the `final`, over every final of every"
          " stream; final after stop = end of the audio in real time → the `final` answering"
          " `stop`; partial interval = gap before each partial from the stream's previous"
          " segment, over all streams; re-encode = encoder seconds ÷ live audio seconds"
          " (server `/metrics`); CPU/stream = server CPU time ÷ wall ÷ streams (100 % = one"
          " core); load = the machine's 1-minute load average at the level's start → end.")
    if args.find_capacity:
        print(f"\n**Capacity: {capacity} real-time `{args.speech}` stream(s)** meet partial"
              f" interval p50 ≤ {TARGET_PARTIAL_P50_S:.1f} s and final ≤"
              f" {TARGET_FINAL_P95_S:.1f} s p95 after the utterance's end"
              f" (searched up to {args.max_streams}, budget {args.budget:.0f} s).")
    else:
        base_rss = results[0]["rss_max_mb"]
        print("\nResources:\n")
        print(common.markdown_table(
            ["streams", "RSS max MB", "RSS ÷ 1st level", "VmHWM MB", "loop lag p99 ms",
             "/health p99 ms", *(["upload s"] if upload else [])],
            [[str(r["streams"]), common.fmt(r["rss_max_mb"], 0),
              common.fmt(r["rss_max_mb"] / base_rss) + "×",
              common.fmt(r["hwm_mb"], 0) if r["hwm_reset"] else "–",
              common.fmt(r["loop_lag_p99_ms"], 1), common.fmt(r["health_p99_ms"], 1),
              *([common.fmt(r["upload_s"], 1)] if upload else [])] for r in results]))
    for r in results:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(r["final_reasons"].items()))
        print(f"\n{r['streams']} streams: finals by endpoint reason: {reasons or 'none'}.")
        for note in r["endpoint_notes"]:
            print(f"{r['streams']} streams: NOTE: {note}")
    problems = [f"{r['streams']} streams: {len(r['errors'])} errors, close codes "
                f"{r['close_codes']}, {r['streams_without_final']} without a final"
                for r in results
                if r["errors"] or r["streams_without_final"]
                or any(c != 1000 for c in r["close_codes"])]
    print(f"\nServer idle before the first level: RSS {idle.get('VmRSS', 0):.0f} MB.")
    if problems:
        print("Problems: " + "; ".join(problems))
    print(f"\nMachine: {common.machine_line(info)}")
    common.write_json(args.json, {"benchmark": "streaming", "model": args.model,
                                  "encoder": encoder.lower(), "upload_s": args.upload,
                                  "speech": args.speech, "pool_size": pool, "seconds": seconds,
                                  "capacity": capacity, "machine": info, "idle": idle,
                                  "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
