"""Shared pieces of the benchmark harnesses: generated models, audio, child processes, tables.

Benchmarks, not tests: nothing here asserts on timing. Everything heavy (model directories,
synthetic audio) is generated into a cache outside the repository ($GIGASTT_BENCH_CACHE or
~/.cache/gigastt-bench); the full-size model comes from ``gigastt.testing.models.cached_full_model``
(its own cache, ~/.cache/gigastt-test).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import wave
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np
import numpy.typing as npt

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
# `python bench/x.py` puts bench/ on the path but not the repository (for `gigastt`).
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.serverproc import ServerProcess  # noqa: E402  (needs the repository on the path)

F32 = npt.NDArray[np.float32]
MODELS = ("small", "medium", "full")
# write_small_model arguments of each generated size (full: cached_full_model, the real geometry)
MODEL_SHAPES: dict[str, dict[str, int]] = {
    "small": {},  # write_small_model defaults: d_model 32, 2 layers
    "medium": {"d_model": 256, "layers": 4},
}
INT8_ENCODER = "v3_e2e_rnnt_encoder_int8.onnx"


# ----------------------------------------------------------------------------------------------
# command line, cache, models, audio


def arg_parser(description: str, *, default_model: str = "small") -> argparse.ArgumentParser:
    """The options every harness takes: --quick, --model, --json."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="shorter inputs, fewer repetitions")
    parser.add_argument("--model", choices=MODELS, default=default_model,
                        help=f"generated model size (default {default_model})")
    parser.add_argument("--int8", action="store_true",
                        help="the same model with its encoder quantized to INT8 (quantize extra)")
    parser.add_argument("--json", metavar="OUT", type=Path, default=None,
                        help="also write the results as JSON to OUT")
    return parser


def cache_dir() -> Path:
    env = os.environ.get("GIGASTT_BENCH_CACHE")
    path = Path(env) if env else Path.home() / ".cache" / "gigastt-bench"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _generator_key() -> str:
    """A short hash of the model generator's source: a changed generator gets a fresh directory."""
    source = (ROOT / "gigastt" / "testing" / "models.py").read_bytes()
    return hashlib.sha256(source).hexdigest()[:10]


def model_dir(kind: str, *, int8: bool = False) -> Path:
    """A generated model directory of the given size, built once and cached.

    ``int8``: a sibling directory that links the FP32 files and adds the INT8 encoder that
    ``gigastt quantize`` makes (the engine prefers it); decoder and joint stay FP32, linked under
    onnx-asr's ``*_int8.onnx`` names too, so that every contender runs the same graphs.
    """
    if int8:
        return _int8_dir(kind, model_dir(kind))
    if kind == "full":
        from gigastt.testing.models import cached_full_model

        path = cached_full_model()
    elif kind in MODEL_SHAPES:
        from gigastt.testing.models import write_small_model

        path = cache_dir() / f"{kind}-{_generator_key()}"
        marker = path / ".complete"
        if not marker.is_file():
            write_small_model(path, **MODEL_SHAPES[kind])
            marker.write_text("1\n", encoding="utf-8")
    else:
        raise ValueError(f"unknown model size {kind!r}; one of {MODELS}")
    if (path / INT8_ENCODER).exists():
        # the engine prefers an INT8 encoder when present; these benchmarks measure FP32
        raise RuntimeError(f"{path / INT8_ENCODER} exists: remove it to benchmark the FP32 model")
    return path


def _int8_dir(kind: str, fp32: Path) -> Path:
    from gigastt.store.quantize import quantize_encoder

    path = cache_dir() / f"{kind}-int8-{_generator_key()}"
    marker = path / ".complete"
    if not marker.is_file():
        path.mkdir(parents=True, exist_ok=True)
        for source in fp32.iterdir():
            if source.name.startswith("."):
                continue
            links = [source.name]
            if source.name.endswith(("_decoder.onnx", "_joint.onnx")):
                links.append(source.name.replace(".onnx", "_int8.onnx"))
            for name in links:
                (path / name).unlink(missing_ok=True)
                (path / name).symlink_to(source)
        quantize_encoder(path, force=True)
        marker.write_text("1\n", encoding="utf-8")
    return path


def golos_dir() -> Path:
    """The Golos clips: $GIGASTT_GOLOS_DIR, else shared/fixtures/golos here or one level up."""
    env = os.environ.get("GIGASTT_GOLOS_DIR")
    candidates = [Path(env)] if env else []
    candidates += [ROOT / "shared" / "fixtures" / "golos",
                   ROOT.parent / "shared" / "fixtures" / "golos"]
    for path in candidates:
        if any(path.glob("golos_*.wav")):
            return path
    raise FileNotFoundError("Golos clips not found (set GIGASTT_GOLOS_DIR)")


def vad_model() -> Path:
    """The Silero VAD file: $GIGASTT_VAD_MODEL, else shared/fixtures/vad here or one level up."""
    env = os.environ.get("GIGASTT_VAD_MODEL")
    candidates = [Path(env)] if env else []
    candidates += [ROOT / "shared" / "fixtures" / "vad" / "silero_vad.onnx",
                   ROOT.parent / "shared" / "fixtures" / "vad" / "silero_vad.onnx"]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError("silero_vad.onnx not found (set GIGASTT_VAD_MODEL)")


def read_wav16(path: Path) -> F32:
    """A 16 kHz mono PCM16 WAV read with the standard library, as float32 in [-1, 1)."""
    with wave.open(str(path)) as w:
        if (w.getframerate(), w.getnchannels(), w.getsampwidth()) != (16000, 1, 2):
            raise ValueError(f"{path}: expected 16 kHz mono PCM16")
        data = w.readframes(w.getnframes())
    return np.frombuffer(data, "<i2").astype(np.float32) / np.float32(32768.0)


def golos_clips() -> list[F32]:
    return [read_wav16(p) for p in sorted(golos_dir().glob("golos_*.wav"))]


def synthetic_audio(seconds: int, seed: int) -> Path:
    """``speech_like(seconds, seed=seed)`` at 16 kHz, cached as a .npy file."""
    path = cache_dir() / f"speech-{seconds}s-seed{seed}.npy"
    if not path.is_file():
        from gigastt.testing.audio import speech_like

        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, speech_like(float(seconds), seed=seed))
        tmp.replace(path)
    return path


def pcm16(samples: F32) -> bytes:
    return np.clip(np.round(samples * 32768.0), -32768, 32767).astype("<i2").tobytes()


# ----------------------------------------------------------------------------------------------
# processes: child runs with peak RSS, /proc readings, a server subprocess


CHILD_PREFIX = "@@ "  # the lines of the parent/child protocol; anything else is passed through


def child_reply(payload: dict[str, Any]) -> None:
    """Child side: one protocol line on stdout."""
    print(CHILD_PREFIX + json.dumps(payload, ensure_ascii=False), flush=True)


def own_peak_rss_mb() -> float:
    """Child side: this process's VmHWM (peak RSS since its exec) in MiB."""
    return proc_status(os.getpid()).get("VmHWM", float("nan"))


class Child:
    """A benchmark contender in its own process, driven line by line over stdin/stdout.

    The child answers every command with one ``@@ {json}`` line. Several children can be kept
    alive at once, so that their timed runs can be interleaved round-robin (drift on a shared
    machine then hits every contender alike), while each one's peak RSS stays its own (the
    VmHWM the child reports when it exits; see ``finish``).
    """

    def __init__(self, cmd: Sequence[str]) -> None:
        self.cmd = list(cmd)
        self.proc = subprocess.Popen(self.cmd, cwd=ROOT, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)
        self.peak_rss_mb = float("nan")

    def read(self, timeout: float = 3600.0) -> dict[str, Any]:
        """The next protocol line (other output is echoed to stderr)."""
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            if not line:
                self.proc.wait(timeout)
                raise RuntimeError(f"child exited ({self.proc.returncode}): {' '.join(self.cmd)}")
            if line.startswith(CHILD_PREFIX):
                reply: dict[str, Any] = json.loads(line[len(CHILD_PREFIX):])
                return reply
            sys.stderr.write(line)

    def request(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.read()

    def finish(self) -> dict[str, Any]:
        """Send ``exit``, read the last reply, reap the child and record its peak RSS.

        The peak is the VmHWM the child reports in its last reply (``own_peak_rss_mb``). Not
        ``ru_maxrss``: Linux carries the parent's high-water mark over a fork+exec, so a child's
        ru_maxrss is never below the harness's own RSS at spawn time.
        """
        reply = self.request("exit")
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        _, status, usage = os.wait4(self.proc.pid, 0)
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        self.peak_rss_mb = float(reply.get("peak_rss_mb", usage.ru_maxrss / 1024.0))
        if self.proc.returncode != 0:
            raise RuntimeError(f"child failed ({self.proc.returncode}): {' '.join(self.cmd)}")
        return reply

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def proc_status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of a process in MiB (empty if it is gone)."""
    values: dict[str, float] = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    values[key] = int(rest.split()[0]) / 1024.0
    except OSError:
        pass
    return values


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux ``clear_refs`` 5); False where not permitted."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads) in seconds, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "; field 3 is fields[0]
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


class Server(ServerProcess):
    """``gigastt serve --port 0`` as a subprocess (the test suite's helper), INT8 creation off."""

    def __init__(self, model: Path, *args: str, env: dict[str, str] | None = None) -> None:
        super().__init__(model, "--skip-quantize", *args, env=env)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class WatchedServer(Server):
    """A ``Server`` whose event loop reports its own lag (``bench/looplag``).

    Only the harnesses that read the lag use it: the probe is work the other contenders lack.
    """

    def __init__(self, model: Path, *args: str) -> None:
        fd, lag_file = tempfile.mkstemp(prefix="gigastt-loop-lag-", suffix=".txt")
        os.close(fd)
        self.lag_file = Path(lag_file)
        path = [str(Path(__file__).parent / "looplag"), os.environ.get("PYTHONPATH", "")]
        super().__init__(model, *args, env={"BENCH_LOOP_LAG_FILE": lag_file,
                                            "PYTHONPATH": os.pathsep.join(filter(None, path))})

    def loop_lag(self, since: float, until: float) -> list[float]:
        """The loop's lateness samples (seconds) taken between two ``time.monotonic()`` times.

        The file is flushed once a second: wait a second after ``until`` before calling.
        """
        samples = []
        for line in self.lag_file.read_text(encoding="ascii").splitlines():
            at, lag = line.split()
            if since <= float(at) <= until:
                samples.append(float(lag))
        return samples

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self.lag_file.unlink(missing_ok=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(host: str, port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=1.0).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def http_get_once(host: str, port: int, path: str = "/health", timeout: float = 10.0) -> float:
    """One GET on a fresh connection; returns the latency in seconds (connect to full body)."""
    request = f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode()
    start = time.perf_counter()
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep:
                match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                if match and len(body) >= int(match.group(1)):
                    break
    elapsed = time.perf_counter() - start
    if not data.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"unexpected reply: {data[:80]!r}")
    return elapsed


@dataclass
class Prober:
    """Probes ``GET /health`` on fresh connections every ``interval`` s in a thread."""

    host: str
    port: int
    interval: float = 0.02
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.latencies.append(http_get_once(self.host, self.port))
            except (OSError, RuntimeError):
                self.errors += 1
            self._stop.wait(self.interval)

    def start(self) -> Prober:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[float]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        return self.latencies


# ----------------------------------------------------------------------------------------------
# statistics, tables, JSON


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def fmt(value: float | int | str | None, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    if value != value:  # NaN
        return "–"
    return f"{value:.{digits}f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table; numeric-looking columns are right-aligned."""
    def numeric(col: int) -> bool:
        cells = [r[col] for r in rows if r[col] not in ("", "–")]
        return bool(cells) and all(re.fullmatch(r"[-+]?[\d.,]+[×%]?", c) for c in cells)

    align = ["---:" if numeric(i) else "---" for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gib() -> float:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 1024.0 / 1024.0
    except OSError:
        pass
    return float("nan")


def machine_info() -> dict[str, Any]:
    import onnxruntime

    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)),
        "cpu": _cpu_model(),
        "mem_gib": round(_mem_total_gib(), 1),
        "loadavg": os.getloadavg(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
    }
    return info


def machine_line(info: dict[str, Any]) -> str:
    load = ", ".join(f"{x:.2f}" for x in info["loadavg"])
    return (f"{info['cpu']}, {info['affinity']} cores, {info['mem_gib']} GiB; "
            f"Python {info['python']}, onnxruntime {info['onnxruntime']}, numpy {info['numpy']}; "
            f"load average at start {load}")


def write_json(path: Path | None, payload: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"\nJSON written to {path}", file=sys.stderr)


# ----------------------------------------------------------------------------------------------
# a /health prober in its own process (free of the client's GIL and event loop)


class ProbeProcess:
    """``GET /health`` on a fresh connection every ``interval`` s, from a separate process."""

    def __init__(self, host: str, port: int, interval: float) -> None:
        self.child = Child([sys.executable, str(Path(__file__).resolve()), "probe", host,
                            str(port), str(interval)])
        self.child.read()  # started

    def stop(self) -> tuple[list[float], int]:
        """Latencies in seconds, and the number of failed probes."""
        reply = self.child.finish()
        return [float(x) for x in reply["latencies"]], int(reply["errors"])


def _probe_main(host: str, port: int, interval: float) -> None:
    prober = Prober(host, port, interval).start()
    child_reply({"started": True})
    sys.stdin.readline()  # any line (or EOF) stops the probing
    latencies = prober.stop()
    child_reply({"latencies": latencies, "errors": prober.errors})


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "probe":
        _probe_main(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
    else:
        sys.exit("usage: common.py probe HOST PORT INTERVAL (used by the harnesses)")
