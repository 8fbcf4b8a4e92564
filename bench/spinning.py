"""Intra-op spinning: CPU and wall time of live-sized encoder passes with onnxruntime's idle
workers spinning (its default) or sleeping (ours), side by side in one process.

    python bench/spinning.py [--model full] [--int8] [--rounds 3] [--passes 15] [--gap 0.2]

A pass is one encoder call on a 2.5 s window (the live partial window) followed by ``--gap``
seconds of idleness, as passes arrive on the live lane; both sessions alternate round by round,
so machine noise falls on both alike. Benchmarks, not tests.
"""

from __future__ import annotations

import time

import common
import numpy as np
import onnxruntime as ort

from gigastt.engine.features import log_mel
from gigastt.engine.model import ENCODER_FILE, ENCODER_INT8_FILE, session_options
from gigastt.engine.streaming import PARTIAL_WINDOW


def main() -> int:
    parser = common.arg_parser(__doc__ or "", default_model="full")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--passes", type=int, default=15)
    parser.add_argument("--gap", type=float, default=0.2)
    args = parser.parse_args()
    model = common.model_dir(args.model, int8=args.int8)
    encoder = model / (ENCODER_INT8_FILE if args.int8 else ENCODER_FILE)
    noise = np.random.default_rng(0).standard_normal(int(PARTIAL_WINDOW * 16000)) * 0.1
    features = log_mel(noise.astype(np.float32))[None]
    feeds = {"audio_signal": features, "length": np.array([features.shape[2]], np.int64)}
    ort.set_default_logger_severity(3)  # (overriding our option is the point: no warning)
    sessions = {}
    for spin in ("1", "0"):
        options = session_options(0)
        options.add_session_config_entry("session.intra_op.allow_spinning", spin)
        sessions[spin] = ort.InferenceSession(str(encoder), options,
                                              providers=["CPUExecutionProvider"])
        sessions[spin].run(None, feeds)
    rows = []
    for round_ in range(args.rounds):
        for spin, session in sessions.items():
            cpu0, wall = time.process_time(), 0.0
            for _ in range(args.passes):
                started = time.perf_counter()
                session.run(None, feeds)
                wall += time.perf_counter() - started
                time.sleep(args.gap)
            cpu = time.process_time() - cpu0
            rows.append([str(round_ + 1), "spinning" if spin == "1" else "sleeping",
                         common.fmt(wall / args.passes * 1e3, 0),
                         common.fmt(cpu / args.passes * 1e3, 0)])
    print(f"### Encoder passes of {PARTIAL_WINDOW} s, {args.gap} s apart — model `{args.model}`, "
          f"{'INT8' if args.int8 else 'FP32'} encoder\n")
    print(common.markdown_table(["round", "idle workers", "wall ms / pass", "CPU ms / pass"],
                                rows))
    print("\n" + common.machine_line(common.machine_info()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
