"""File transcription: real-time factor and peak RSS of our engine vs onnx-asr vs bare onnxruntime.

    python bench/transcribe.py [--quick] [--model small|medium|full] [--runs N] [--json OUT]

Contenders, all on the same generated model directory and the same audio, each in its own
process (so that its peak RSS is its own):

* ``gigastt``   — ``Recognizer(GigaamModel(dir)).transcribe(samples)`` on each whole file;
* ``onnx-asr``  — ``onnx_asr.load_model("gigaam-v3-e2e-rnnt", dir).recognize(window)`` with its
  default session options and the directory's config.json (max_tokens_per_step 10);
* ``ort-floor`` — the same log-mel (``gigastt.engine.features.log_mel``), the encoder and a
  minimal per-frame greedy loop written inline with plain ``InferenceSession.run`` calls and
  default session options: what any Python program has to spend.

The exported encoder cannot take more than 200 s (5000 rotary positions) and long inputs are
better recognised in windows anyway, so onnx-asr and the floor are given exactly the windows our
recognizer cuts (``split_windows``: ≤ 20 s, cut at the quietest frame): the three do the same
encoder work. The three children are loaded one after the other and each makes one warm-up pass
(excluded); then ``--runs`` rounds, each timing one pass of every contender in rotated order, so
that drift on a shared machine hits all three alike. The table shows the medians and their
ratios. Benchmarks, not tests: no timing is asserted anywhere.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import common
import numpy as np

CONTENDERS = ("gigastt", "onnx-asr", "ort-floor")
F32 = common.F32


# ----------------------------------------------------------------------------------------------
# child side: one contender, one audio set


def _load_audio(spec: str) -> list[F32]:
    """``golos`` (the 15 clips, one file each) or the path of a cached .npy file."""
    if spec == "golos":
        return common.golos_clips()
    return [np.load(spec).astype(np.float32, copy=False)]


def _windows(samples: F32) -> list[F32]:
    from gigastt.engine.recognizer import split_windows

    return [samples[w.start : w.stop] for w in split_windows(samples)]


class _Ours:
    def __init__(self, model_dir: Path) -> None:
        from gigastt.engine import recognizer as recognizer_module
        from gigastt.engine.model import GigaamModel
        from gigastt.engine.recognizer import Recognizer

        self.recognizer = Recognizer(GigaamModel(model_dir))
        self.stages = {"features": 0.0, "encoder": 0.0, "decode": 0.0}
        self._time_stage("features", recognizer_module, "log_mel")
        self._time_stage("encoder", self.recognizer.model, "encode")

    def _time_stage(self, stage: str, owner: Any, name: str) -> None:
        """Wrap ``owner.name`` to add its time to ``stage`` (the engine's code runs unchanged)."""
        inner = getattr(owner, name)

        def timed(*args: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return inner(*args)
            finally:
                self.stages[stage] += time.perf_counter() - t0

        setattr(owner, name, timed)

    def transcribe(self, samples: F32) -> str:
        t0 = time.perf_counter()
        before = self.stages["features"] + self.stages["encoder"]
        text = self.recognizer.transcribe(samples).text
        # decode: everything else (greedy search, words, text)
        spent = self.stages["features"] + self.stages["encoder"] - before
        self.stages["decode"] += time.perf_counter() - t0 - spent
        return text


class _OnnxAsr:
    def __init__(self, model_dir: Path) -> None:
        import onnx_asr

        int8 = (model_dir / common.INT8_ENCODER).is_file()
        self.model = onnx_asr.load_model("gigaam-v3-e2e-rnnt", str(model_dir),
                                         quantization="int8" if int8 else None)

    def transcribe(self, samples: F32) -> str:
        return "".join(str(self.model.recognize(w, sample_rate=16000)) for w in _windows(samples))


class _Floor:
    """Features + encoder + the textbook greedy loop, nothing else (timed per stage)."""

    def __init__(self, model_dir: Path) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3

        def session(name: str) -> Any:
            return ort.InferenceSession(str(model_dir / name), options,
                                        providers=["CPUExecutionProvider"])

        int8 = model_dir / common.INT8_ENCODER
        self.encoder = session(int8.name if int8.is_file() else "v3_e2e_rnnt_encoder.onnx")
        self.decoder = session("v3_e2e_rnnt_decoder.onnx")
        self.joint = session("v3_e2e_rnnt_joint.onnx")
        lines = (model_dir / "v3_e2e_rnnt_vocab.txt").read_text(encoding="utf-8").splitlines()
        self.pieces = [line.rsplit(" ", 1)[0] for line in lines]
        self.blank = len(self.pieces) - 1
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
        self.max_symbols = int(config.get("max_tokens_per_step", 10))
        self.hidden = int(self.decoder.get_inputs()[1].shape[2])
        self.stages = {"features": 0.0, "encoder": 0.0, "decode": 0.0}

    def _window(self, samples: F32) -> list[int]:
        from gigastt.engine.features import log_mel

        t0 = time.perf_counter()
        feats = log_mel(samples)[None]
        t1 = time.perf_counter()
        if feats.shape[2] == 0:
            return []
        length = np.array([feats.shape[2]], dtype=np.int64)
        encoded, encoded_len = self.encoder.run(
            ["encoded", "encoded_len"], {"audio_signal": feats, "length": length})
        t2 = time.perf_counter()
        enc = encoded[0, :, : int(encoded_len[0])]
        state = np.zeros((1, 1, self.hidden), dtype=np.float32)
        token = np.array([[self.blank]], dtype=np.int64)
        dec, h, c = self.decoder.run(["dec", "h", "c"], {"x": token, "h.1": state, "c.1": state})
        dec_col = dec.transpose(0, 2, 1)
        ids: list[int] = []
        for t in range(enc.shape[1]):
            frame = enc[None, :, t : t + 1]
            for _ in range(self.max_symbols):
                (scores,) = self.joint.run(["joint"], {"enc": frame, "dec": dec_col})
                k = int(scores.argmax())
                if k == self.blank:
                    break
                ids.append(k)
                token[0, 0] = k
                dec, h, c = self.decoder.run(["dec", "h", "c"], {"x": token, "h.1": h, "c.1": c})
                dec_col = dec.transpose(0, 2, 1)
        t3 = time.perf_counter()
        self.stages["features"] += t1 - t0
        self.stages["encoder"] += t2 - t1
        self.stages["decode"] += t3 - t2
        return ids

    def transcribe(self, samples: F32) -> str:
        ids = [i for w in _windows(samples) for i in self._window(w)]
        return "".join(self.pieces[i] for i in ids).replace("▁", " ").strip()


def _current_rss_mb() -> float:
    import os

    return common.proc_status(os.getpid()).get("VmRSS", float("nan"))


def child(contender: str, model_dir: Path, audio: str) -> None:
    """Load, warm up, then answer ``run`` (one timed pass) and ``exit`` commands on stdin."""
    files = _load_audio(audio)
    t0 = time.perf_counter()
    engine: _Ours | _OnnxAsr | _Floor
    if contender == "gigastt":
        engine = _Ours(model_dir)
    elif contender == "onnx-asr":
        engine = _OnnxAsr(model_dir)
    else:
        engine = _Floor(model_dir)
    load_s = time.perf_counter() - t0
    load_rss = _current_rss_mb()
    texts = [engine.transcribe(x) for x in files]  # warm-up, excluded
    common.child_reply({
        "load_s": load_s,
        "load_rss_mb": load_rss,
        # spaces differ between detokenisers (onnx-asr drops the one before punctuation)
        "text_key": "".join(t.replace(" ", "") for t in texts),
        "chars": sum(len(t) for t in texts),
    })
    for command in sys.stdin:
        if command.strip() != "run":
            break
        if not isinstance(engine, _OnnxAsr):
            engine.stages = dict.fromkeys(engine.stages, 0.0)
        start = time.perf_counter()
        for x in files:
            engine.transcribe(x)
        elapsed = time.perf_counter() - start
        stages = {} if isinstance(engine, _OnnxAsr) else dict(engine.stages)
        common.child_reply({"time": elapsed, "stages": stages})
    common.child_reply({"rss_mb": _current_rss_mb(), "peak_rss_mb": common.own_peak_rss_mb()})


# ----------------------------------------------------------------------------------------------
# parent side


def _audio_sets(quick: bool) -> list[tuple[str, str, float]]:
    """(label, child spec, seconds of audio)."""
    sets = [("golos ×15", "golos", sum(x.shape[0] for x in common.golos_clips()) / 16000.0)]
    durations = (60,) if quick else (60, 600)
    for seconds in durations:
        sets.append((f"synthetic {seconds} s", str(common.synthetic_audio(seconds, seed=seconds)),
                     float(seconds)))
    return sets


def _measure(label: str, spec: str, seconds: float, model: Path, contenders: list[str],
             runs: int) -> list[dict[str, Any]]:
    """All contenders on one audio set: loaded one after the other, timed runs interleaved."""
    children: dict[str, common.Child] = {}
    ready: dict[str, dict[str, Any]] = {}
    try:
        for contender in contenders:
            print(f"  {label}: loading {contender} ...", file=sys.stderr, flush=True)
            children[contender] = common.Child(
                [sys.executable, str(Path(__file__).resolve()), "--child", contender,
                 "--model-dir", str(model), "--audio", spec])
            ready[contender] = children[contender].read()
        times: dict[str, list[float]] = {c: [] for c in contenders}
        stages: dict[str, list[dict[str, float]]] = {c: [] for c in contenders}
        for i in range(runs):
            order = contenders[i % len(contenders):] + contenders[: i % len(contenders)]
            print(f"  {label}: run {i + 1}/{runs}", file=sys.stderr, flush=True)
            for contender in order:  # rotated each round: no contender always goes first
                reply = children[contender].request("run")
                times[contender].append(reply["time"])
                if reply["stages"]:
                    stages[contender].append(reply["stages"])
        for child_proc in children.values():
            child_proc.finish()
    finally:
        for child_proc in children.values():
            child_proc.kill()
    rows: list[dict[str, Any]] = []
    for contender in contenders:
        wall = common.median(times[contender])
        r = ready[contender]
        row: dict[str, Any] = {
            "audio": label, "audio_s": seconds, "contender": contender,
            "wall_s": wall, "rtf": wall / seconds, "times": times[contender],
            "peak_rss_mb": children[contender].peak_rss_mb, "load_rss_mb": r["load_rss_mb"],
            "load_s": r["load_s"], "chars": r["chars"], "text_key": r["text_key"],
        }
        if stages[contender]:
            row["stages"] = {k: common.median([s[k] for s in stages[contender]])
                             for k in stages[contender][0]}
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = common.arg_parser(__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=None,
                        help="timed runs per contender (default 5, --quick 3, full model 3)")
    parser.add_argument("--only", choices=CONTENDERS, action="append", default=None,
                        help="run only these contenders (repeatable)")
    parser.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--audio", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.model_dir, args.audio)
        return 0

    runs = args.runs or (3 if args.quick or args.model == "full" else 5)
    contenders = [c for c in CONTENDERS if not args.only or c in args.only]
    info = common.machine_info()
    model = common.model_dir(args.model, int8=args.int8)
    encoder = "INT8" if args.int8 else "FP32"
    print(f"model {args.model} ({encoder} encoder): {model}", file=sys.stderr)
    results: list[dict[str, Any]] = []
    for label, spec, seconds in _audio_sets(args.quick):
        results += _measure(label, spec, seconds, model, contenders, runs)

    headers = ["audio", "contender", "audio s", "wall s (median)", "min s", "RTF", "÷ floor",
               "÷ onnx-asr", "peak RSS MB", "RSS after load MB", "load s", "same text"]
    rows: list[list[str]] = []
    for row in results:
        peers = {r["contender"]: r for r in results if r["audio"] == row["audio"]}
        floor, asr, ours = peers.get("ort-floor"), peers.get("onnx-asr"), peers.get("gigastt")
        same = "–" if ours is None else ("yes" if row["text_key"] == ours["text_key"] else "NO")
        rows.append([
            row["audio"], row["contender"], common.fmt(row["audio_s"], 1),
            common.fmt(row["wall_s"], 3), common.fmt(min(row["times"]), 3),
            common.fmt(row["rtf"], 4),
            common.fmt(row["wall_s"] / floor["wall_s"] if floor else None) + "×",
            common.fmt(row["wall_s"] / asr["wall_s"] if asr else None) + "×",
            common.fmt(row["peak_rss_mb"], 0), common.fmt(row["load_rss_mb"], 0),
            common.fmt(row["load_s"], 2), same,
        ])
    rows = [[c.replace("–×", "–") for c in r] for r in rows]
    print(f"\n### File transcription — model `{args.model}`, {encoder} encoder, median of {runs}"
          " runs\n")
    print(common.markdown_table(headers, rows))
    staged = [r for r in results if "stages" in r]
    if staged:
        # Every contender makes the same encoder calls; what is left is each one's own. Our encoder
        # time over onnx-asr's wall is the best ratio any code around this encoder could reach.
        print("\nWhere the time goes (median seconds per pass; bound = our encoder time"
              " ÷ onnx-asr's wall):\n")
        stage_rows = []
        for r in staged:
            asr = next((a for a in results if a["audio"] == r["audio"]
                        and a["contender"] == "onnx-asr"), None)
            bound = r["stages"]["encoder"] / asr["wall_s"] if asr else None
            stage_rows.append([
                r["audio"], r["contender"],
                *(common.fmt(r["stages"][k], 3) for k in ("features", "encoder", "decode")),
                common.fmt(r["stages"]["encoder"] / r["wall_s"] * 100, 0) + "%",
                (common.fmt(bound) + "×") if r["contender"] == "gigastt" and bound else "–"])
        print(common.markdown_table(["audio", "contender", "features s", "encoder s",
                                     "greedy loop s", "encoder share", "bound ÷ onnx-asr"],
                                    stage_rows))
    print(f"\nMachine: {common.machine_line(info)}")
    for r in results:
        r.pop("text_key")
    common.write_json(args.json, {"benchmark": "transcribe", "model": args.model,
                                  "encoder": encoder.lower(),
                                  "model_dir": str(model), "runs": runs, "machine": info,
                                  "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
