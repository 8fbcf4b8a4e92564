"""Long audio at flat memory (issue 19, D30): a 2-hour file through the CLI and through a job.

Owns the long-audio acceptance table: RTF and peak RSS of a 2-hour ``speech_like`` WAV against
a 60 s one, through ``gigastt transcribe`` and through ``POST /v1/jobs`` on a fresh server.

The issue's targets, for the long file on the medium or full generated model:

- RTF ≤ 1.10 × the 60 s file's RTF on the same path (CLI or job);
- peak RSS ≤ the 60 s file's peak + the long file's bytes + 150 MB (150 × 10⁶ bytes).

Figures:

- RTF, CLI: the span the child's summary line "transcribed … in T s (real-time factor R)"
  times (from after the model is loaded), taken from the millisecond timestamps of its "model
  loaded" line and of the summary line, ÷ audio seconds — T and R are rounded to 0.1 s and
  0.001, ±10 % for a 60 s file at RTF 0.005; R is used if the timestamps disagree with T. RTF,
  job: (finished − started) ÷ duration from ``GET /v1/jobs/{id}`` (the server loads its model
  before it listens).
- Peak RSS, CLI: ``ru_maxrss`` of the CLI's process, read by a bare wrapper process (``python
  -I -S``, a few MB) that spawns it and calls ``getrusage(RUSAGE_CHILDREN)``. Linux carries the
  parent's high-water mark over fork+exec, so the figure is max(the wrapper's RSS, the CLI's
  peak) — the CLI's own. Peak RSS, job: the server's VmHWM read once the job is done (before
  the result is fetched), on a fresh server per measured file, so each peak is that file's.
  Beside it, "job: peak at 202": the VmHWM right after the ``202``, i.e. what storing the
  upload cost (the job may have begun its first windows by then), to tell the two apart.
- Every "MB" is MiB (2^20 bytes); the 150 MB allowance is 150 × 10⁶ bytes = 143.1 MiB.
- With ``--runs N``: the files alternate within a round (60 s first in even rounds, the long
  file first in odd ones); RTF is the median, the long file's peak the largest and the 60 s
  file's the smallest (the strict reading).

The WAVs (16 kHz mono PCM16) are generated into the bench cache in 60 s pieces of
``speech_like`` with seeds 0, 1, 2, …, header first with the final sizes, and reused when a file
of that length is there; they are never committed.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import common

RATE = 16_000
PIECE_SECONDS = 60  # speech_like is generated and written this many seconds at a time
BASE_SECONDS = 60  # the reference file
RTF_RATIO_MAX = 1.10
RSS_ALLOWANCE_MB = 150e6 / 2**20  # the 150 MB, in MiB
MIB = 2**20
POLL_SECS = 1.0
# The CLI's summary line (gigastt/cli.py _transcribe), logged after the last window.
SUMMARY = re.compile(r"transcribed ([\d.]+) s of audio into (\d+) words in ([\d.]+) s "
                     r"\(real-time factor ([\d.]+)\)")
# A log line's timestamp (gigastt/cli.py: ISO 8601 to the millisecond, UTC); the model loaded.
STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z ", re.M)
LOADED = re.compile(r"^(\S+)Z INFO gigastt\.engine\.model: model loaded ", re.M)
# The wrapper that runs the CLI: as small as Python gets, so that the ru_maxrss the CLI inherits
# from it (Linux carries it over fork+exec) stays below the CLI's own peak.
WRAPPER = """\
import os, resource, sys, time
t = time.monotonic()
pid = os.posix_spawn(sys.argv[1], sys.argv[1:], os.environ)
_, status = os.waitpid(pid, 0)
wall = time.monotonic() - t
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
sys.stderr.write('@@ {"exit": %d, "maxrss_kib": %d, "wall": %.3f}\\n'
                 % (os.waitstatus_to_exitcode(status), peak, wall))
"""


# ----------------------------------------------------------------------------------------------
# audio


def wav_header(n_samples: int) -> bytes:
    """The 44-byte header of a 16 kHz mono PCM16 WAV holding ``n_samples`` samples."""
    data = 2 * n_samples
    return (b"RIFF" + struct.pack("<I", 36 + data) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, RATE, 2 * RATE, 2, 16)
            + b"data" + struct.pack("<I", data))


def long_wav(seconds: int) -> Path:
    """``seconds`` of speech-like audio as a WAV in the bench cache, made once per length.

    Written piece by piece (never more than one piece in memory); the header carries the final
    sizes from the start. A partly written file never has the final name.
    """
    n_samples = seconds * RATE
    path = common.cache_dir() / f"longaudio-{seconds}s.wav"
    if path.is_file() and path.stat().st_size == 44 + 2 * n_samples:
        return path
    from gigastt.testing.audio import speech_like

    print(f"generating {path} ({seconds} s)", file=sys.stderr, flush=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(wav_header(n_samples))
        for seed, start in enumerate(range(0, seconds, PIECE_SECONDS)):
            piece = min(PIECE_SECONDS, seconds - start)
            f.write(common.pcm16(speech_like(float(piece), seed=seed)))
    tmp.replace(path)
    return path


# ----------------------------------------------------------------------------------------------
# one measured run


@dataclass
class Run:
    path: str  # "cli" or "job"
    audio_s: float
    input_bytes: int
    rtf: float
    wall_s: float  # cli: the whole child (start, model load, run); job: POST to done
    peak_rss_mb: float
    words: int
    ok: bool
    note: str = ""
    peak_at_202_mb: float = float("nan")  # job: the server's VmHWM when the upload is stored


def _env() -> dict[str, str]:
    # As tests/serverproc.py: the machine's GIGASTT_* settings must not change the measured run.
    return {k: v for k, v in os.environ.items() if not k.startswith("GIGASTT_")}


def _timeout(audio_s: float) -> float:
    """At least an hour; more than any plausible RTF on a slow, shared machine."""
    return 3600.0 + 2.0 * audio_s


def _parse_stamp(text: str) -> float:
    return datetime.fromisoformat(text + "+00:00").timestamp()


def stamp(log: str, at: int) -> float | None:
    """The timestamp of the log line holding offset ``at``."""
    line_start = log.rfind("\n", 0, at) + 1
    match = STAMP.match(log, line_start)
    return _parse_stamp(match.group(1)) if match else None


def run_cli(model: Path, wav: Path, audio_s: float) -> Run:
    cmd = [sys.executable, "-I", "-S", "-c", WRAPPER, sys.executable, "-m", "gigastt",
           "--log-level", "info", "transcribe", str(wav), "--model-dir", str(model),
           "--format", "json", "--max-audio-secs", "0"]
    with tempfile.TemporaryFile() as out:
        proc = subprocess.run(cmd, cwd=common.ROOT, env=_env(), stdout=out,
                              stderr=subprocess.PIPE, text=True, timeout=_timeout(audio_s),
                              check=False)
        out.seek(0)
        try:
            words = len(json.load(out)["words"])
        except (ValueError, KeyError, TypeError):
            words = 0
    reports = [line for line in proc.stderr.splitlines() if line.startswith(common.CHILD_PREFIX)]
    if proc.returncode != 0 or not reports:
        raise RuntimeError(f"wrapper failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    report = json.loads(reports[-1][len(common.CHILD_PREFIX):])
    match = SUMMARY.search(proc.stderr)
    ok = report["exit"] == 0 and match is not None
    rtf, note = float("nan"), ""
    if match is None:
        note = f"exit {report['exit']}, no summary line: {proc.stderr[-2000:]}"
    else:
        seconds, logged_words, elapsed, logged_rtf = (float(match.group(1)), int(match.group(2)),
                                                      float(match.group(3)),
                                                      float(match.group(4)))
        rtf = logged_rtf
        # The log rounds to 0.1 s and 0.001 (±10 % for a 60 s file at RTF 0.005); its
        # millisecond timestamps, from "model loaded" (the last thing before the clock starts)
        # to this line, time the same span finely.
        loaded = LOADED.search(proc.stderr)
        done = stamp(proc.stderr, match.start())
        if loaded is not None and done is not None and seconds:
            span = done - _parse_stamp(loaded.group(1))
            if abs(span - elapsed) <= 0.06 + 0.01 * elapsed:
                rtf = span / seconds
            else:
                note = f"log timestamps give {span:.3f} s, the summary {elapsed} s"
        if logged_words != words:
            note = f"log says {logged_words} words, JSON has {words}"
        if abs(seconds - audio_s) > 0.1:
            ok, note = False, f"transcribed {seconds} s of {audio_s} s"
    return Run("cli", audio_s, wav.stat().st_size, rtf, float(report["wall"]),
               report["maxrss_kib"] / 1024.0, words, ok and words > 0, note)


def _post_file(server: common.Server, path: Path, timeout: float) -> http.client.HTTPResponse:
    """``POST /v1/jobs`` with the file streamed from disk (the harness never holds it)."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=timeout,
                                      blocksize=MIB)
    with open(path, "rb") as body:
        conn.request("POST", "/v1/jobs?format=json", body=body,
                     headers={"content-length": str(path.stat().st_size),
                              "content-type": "audio/wav"})
    return conn.getresponse()


def run_job(model: Path, wav: Path, audio_s: float) -> Run:
    size = wav.stat().st_size
    jobs = Path(tempfile.mkdtemp(prefix="longaudio-jobs-", dir=common.cache_dir()))
    try:
        # --body-limit-bytes: the whole file and a margin (the server caps it at 1 GiB, ~9 h);
        # --max-audio-secs 0: --hours may go past the default 4 h cap.
        with common.Server(model, "--jobs-dir", str(jobs), "--body-limit-bytes",
                           str(size + MIB), "--max-audio-secs", "0") as server:
            t0 = time.monotonic()
            response = _post_file(server, wav, timeout=600.0)
            accepted = response.read()
            if response.status != 202:
                raise RuntimeError(f"POST /v1/jobs: {response.status} {accepted[:300]!r}")
            job_id = json.loads(accepted)["id"]
            # Splits the peak: storing the upload vs recognising it (the job has barely begun).
            at_202 = common.proc_status(server.pid).get("VmHWM", float("nan"))
            deadline = t0 + _timeout(audio_s)
            while True:
                status = server.request("GET", f"/v1/jobs/{job_id}").json()
                assert isinstance(status, dict)
                if status["status"] not in ("queued", "running"):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"job not done after {_timeout(audio_s):.0f} s: {status}")
                time.sleep(POLL_SECS)
            wall = time.monotonic() - t0
            peak = common.proc_status(server.pid).get("VmHWM", float("nan"))
            words, note = 0, ""
            ok = status["status"] == "done"
            if ok:
                result = server.request("GET", f"/v1/jobs/{job_id}/result", timeout=600.0)
                ok = result.status == 200
                body = result.json() if ok else {}
                words = len(body["words"]) if isinstance(body, dict) else 0
                if not ok:
                    note = f"result: {result.status} {result.body[:200]!r}"
            else:
                note = f"job {status['status']}: {status.get('error')}"
            duration = float(status["duration"] or 0.0)
            rtf = ((float(status["finished"]) - float(status["started"])) / duration
                   if ok and duration else float("nan"))
            if ok and abs(duration - audio_s) > 0.1:
                ok, note = False, f"job says {duration} s of {audio_s} s"
    finally:
        shutil.rmtree(jobs, ignore_errors=True)
    return Run("job", audio_s, size, rtf, wall, peak, words, ok and words > 0, note, at_202)


# ----------------------------------------------------------------------------------------------
# the table


def summarize(runs: list[Run], long_s: float) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for path in ("cli", "job"):
        base = [r for r in runs if r.path == path and r.audio_s == BASE_SECONDS]
        long = [r for r in runs if r.path == path and r.audio_s == long_s]
        base_rtf = common.median([r.rtf for r in base])
        base_peak = min(r.peak_rss_mb for r in base) if base else float("nan")
        for audio_s, group in ((float(BASE_SECONDS), base), (long_s, long)):
            if not group:
                continue
            is_long = audio_s == long_s
            rtf = common.median([r.rtf for r in group])
            peak = (max if is_long else min)(r.peak_rss_mb for r in group)
            input_mb = group[0].input_bytes / MIB
            row: dict[str, Any] = {
                "path": path, "audio_s": audio_s, "rtf": rtf,
                "wall_s": common.median([r.wall_s for r in group]),
                "peak_rss_mb": peak, "input_mb": input_mb,
                "peak_at_202_mb": (max if is_long else min)(r.peak_at_202_mb for r in group),
                "words": min(r.words for r in group), "ok": all(r.ok for r in group),
                "notes": [r.note for r in group if r.note],
                "rtf_ratio": None, "allowed_peak_mb": None, "verdict": "baseline",
            }
            if is_long:
                ratio = rtf / base_rtf
                allowed = base_peak + input_mb + RSS_ALLOWANCE_MB
                misses = [what for what, missed in (("RTF", not ratio <= RTF_RATIO_MAX),
                                                    ("RSS", not peak <= allowed),
                                                    ("result", not row["ok"])) if missed]
                row.update(rtf_ratio=ratio, allowed_peak_mb=allowed,
                           verdict="FAIL: " + ", ".join(misses) if misses else "pass")
            elif not row["ok"]:
                row["verdict"] = "FAIL: result"
            rows.append(row)
    return rows


def audio_label(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:.0f} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:.0f} min" if seconds > 60 else "60 s"
    return f"{seconds:.0f} s"


def print_table(rows: list[dict[str, Any]], title: str) -> None:
    headers = ["path", "audio", "RTF", "RTF ratio long/60s", "peak RSS MB",
               "allowed peak MB (60 s peak + input + 150 MB)", "input MB", "wall s", "words",
               "verdict", "job: peak at 202 MB"]
    cells = [[r["path"], audio_label(r["audio_s"]), common.fmt(r["rtf"], 4),
              common.fmt(r["rtf_ratio"], 3) + ("×" if r["rtf_ratio"] is not None else ""),
              common.fmt(r["peak_rss_mb"], 1), common.fmt(r["allowed_peak_mb"], 1),
              common.fmt(r["input_mb"], 1), common.fmt(r["wall_s"], 1), str(r["words"]),
              r["verdict"], common.fmt(r["peak_at_202_mb"], 1)] for r in rows]
    print(title)
    print()
    print(common.markdown_table(headers, cells))
    for r in rows:
        for note in r["notes"]:
            print(f"NOTE {r['path']} {audio_label(r['audio_s'])}: {note}")


def main(argv: list[str] | None = None) -> int:
    parser = common.arg_parser(__doc__.split("\n", 1)[0], default_model="medium")
    parser.add_argument("--hours", type=float, default=None,
                        help="length of the long file in hours (default 2; --quick: 10 min)")
    parser.add_argument("--runs", type=int, default=1,
                        help="rounds; files alternate within each (default 1)")
    parser.add_argument("--only", choices=("cli", "job"), default=None,
                        help="measure one path only")
    args = parser.parse_args(argv)
    hours = args.hours if args.hours is not None else (1 / 6 if args.quick else 2.0)
    long_s = round(hours * 3600)
    if long_s <= BASE_SECONDS:
        parser.error("--hours: the long file must be longer than 60 s")
    command = shlex.join([Path(sys.executable).name, *sys.argv])
    info = common.machine_info()
    model = common.model_dir(args.model, int8=args.int8)
    files = {float(BASE_SECONDS): long_wav(BASE_SECONDS), float(long_s): long_wav(long_s)}
    paths = [args.only] if args.only else ["cli", "job"]
    runs: list[Run] = []
    for round_no in range(args.runs):
        order = sorted(files, reverse=bool(round_no % 2))
        for path in paths:
            for audio_s in order:
                started = time.monotonic()
                run = (run_cli if path == "cli" else run_job)(model, files[audio_s], audio_s)
                runs.append(run)
                print(f"round {round_no + 1}/{args.runs} {path} {audio_label(audio_s)}: "
                      f"RTF {run.rtf:.4f}, peak {run.peak_rss_mb:.1f} MB, {run.words} words"
                      f" ({time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)
    rows = summarize(runs, float(long_s))
    # Same audio, same model, same windows: the CLI and the job must find the same words.
    counts = {(r.path, r.audio_s): r.words for r in runs}
    same_words = all(counts[("cli", a)] == counts[("job", a)] for a in files
                     if ("cli", a) in counts and ("job", a) in counts)
    load_end = os.getloadavg()
    precision = "INT8 encoder" if args.int8 else "FP32"
    print_table(rows, f"Long audio (issue 19): model {args.model} ({precision}), "
                      f"{audio_label(long_s)} vs 60 s, {args.runs} run(s); "
                      f"targets: RTF ratio ≤ {RTF_RATIO_MAX:.2f}×, peak ≤ allowed")
    print()
    if len(paths) == 2:
        print(f"same word count through the CLI and the job: {'yes' if same_words else 'NO'}")
    print(f"command: {command}")
    print(f"machine: {common.machine_line(info)}; at end "
          + ", ".join(f"{x:.2f}" for x in load_end))
    common.write_json(args.json, {
        "command": command, "model": args.model, "int8": args.int8, "long_seconds": long_s,
        "runs": [asdict(r) for r in runs], "rows": rows, "machine": info,
        "loadavg_end": load_end, "same_words": same_words,
    })
    failed = any(r["verdict"].startswith("FAIL") for r in rows) or not same_words
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
