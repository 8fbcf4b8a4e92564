"""File transcription: real-time factor and peak RSS of our engine vs onnx-asr vs bare onnxruntime.

    python bench/transcribe.py [--quick] [--model small|medium|full] [--runs N] [--json OUT]
    python bench/transcribe.py --vad [SILERO_ONNX] [--model ...] [--runs N]   # D28: VAD on/off
    python bench/transcribe.py --heads [--model small|full] [--runs N]   # D29: a row per head
    python bench/transcribe.py --hotwords [--model small|full] [--runs N]   # D29: biasing cost

``--heads``: our engine on each of the four GigaAM v3 heads (generated, the same encoder
geometry; full = 16 × 768), each in its own process over the same audio (the 15 Golos clips
and 60 s of synthetic speech): RTF and peak RSS, CTC vs RNN-T. ``--hotwords``: in one process,
the decoding time of the same encoder output without hotwords and with 100 phrases (RNN-T:
greedy vs shallow fusion; CTC: greedy vs the biased beam search), and the whole-file time.

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
recognizer cuts (``split_windows``: ≤ 20 s with their context, cut at the quietest frame): the
three do the same encoder work. The three children are loaded one after the other and each makes
one warm-up pass (excluded); then ``--runs`` rounds, each timing one pass of every contender in
rotated order, so that drift on a shared machine hits all three alike. The table shows the
medians and their ratios. Benchmarks, not tests: no timing is asserted anywhere.
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

    return [samples[w.audio_start : w.audio_stop] for w in split_windows(samples)]


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


# ----------------------------------------------------------------------------------------------
# --vad: the same 10-minute file with and without the Silero VAD (D28)


def pauses_file(seconds: int = 600, seed: int = 18) -> F32:
    """Golos clips separated by 2-20 s pauses with a faint noise floor (the recipe of
    tests/test_vad_files.py): about three quarters of it is not speech."""
    rng = np.random.default_rng(seed)
    clips = common.golos_clips()
    parts: list[F32] = []
    total, i = 0, 0
    while total < seconds * 16000:
        pause = rng.normal(0, 3e-4, int(rng.uniform(2, 20) * 16000)).astype(np.float32)
        clip = clips[i % len(clips)]
        parts += [pause, clip]
        total += len(pause) + len(clip)
        i += 1
    return np.concatenate(parts)[: seconds * 16000]


def vad_comparison(model: Path, runs: int, vad_path: Path) -> dict[str, Any]:
    """In one process, rotated: VAD off (quiet-point windows over the whole file) and VAD on
    (the VAD pass on the file, then its windows). The VAD pass is inside the timed VAD run."""
    from gigastt.engine.model import GigaamModel
    from gigastt.engine.recognizer import Recognizer, split_windows, transcript_of
    from gigastt.engine.vad import SileroVad
    from gigastt.engine.windows import vad_plan

    samples = pauses_file()
    recognizer = Recognizer(GigaamModel(model))
    vad = SileroVad(vad_path)

    def off() -> tuple[str, float, float]:
        windows = split_windows(samples)
        words = [w for win in windows for w in recognizer.window_words(samples, win)]
        return transcript_of(words, len(samples)).text, len(samples) / 16000, 0.0

    def on() -> tuple[str, float, float]:
        t0 = time.perf_counter()
        plan = vad_plan(vad, samples)
        vad_s = time.perf_counter() - t0
        words = [w for win in plan.windows for w in recognizer.window_words(samples, win)]
        covered = sum(w.stop - w.start for w in plan.windows) / 16000
        return transcript_of(words, len(samples)).text, covered, vad_s

    modes = {"VAD off": off, "VAD on": on}
    texts = {name: fn()[0] for name, fn in modes.items()}  # warm-up, excluded
    times: dict[str, list[float]] = {name: [] for name in modes}
    cpu: dict[str, list[float]] = {name: [] for name in modes}
    extra: dict[str, tuple[float, float]] = {}
    for i in range(runs):
        order = list(modes)[i % 2:] + list(modes)[: i % 2]
        print(f"  10-minute file: run {i + 1}/{runs}", file=sys.stderr, flush=True)
        for name in order:
            t0, c0 = time.perf_counter(), time.process_time()
            _, covered, vad_s = modes[name]()
            times[name].append(time.perf_counter() - t0)
            # CPU seconds of all our threads: steadier than wall time on a shared machine
            cpu[name].append(time.process_time() - c0)
            extra[name] = (covered, vad_s)
    return {"times": times, "cpu": cpu, "extra": extra, "texts": texts,
            "audio_s": len(samples) / 16000}


def print_vad_table(result: dict[str, Any], model: str, encoder: str, runs: int) -> None:
    times, cpu, extra, texts = result["times"], result["cpu"], result["extra"], result["texts"]
    base, base_cpu = common.median(times["VAD off"]), common.median(cpu["VAD off"])
    same = texts["VAD on"] == texts["VAD off"]
    rows = []
    for name in ("VAD off", "VAD on"):
        wall, spent = common.median(times[name]), common.median(cpu[name])
        covered, vad_s = extra[name]
        rows.append([name, common.fmt(result["audio_s"], 0), common.fmt(covered, 1),
                     common.fmt(vad_s, 2) if name == "VAD on" else "–", common.fmt(wall, 2),
                     common.fmt(base / wall, 2) + "×", common.fmt(spent, 2),
                     common.fmt(base_cpu / spent, 2) + "×",
                     "–" if name == "VAD off" else ("yes" if same else "no")])
    print(f"\n### 10-minute file with and without VAD — model `{model}`, {encoder} encoder,"
          f" median of {runs} runs\n")
    print(common.markdown_table(["mode", "audio s", "recognised s", "VAD pass s",
                                 "wall s (median)", "speed-up", "CPU s (median)",
                                 "CPU speed-up", "same text"], rows))


# ----------------------------------------------------------------------------------------------
# --heads and --hotwords (D29)

HEAD_NAMES = ("e2e_rnnt", "rnnt", "ctc", "e2e_ctc")


def head_dir(kind: str, head: str) -> Path:
    """The generated model of ``kind`` (small or full) for ``head``, built once and cached."""
    if kind == "full":
        from gigastt.testing.models import cached_full_model

        return cached_full_model(head=head)
    from gigastt.testing.models import write_small_model

    path = common.cache_dir() / f"{kind}-{head}-{common._generator_key()}"
    marker = path / ".complete"
    if not marker.is_file():
        write_small_model(path, head=head, **common.MODEL_SHAPES[kind])
        marker.write_text("1\n", encoding="utf-8")
    return path


def head_child(head: str, model_dir: Path, audio: str) -> None:
    """Like ``child``, for our engine on one head."""
    from gigastt.engine.heads import HEADS
    from gigastt.engine.model import GigaamModel
    from gigastt.engine.recognizer import Recognizer

    files = _load_audio(audio)
    t0 = time.perf_counter()
    recognizer = Recognizer(GigaamModel(model_dir, head=HEADS[head]))
    load_s = time.perf_counter() - t0
    load_rss = _current_rss_mb()
    texts = [recognizer.transcribe(x).text for x in files]
    common.child_reply({"load_s": load_s, "load_rss_mb": load_rss, "text_key": "",
                        "chars": sum(len(t) for t in texts)})
    for command in sys.stdin:
        if command.strip() != "run":
            break
        start = time.perf_counter()
        for x in files:
            recognizer.transcribe(x)
        common.child_reply({"time": time.perf_counter() - start, "stages": {}})
    common.child_reply({"rss_mb": _current_rss_mb(), "peak_rss_mb": common.own_peak_rss_mb()})


def measure_heads(kind: str, runs: int, quick: bool) -> list[dict[str, Any]]:
    dirs = {head: head_dir(kind, head) for head in HEAD_NAMES}
    rows: list[dict[str, Any]] = []
    for label, spec, seconds in _audio_sets(True)[: 1 if quick else 2]:
        children: dict[str, common.Child] = {}
        ready: dict[str, dict[str, Any]] = {}
        times: dict[str, list[float]] = {h: [] for h in HEAD_NAMES}
        try:
            for head in HEAD_NAMES:
                print(f"  {label}: loading {head} ...", file=sys.stderr, flush=True)
                children[head] = common.Child(
                    [sys.executable, str(Path(__file__).resolve()), "--head-child", head,
                     "--model-dir", str(dirs[head]), "--audio", spec])
                ready[head] = children[head].read()
            for i in range(runs):
                order = HEAD_NAMES[i % 4:] + HEAD_NAMES[: i % 4]  # rotated: drift hits all
                print(f"  {label}: run {i + 1}/{runs}", file=sys.stderr, flush=True)
                for head in order:
                    times[head].append(children[head].request("run")["time"])
            for child_proc in children.values():
                child_proc.finish()
        finally:
            for child_proc in children.values():
                child_proc.kill()
        for head in HEAD_NAMES:
            wall = common.median(times[head])
            rows.append({"audio": label, "audio_s": seconds, "head": head, "wall_s": wall,
                         "rtf": wall / seconds, "times": times[head],
                         "peak_rss_mb": children[head].peak_rss_mb,
                         "load_rss_mb": ready[head]["load_rss_mb"],
                         "load_s": ready[head]["load_s"], "chars": ready[head]["chars"]})
    return rows


def print_heads_table(rows: list[dict[str, Any]], kind: str, runs: int) -> None:
    headers = ["audio", "head", "audio s", "wall s (median)", "min s", "RTF", "÷ e2e_rnnt",
               "peak RSS MB", "RSS after load MB", "load s"]
    table = []
    for row in rows:
        base = next(r for r in rows if r["audio"] == row["audio"] and r["head"] == "e2e_rnnt")
        table.append([row["audio"], row["head"], common.fmt(row["audio_s"], 1),
                      common.fmt(row["wall_s"], 3), common.fmt(min(row["times"]), 3),
                      common.fmt(row["rtf"], 4), common.fmt(row["wall_s"] / base["wall_s"]) + "×",
                      common.fmt(row["peak_rss_mb"], 0), common.fmt(row["load_rss_mb"], 0),
                      common.fmt(row["load_s"], 2)])
    print(f"\n### Heads — model `{kind}`, FP32, median of {runs} runs\n")
    print(common.markdown_table(headers, table))


def hotword_phrases(vocab: Any, count: int = 100, seed: int = 29) -> list[str]:
    """``count`` distinct phrases the vocabulary can write: one to three random word pieces
    (SentencePiece) or letter strings (the letter vocabulary), as a user's list would be."""
    from gigastt.engine.tokenizer import WORD_START

    rng = np.random.default_rng(seed)
    words = [p[1:] for p in vocab.pieces if p.startswith(WORD_START) and len(p) > 1]
    letters = [p for p in vocab.pieces if len(p) == 1 and p.isalpha()]
    phrases: set[str] = set()
    while len(phrases) < count:
        n = int(rng.integers(1, 4))
        if words:
            phrase = " ".join(str(rng.choice(words)) for _ in range(n))
        else:
            phrase = " ".join("".join(rng.choice(letters, int(rng.integers(3, 9))))
                              for _ in range(n))
        phrases.add(phrase)
    return sorted(phrases)


def measure_hotwords(kind: str, runs: int) -> list[dict[str, Any]]:
    """Decoding time of the same encoder output without hotwords, with 100 phrases at the
    default boost, and with the same 100 phrases at a negligible boost (the same decisions as
    without: the pure cost of consulting the trie), in rotated order."""
    from gigastt.config import HOTWORDS_BOOST
    from gigastt.engine.ctc import ctc_biased, ctc_greedy
    from gigastt.engine.decoding import greedy_decode, greedy_decode_biased
    from gigastt.engine.heads import HEADS
    from gigastt.engine.hotwords import Hotwords, Phrase, compile_phrases
    from gigastt.engine.model import GigaamModel
    from gigastt.engine.recognizer import Recognizer

    audio = common.golos_clips()
    seconds = sum(x.shape[0] for x in audio) / 16000.0
    rows: list[dict[str, Any]] = []
    for head in ("e2e_rnnt", "e2e_ctc"):
        r = Recognizer(GigaamModel(head_dir(kind, head), head=HEADS[head]))
        phrases = [Phrase(p) for p in hotword_phrases(r.model.vocab)]
        lists: dict[str, Hotwords | None] = {
            "none": None,
            "boost": compile_phrases(phrases, r.model.vocab, HOTWORDS_BOOST),
            "negligible": compile_phrases(phrases, r.model.vocab, 1e-6)}
        encoded = [r.encode(x) for x in audio]
        t0 = time.perf_counter()
        for x in audio:
            r.encode(x)
        encode_s = time.perf_counter() - t0
        blank = r.model.vocab.blank

        def decode(e: F32, hw: Hotwords | None, r: Recognizer = r, blank: int = blank,
                   head: str = head) -> list[Any]:
            if head.endswith("ctc"):
                return ctc_greedy(e, blank) if hw is None else ctc_biased(e, blank, hw)
            if hw is None:
                return greedy_decode(r.model, e, max_symbols=r.max_symbols)
            return greedy_decode_biased(r.model, e, hw, max_symbols=r.max_symbols)

        outputs = {name: [decode(e, hw) for e in encoded] for name, hw in lists.items()}
        assert outputs["negligible"] == outputs["none"]
        times: dict[str, list[float]] = {name: [] for name in lists}
        names = list(lists)
        for i in range(runs):
            for name in names[i % 3:] + names[: i % 3]:
                t0 = time.perf_counter()
                for e in encoded:
                    decode(e, lists[name])
                times[name].append(time.perf_counter() - t0)
        plain = common.median(times["none"])
        for name in ("boost", "negligible"):
            b = common.median(times[name])
            rows.append({
                "head": head, "list": name, "audio_s": seconds, "encode_s": encode_s,
                "decode_plain_s": plain, "decode_biased_s": b, "decode_ratio": b / plain,
                "total_ratio": (encode_s + b) / (encode_s + plain),
                "tokens_plain": sum(map(len, outputs["none"])),
                "tokens_biased": sum(map(len, outputs[name])),
                "clips_changed": sum(a != c for a, c in zip(outputs["none"], outputs[name],
                                                             strict=True)),
                "clips": len(encoded)})
    return rows


SWEEP_BOOSTS = (0.5, 1.0, 2.0, 3.0, 4.0, 6.0)


def boost_sweep() -> list[dict[str, Any]]:
    """How the boost trades recall for false changes, on the generated models (D29 default).

    Recall: the tone model (e2e_rnnt) with the phrase "Привет" whose second tone is attenuated
    by each of 12 gains from 0.02 to 0.3; the miss margin (blank minus the token's best
    log-probability) of each is reported, and which boosts recover it. False changes: the same
    sentences at full level with 20 random lists of 5 phrases of tone tokens not spoken (the
    text must not change), and the small random model on the Golos clips with 100 phrases
    (tokens changed — a near-tie model: an upper bound for a real one).
    """
    import tempfile

    from gigastt.engine.heads import HEADS
    from gigastt.engine.hotwords import Phrase, compile_phrases
    from gigastt.engine.model import GigaamModel
    from gigastt.engine.recognizer import Recognizer
    from gigastt.testing.audio import tone_sequence
    from gigastt.testing.models import TONE_TOKENS, write_tone_model

    tone_dir = Path(tempfile.mkdtemp()) / "tone"
    write_tone_model(tone_dir)
    tone = Recognizer(GigaamModel(tone_dir))
    sentence = ["▁При", "вет", ",", "▁как", "▁де", "ла", "?"]
    gains = np.geomspace(0.02, 0.3, 12)
    margins, missed_at = [], []
    for g in gains:
        audio = tone_sequence(sentence, gains=[1, float(g), 1, 1, 1, 1, 1])
        encoded = tone.encode(audio)
        from gigastt.engine.decoding import greedy_decode

        plain = greedy_decode(tone.model, encoded)
        if len(plain) == len(sentence):
            continue
        # the joint after "▁При" over the frames of the weak tone: best margin to the blank
        h = np.zeros((1, 1, tone.model.pred_hidden), np.float32)
        dec, _, _ = tone.model.decode_step(np.array([[1]], np.int64), h, h)
        frames = np.ascontiguousarray(encoded.T)[:, :, None]
        scores = tone.model.joint_scores(frames, np.repeat(dec.transpose(0, 2, 1),
                                                           frames.shape[0], axis=0))
        margin = float(np.min(scores[:, tone.model.vocab.blank] - scores[:, 2]))
        margins.append(margin)
        missed_at.append(audio)
    rng = np.random.default_rng(29)
    clips = [list(rng.permutation(TONE_TOKENS)[:4]) for _ in range(20)]
    small = Recognizer(GigaamModel(head_dir("small", "e2e_rnnt"), head=HEADS["e2e_rnnt"]))
    golos = common.golos_clips()
    small_plain = [small.tokens(x) for x in golos]
    rows = []
    for boost in SWEEP_BOOSTS:
        hw = compile_phrases([Phrase("Привет")], tone.model.vocab, boost)
        recovered = sum(len(tone.tokens(a, hw)) == len(sentence) for a in missed_at)
        false = 0
        for clip in clips:
            unspoken = [t for t in TONE_TOKENS if t not in clip]
            phrases = [Phrase("".join(rng.choice(unspoken, 2)).replace("▁", " ").strip())
                       for _ in range(5)]
            audio = tone_sequence(clip)
            hw2 = compile_phrases(phrases, tone.model.vocab, boost)
            false += hw2 is not None and tone.tokens(audio, hw2) != tone.tokens(audio)
        hw3 = compile_phrases([Phrase(p) for p in hotword_phrases(small.model.vocab)],
                              small.model.vocab, boost)
        changed = sum(len({(t.id, t.frame) for t in a} ^ {(t.id, t.frame) for t in b})
                      for a, b in zip(small_plain, (small.tokens(x, hw3) for x in golos),
                                      strict=True))
        rows.append({"boost": boost, "recovered": recovered, "misses": len(missed_at),
                     "margins": margins, "tone_false": false, "tone_lists": len(clips),
                     "small_changed": changed, "small_tokens": sum(map(len, small_plain))})
    return rows


def print_sweep_table(rows: list[dict[str, Any]]) -> None:
    margins = ", ".join(common.fmt(m, 2) for m in rows[0]["margins"])
    print(f"\n### Boost sweep (miss margins of the attenuated tone, nats: {margins})\n")
    headers = ["boost", "misses recovered", "tone texts changed by unspoken phrases",
               "small model: tokens changed by 100 phrases"]
    print(common.markdown_table(headers, [
        [common.fmt(r["boost"], 1), f"{r['recovered']}/{r['misses']}",
         f"{r['tone_false']}/{r['tone_lists']}",
         f"{r['small_changed']}/{r['small_tokens']}"] for r in rows]))


def print_hotwords_table(rows: list[dict[str, Any]], kind: str, runs: int) -> None:
    from gigastt.config import HOTWORDS_BOOST

    headers = ["head", "boost", "audio s", "encoder s", "decode s (none)", "decode s (100)",
               "decode ratio", "whole-file ratio", "tokens none → 100", "clips changed"]
    table = [[r["head"], str(HOTWORDS_BOOST) if r["list"] == "boost" else "1e-6",
              common.fmt(r["audio_s"], 1), common.fmt(r["encode_s"], 3),
              common.fmt(r["decode_plain_s"], 4), common.fmt(r["decode_biased_s"], 4),
              common.fmt(r["decode_ratio"]) + "×", common.fmt(r["total_ratio"], 3) + "×",
              f"{r['tokens_plain']} → {r['tokens_biased']}",
              f"{r['clips_changed']}/{r['clips']}"] for r in rows]
    print(f"\n### Hotword biasing — model `{kind}`, 100 phrases, median of {runs} runs\n")
    print(common.markdown_table(headers, table))


def main(argv: list[str] | None = None) -> int:
    parser = common.arg_parser(__doc__.split("\n", 1)[0])
    parser.add_argument("--vad", metavar="SILERO_ONNX", type=Path, nargs="?", default=None,
                        const=Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "vad"
                        / "silero_vad.onnx",
                        help="instead: the 10-minute file with pauses, with and without this"
                             " VAD file (default ../shared/fixtures/vad/silero_vad.onnx)")
    parser.add_argument("--runs", type=int, default=None,
                        help="timed runs per contender (default 5, --quick 3, full model 3)")
    parser.add_argument("--only", choices=CONTENDERS, action="append", default=None,
                        help="run only these contenders (repeatable)")
    parser.add_argument("--heads", action="store_true",
                        help="instead: a row per GigaAM v3 head (D29), RTF and peak RSS")
    parser.add_argument("--hotwords", action="store_true",
                        help="instead: decoding time without and with 100 hotword phrases")
    parser.add_argument("--head-child", choices=HEAD_NAMES, help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--audio", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.model_dir, args.audio)
        return 0
    if args.head_child:
        head_child(args.head_child, args.model_dir, args.audio)
        return 0
    if args.heads or args.hotwords:
        runs = args.runs or 3
        info = common.machine_info()
        if args.heads:
            rows = measure_heads(args.model, runs, args.quick)
            print_heads_table(rows, args.model, runs)
        else:
            rows = measure_hotwords(args.model, runs)
            print_hotwords_table(rows, args.model, runs)
            sweep = boost_sweep()
            print_sweep_table(sweep)
            rows = [*rows, *sweep]
        print(f"\nMachine: {common.machine_line(info)}")
        common.write_json(args.json, {"benchmark": "heads" if args.heads else "hotwords",
                                      "model": args.model, "runs": runs, "machine": info,
                                      "results": rows})
        return 0

    runs = args.runs or (3 if args.quick or args.model == "full" else 5)
    contenders = [c for c in CONTENDERS if not args.only or c in args.only]
    info = common.machine_info()
    model = common.model_dir(args.model, int8=args.int8)
    encoder = "INT8" if args.int8 else "FP32"
    print(f"model {args.model} ({encoder} encoder): {model}", file=sys.stderr)
    if args.vad is not None:
        vad_result = vad_comparison(model, runs, args.vad)
        print_vad_table(vad_result, args.model, encoder, runs)
        print(f"\nMachine: {common.machine_line(info)}")
        vad_result.pop("texts")
        common.write_json(args.json, {"benchmark": "transcribe-vad", "model": args.model,
                                      "encoder": encoder.lower(), "runs": runs,
                                      "machine": info, "result": vad_result})
        return 0
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
