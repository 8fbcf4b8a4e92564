"""Every benchmark of issue 8 in one command: runs the harnesses, prints one summary table.

    python bench/run.py [--quick] [--model small|medium|full] [--json OUT]

Runs, one after the other on the same model (default ``full``): ``transcribe.py`` (FP32, then
INT8), ``streaming.py`` at 1/4/8/16 streams (FP32, then INT8), ``streaming.py`` with 8 streams
beside a 600 s upload (``--quick``: 120 s), ``fairness.py`` and ``health.py --part rps`` (skipped
when uvicorn is not installed). Each harness's own table goes to stderr as it runs; the summary
on stdout puts every figure next to its target. ``--json OUT`` writes the summary and every
harness's raw JSON. A full-model run takes about half an hour on 2 cores.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common

HERE = Path(__file__).resolve().parent

Row = tuple[str, str, str, bool | None]  # what, measured, target, met (None: no target)


def _run(script: str, out: Path, *args: str) -> dict[str, Any] | None:
    command = [sys.executable, str(HERE / script), *args, "--json", str(out)]
    print(f"$ {' '.join(command[1:])}", file=sys.stderr, flush=True)
    # the harness's own table goes to our stderr: stdout is kept for the summary
    done = subprocess.run(command, stdout=sys.stderr, check=False)
    if done.returncode != 0 or not out.is_file():
        print(f"{script} failed (exit {done.returncode})", file=sys.stderr)
        return None
    loaded: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    return loaded


def _x(value: float) -> str:
    return f"{value:.2f}×"


def transcription_rows(report: dict[str, Any], encoder: str) -> list[Row]:
    rows: list[Row] = []
    by_audio: dict[str, dict[str, dict[str, Any]]] = {}
    for r in report["results"]:
        by_audio.setdefault(r["audio"], {})[r["contender"]] = r
    for audio, peers in by_audio.items():
        ours = peers["gigastt"]["wall_s"]
        rows.append((f"{encoder} file transcription, {audio}: wall ÷ bare-ORT floor",
                     _x(ours / peers["ort-floor"]["wall_s"]), "≤ 1.05×",
                     ours / peers["ort-floor"]["wall_s"] <= 1.05))
        rows.append((f"{encoder} file transcription, {audio}: wall ÷ onnx-asr",
                     _x(ours / peers["onnx-asr"]["wall_s"]), "≤ 0.90×",
                     ours / peers["onnx-asr"]["wall_s"] <= 0.90))
        # Where ÷ onnx-asr is missed: our encoder call alone over onnx-asr's wall is the best
        # ratio reachable without a faster encoder (bench/transcribe.py's profile).
        bound = peers["gigastt"]["stages"]["encoder"] / peers["onnx-asr"]["wall_s"]
        rows.append((f"{encoder} file transcription, {audio}: our encoder alone ÷ onnx-asr",
                     _x(bound), "", None))
        rows.append((f"{encoder} file transcription, {audio}: RTF, peak RSS (floor's)",
                     f"{peers['gigastt']['rtf']:.4f}, {peers['gigastt']['peak_rss_mb']:.0f} MB "
                     f"({peers['ort-floor']['peak_rss_mb']:.0f} MB)", "", None))
    return rows


def streaming_rows(report: dict[str, Any], encoder: str) -> list[Row]:
    levels = {r["streams"]: r for r in report["results"]}
    rows: list[Row] = []
    if 1 in levels and 16 in levels:
        ratio = levels[16]["rss_max_mb"] / levels[1]["rss_max_mb"]
        rows.append((f"{encoder} RSS, 16 real-time streams ÷ 1 stream",
                     f"{_x(ratio)} ({levels[16]['rss_max_mb']:.0f} / "
                     f"{levels[1]['rss_max_mb']:.0f} MB)", "≤ 1.10×", ratio <= 1.10))
    for n, r in sorted(levels.items()):
        rows.append((f"{encoder} {n} streams: final after stop p50 / max, partial interval p50",
                     f"{r['final_latency_p50_s'] * 1e3:.0f} / {r['final_latency_max_s'] * 1e3:.0f}"
                     f" ms, {r['partial_interval_p50_s'] * 1e3:.0f} ms", "", None))
    return rows


def upload_rows(report: dict[str, Any]) -> list[Row]:
    (r,) = report["results"]
    lag = r["loop_lag_p99_ms"]
    beside = f"with {r['streams']} streams and a {report['upload_s']} s upload"
    return [
        (f"event-loop lag p99 (inside the server) {beside}",
         f"{lag:.1f} ms (max {r['loop_lag_max_ms']:.1f}, {r['loop_lag_samples']} samples)",
         "< 20 ms", lag < 20.0),
        (f"/health round trip p99 from another process {beside}",
         f"{r['health_p99_ms']:.1f} ms (max {r['health_max_ms']:.1f}, "
         f"{r['health_probes']} probes)", "", None),
        (f"{r['streams']} streams beside the upload: partial interval p50, final p50",
         f"{r['partial_interval_p50_s'] * 1e3:.0f} ms, {r['final_latency_p50_s'] * 1e3:.0f} ms; "
         f"upload {r['upload_s']:.1f} s", "", None),
    ]


def fairness_rows(report: dict[str, Any]) -> list[Row]:
    alone, beside = report["alone"], report["with upload"]
    ratio = beside["gap_p50"] / alone["gap_p50"]
    return [
        ("one stream's partial gap p50 beside a long upload ÷ alone",
         f"{_x(ratio)} ({beside['gap_p50']:.2f} / {alone['gap_p50']:.2f} s)", "≤ 2×",
         ratio <= 2.0),
        ("the upload beside the stream ÷ alone",
         _x(report["upload_s"] / report["upload_alone_s"]), "", None),
    ]


def health_rows(report: dict[str, Any]) -> list[Row]:
    servers = (report.get("rps") or {}).get("servers", {})
    ours, peer = servers.get("gigastt", {}), servers.get("uvicorn+h11", {})
    if not ours.get("rps") or not peer.get("rps"):
        return [("/health req/s ÷ uvicorn+h11", "not measured", "", None)]
    return [("/health req/s ÷ uvicorn+h11",
             f"{_x(ours['rps'] / peer['rps'])} ({ours['rps']:.0f} / {peer['rps']:.0f})", "",
             None)]


def main(argv: list[str] | None = None) -> int:
    parser = common.arg_parser(__doc__.split("\n", 1)[0], default_model="full")
    args = parser.parse_args(argv)
    model = ["--model", args.model] + (["--quick"] if args.quick else [])
    upload = "120" if args.quick else "600"
    plan: list[tuple[str, str, list[str], Callable[[dict[str, Any]], list[Row]]]] = [
        ("transcribe", "transcribe.py", [], lambda r: transcription_rows(r, "FP32")),
        ("transcribe_int8", "transcribe.py", ["--int8"], lambda r: transcription_rows(r, "INT8")),
        ("streaming", "streaming.py", [], lambda r: streaming_rows(r, "FP32")),
        ("streaming_int8", "streaming.py", ["--int8"], lambda r: streaming_rows(r, "INT8")),
        ("streams_and_upload", "streaming.py", ["--streams", "8", "--upload", upload],
         upload_rows),
        ("fairness", "fairness.py", [], fairness_rows),
    ]
    if importlib.util.find_spec("uvicorn") is not None:
        plan.append(("health", "health.py", ["--part", "rps"], health_rows))
    info = common.machine_info()
    reports: dict[str, Any] = {}
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, script, extra, summarise in plan:
            report = _run(script, Path(tmp) / f"{name}.json", *model, *extra)
            reports[name] = report
            rows += summarise(report) if report else [(f"{script} {' '.join(extra)}", "FAILED",
                                                      "", False)]
    print(f"\n### gigastt benchmarks — model `{args.model}`{' (quick)' if args.quick else ''}\n")
    marks = {True: "yes", False: "**no**", None: ""}
    table = [[what, got, target, marks[met]] for what, got, target, met in rows]
    print(common.markdown_table(["measure", "measured", "target", "met"], table))
    print(f"\nMachine: {common.machine_line(info)}")
    common.write_json(args.json, {"benchmark": "all", "model": args.model, "quick": args.quick,
                                  "machine": info, "summary": [list(r) for r in rows],
                                  "reports": reports})
    return 0 if all(met is not False for *_, met in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
