"""Small-box profile: RSS of an INT8-only full-size model, idle and under 1 / 4 live streams.

    python bench/smallbox.py [--quick] [--threads 1,2] [--seconds S] [--sets a,b,...]
                             [--server-sets a,b] [--json OUT]

Part 1, the bare-onnxruntime floor: for each set of onnxruntime session options (``SETS``), a
child process loads only the three sessions of the INT8-only full-size generated model with
gigastt's ``session_options`` plus that set, then runs the encoder over a 20.5 s and a 12 s
window (the two window sizes of live recognition) and the greedy loop over their frames.
Children of all sets stay alive and take their timed rounds in turn, so that drift on a shared
machine hits every set alike; the table gives RSS after load, RSS after the runs, and the
encoder's and the greedy loop's (joint per frame, decoder per token) times relative to the first
set, as the median of each round's ratio (paired, side by side).

Part 2, the server: ``gigastt serve --threads T`` on the INT8-only directory (no FP32 encoder),
with the session options of each ``--server-sets`` set patched in, for each ``--threads``: RSS
idle after start-up, then the peak RSS while 1 and then 4 real-time WebSocket streams of Golos
clips (``bench/streaming.py``'s client) run, and those streams' final latency.
Benchmarks, not tests. Note the load average: the numbers of a shared machine are noisy.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import common
import numpy as np
import streaming

# name -> changes to gigastt's session_options (gigastt/engine/model.py); {} = its defaults.
SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "mem-pattern": {"mem_pattern": True},
    "no-arena": {"arena": False},
    "no-prepack": {"config": {"session.disable_prepacking": "1"}},
    "init-direct": {"config": {"session.use_device_allocator_for_initializers": "1"}},
    "no-arena+no-prepack": {"arena": False, "config": {"session.disable_prepacking": "1"}},
}
LISTENING = re.compile(r"listening on http://(\[[^\]]+\]|[^:]+):(\d+)")
WINDOWS_S = (20.5, 12.0)
FEATURE_HOP_S = 0.01


def int8_only_dir() -> Path:
    """The full-size generated model with only its INT8 encoder (links into the bench cache)."""
    source = common.model_dir("full", int8=True)
    path = source.with_name(source.name + "-only")
    marker = path / ".complete"
    if not marker.is_file():
        path.mkdir(parents=True, exist_ok=True)
        for name in ("v3_e2e_rnnt_encoder_int8.onnx", "v3_e2e_rnnt_decoder.onnx",
                     "v3_e2e_rnnt_joint.onnx", "v3_e2e_rnnt_vocab.txt"):
            (path / name).unlink(missing_ok=True)
            (path / name).symlink_to((source / name).resolve())
        marker.write_text("1\n", encoding="utf-8")
    return path


def patch_session_options(changes: dict[str, Any]) -> None:
    """Make gigastt's ``session_options`` apply ``changes`` (in this process)."""
    import gigastt.engine.model as model

    original = model.session_options

    def patched(threads: int) -> Any:
        options = original(threads)
        if "mem_pattern" in changes:
            options.enable_mem_pattern = changes["mem_pattern"]
        if "arena" in changes:
            options.enable_cpu_mem_arena = changes["arena"]
        for key, value in changes.get("config", {}).items():
            options.add_session_config_entry(key, value)
        return options

    model.session_options = patched  # type: ignore[assignment]


# ----------------------------------------------------------------------------------------------
# part 1: bare onnxruntime


def bare_child(changes: dict[str, Any], model_dir: Path, threads: int) -> int:
    """Child side: load the sessions, then answer ``run`` (timed passes) and ``exit``."""
    patch_session_options(changes)
    import gigastt.engine.model as model

    started = time.perf_counter()
    loaded = model.GigaamModel(model_dir, threads=threads)
    common.child_reply({"load_s": time.perf_counter() - started,
                        "rss_loaded_mb": common.proc_status(os.getpid())["VmRSS"]})
    rng = np.random.default_rng(0)
    hidden = np.zeros((1, 1, loaded.pred_hidden), dtype=np.float32)
    for line in sys.stdin:
        if line.strip() == "exit":
            common.child_reply({"peak_rss_mb": common.own_peak_rss_mb()})
            return 0
        times = []
        decode = 0.0
        for seconds in WINDOWS_S:
            frames = round(seconds / FEATURE_HOP_S)
            features = rng.standard_normal((1, 64, frames)).astype(np.float32)
            began = time.perf_counter()
            encoded, _ = loaded.encode(features, np.array([frames], dtype=np.int64))
            times.append(time.perf_counter() - began)
            # The greedy loop's shape: one joint per encoder frame, a decoder step per token
            # (one token every fourth frame here).
            began = time.perf_counter()
            dec, h, c = loaded.decode_step(np.zeros((1, 1), dtype=np.int64), hidden, hidden)
            for t in range(encoded.shape[2]):
                loaded.joint_scores(encoded[:, :, t : t + 1], dec.reshape(1, -1, 1))
                if t % 4 == 0:
                    dec, h, c = loaded.decode_step(np.ones((1, 1), dtype=np.int64), h, c)
            decode += time.perf_counter() - began
        common.child_reply({"encode_s": times, "decode_s": decode,
                            "rss_mb": common.proc_status(os.getpid())["VmRSS"]})
    return 0


def bare_floor(model_dir: Path, sets: list[str], threads: int, rounds: int) -> list[dict[str, Any]]:
    children = {name: common.Child([sys.executable, __file__, "--bare-child",
                                    json.dumps(SETS[name]), str(model_dir), str(threads)])
                for name in sets}
    results: dict[str, dict[str, Any]] = {}
    try:
        for name, child in children.items():
            results[name] = {"set": name, "threads": threads, **child.read(), "encode_s": [],
                             "decode_s": []}
        for _ in range(rounds):  # round-robin: drift hits every set alike
            for name, child in children.items():
                reply = child.request("run")
                results[name]["encode_s"].append(sum(reply["encode_s"]))
                results[name]["decode_s"].append(reply.get("decode_s", float("nan")))
                results[name]["rss_run_mb"] = reply["rss_mb"]
        for name, child in children.items():
            results[name]["peak_rss_mb"] = child.finish()["peak_rss_mb"]
    finally:
        for child in children.values():
            child.kill()
    for key in ("encode", "decode"):
        base = results[sets[0]][f"{key}_s"]
        for r in results.values():
            timed = r[f"{key}_s"][1:] or r[f"{key}_s"]  # the first pass warms up
            r[f"{key}_median_s"] = common.median(timed)
            # Paired: each round's time over the first set's in the same round, then the
            # median, so that load drifting between rounds cancels out.
            paired = [t / b for t, b in zip(r[f"{key}_s"], base, strict=True)]
            r[f"{key}_ratio"] = common.median(paired[1:] or paired)
    return list(results.values())


# ----------------------------------------------------------------------------------------------
# part 2: the server


def serve_child(changes: dict[str, Any], argv: list[str]) -> int:
    patch_session_options(changes)
    from gigastt.cli import main

    return main(argv)


class PatchedServer:
    """``gigastt serve --port 0`` with a session-options set patched in; port from its log."""

    def __init__(self, model_dir: Path, changes: dict[str, Any], threads: int, pool: int) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GIGASTT_")}
        cmd = [sys.executable, __file__, "--serve-child", json.dumps(changes), "--", "serve",
               "--host", "127.0.0.1", "--port", "0", "--model-dir", str(model_dir),
               "--threads", str(threads), "--pool-size", str(pool), "--skip-quantize"]
        self.proc = subprocess.Popen(cmd, cwd=common.ROOT, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.pid = self.proc.pid
        self.host, self.port = "", 0
        self.lines: list[str] = []
        ready = threading.Event()

        def pump() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.append(line)
                match = LISTENING.search(line)
                if match and not self.port:
                    self.host, self.port = match.group(1).strip("[]"), int(match.group(2))
                    ready.set()
            ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(300) or not self.port:
            self.stop()
            raise RuntimeError("server did not start:\n" + "".join(self.lines[-20:]))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def stream_level(server: PatchedServer, n: int, seconds: float,
                 clips: list[common.F32]) -> dict[str, Any]:
    audio = [streaming.stream_audio(i, seconds, clips) for i in range(n)]
    url = f"ws://{server.host}:{server.port}/v1/ws"
    common.reset_peak_rss(server.pid)
    sampler = streaming.RssSampler(server.pid)

    async def all_streams() -> list[streaming.StreamResult]:
        base = time.perf_counter() + 0.2
        return await asyncio.gather(*(
            streaming.run_stream(url, pcm, base + i * streaming.FRAME_S / n, "clips")
            for i, pcm in enumerate(audio)))

    results = asyncio.run(all_streams())
    peak = max(sampler.stop(), common.proc_status(server.pid).get("VmHWM", 0.0))
    latencies = [r.final_latency for r in results]
    return {"streams": n, "peak_rss_mb": peak,
            "final_latency_p50_s": common.median(latencies),
            "final_latency_max_s": max(latencies),
            "errors": sorted({e for r in results for e in r.errors})}


def server_profile(model_dir: Path, name: str, threads: int, seconds: float,
                   clips: list[common.F32]) -> dict[str, Any]:
    server = PatchedServer(model_dir, SETS[name], threads, pool=4)
    try:
        time.sleep(2.0)
        row: dict[str, Any] = {"set": name, "threads": threads,
                               "idle_rss_mb": common.proc_status(server.pid)["VmRSS"],
                               "load_avg": os.getloadavg()[0]}
        for n in (1, 4):
            row[f"streams_{n}"] = stream_level(server, n, seconds, clips)
        row["log_tail"] = [line for line in server.lines if "model loaded" in line][-1:]
        return row
    finally:
        server.stop()


# ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["--bare-child"]:
        return bare_child(json.loads(args_in[1]), Path(args_in[2]), int(args_in[3]))
    if args_in[:1] == ["--serve-child"]:
        return serve_child(json.loads(args_in[1]), args_in[3:])
    parser = common.arg_parser(__doc__.splitlines()[0], default_model="full")
    parser.add_argument("--threads", default="1,2", help="intra-op threads to profile")
    parser.add_argument("--seconds", type=float, default=None,
                        help="audio per stream (default 20, --quick 10)")
    parser.add_argument("--sets", default=",".join(SETS),
                        help=f"option sets of the bare floor (of {', '.join(SETS)})")
    parser.add_argument("--server-sets", default="defaults",
                        help="option sets to run the server with (default: defaults)")
    parser.add_argument("--rounds", type=int, default=None, help="bare timed rounds (default 5)")
    args = parser.parse_args(args_in)
    threads = [int(t) for t in args.threads.split(",")]
    sets = args.sets.split(",")
    server_sets = args.server_sets.split(",")
    for name in (*sets, *server_sets):
        if name not in SETS:
            parser.error(f"unknown set {name!r} (one of {', '.join(SETS)})")
    seconds = args.seconds or (10.0 if args.quick else 20.0)
    rounds = args.rounds or (3 if args.quick else 5)
    model_dir = int8_only_dir()
    try:
        clips = common.golos_clips()
    except FileNotFoundError:
        from gigastt.testing.audio import speech_like

        clips = [speech_like(5.0, seed=i) for i in range(4)]
    info = common.machine_info()
    print(common.machine_line(info))
    print(f"model: INT8-only full-size generated model ({model_dir}); load average at start"
          f" {os.getloadavg()[0]:.2f}\n")
    payload: dict[str, Any] = {"machine": info, "bare": [], "server": []}
    for t in threads:
        bare = bare_floor(model_dir, sets, t, rounds)
        payload["bare"] += bare
        print(f"Bare onnxruntime, --threads {t} (sessions only; encoder over"
              f" {' + '.join(f'{w:g} s' for w in WINDOWS_S)} windows, {rounds} rounds"
              f" side by side; load {os.getloadavg()[0]:.2f}):\n")
        print(common.markdown_table(
            ["options", "RSS loaded MB", "RSS after runs MB", "peak MB", "encoder s",
             f"encoder time vs {sets[0]}", "decode loop s", f"decode time vs {sets[0]}"],
            [[r["set"], common.fmt(r["rss_loaded_mb"], 0), common.fmt(r["rss_run_mb"], 0),
              common.fmt(r["peak_rss_mb"], 0), common.fmt(r["encode_median_s"], 3),
              common.fmt(r["encode_ratio"], 2), common.fmt(r["decode_median_s"], 3),
              common.fmt(r["decode_ratio"], 2)] for r in bare]))
        print()
    rows = []
    for name in server_sets:
        for t in threads:
            row = server_profile(model_dir, name, t, seconds, clips)
            payload["server"].append(row)
            rows.append(row)
    print(f"Server (INT8-only, pool 4, {seconds:g} s real-time streams of Golos clips):\n")
    print(common.markdown_table(
        ["options", "threads", "idle RSS MB", "1 stream peak MB", "4 streams peak MB",
         "final p50 s (1 / 4)", "load"],
        [[r["set"], str(r["threads"]), common.fmt(r["idle_rss_mb"], 0),
          common.fmt(r["streams_1"]["peak_rss_mb"], 0),
          common.fmt(r["streams_4"]["peak_rss_mb"], 0),
          f"{common.fmt(r['streams_1']['final_latency_p50_s'])} /"
          f" {common.fmt(r['streams_4']['final_latency_p50_s'])}",
          common.fmt(r["load_avg"], 1)] for r in rows]))
    errors = [(r["set"], r["threads"], r[f"streams_{n}"]["errors"]) for r in rows
              for n in (1, 4) if r[f"streams_{n}"]["errors"]]
    if errors:
        print(f"\nstream errors: {errors}")
    common.write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
