"""Server CPU of one real-time WebSocket stream under different process settings, side by side.

    python bench/live_cpu.py [--model full] [--int8] [--seconds 20] [--rounds 2] [--speech]

Each round starts one ``gigastt serve`` per setting in turn (``OPENBLAS_NUM_THREADS`` left to
the server's default, 1, and onnxruntime's own choice of the number of cores), streams
``--seconds`` of silence (or Golos speech with ``--speech``) at 48 kHz in 100 ms frames paced at
real time, and reads the server's CPU time (``/proc/<pid>/stat``) over the stream. Benchmarks,
not tests.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

import common
import numpy as np

SETTINGS = {
    "OPENBLAS_NUM_THREADS unset (gigastt sets 1)": {},
    f"OPENBLAS_NUM_THREADS={os.cpu_count()} (numpy's default)": {
        "OPENBLAS_NUM_THREADS": str(os.cpu_count())},
}


async def stream(port: int, pcm: bytes) -> None:
    from websockets.asyncio.client import connect

    async with connect(f"ws://127.0.0.1:{port}/v1/ws", max_size=None) as ws:
        await ws.recv()
        await ws.send(json.dumps({"type": "configure", "sample_rate": 48000}))
        step = 9600
        start = time.perf_counter()
        for k, offset in enumerate(range(0, len(pcm), step)):
            delay = start + (k + 1) * 0.1 - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await ws.send(pcm[offset : offset + step])
        await ws.send(json.dumps({"type": "stop"}))
        async for _ in ws:
            pass


def main() -> int:
    parser = common.arg_parser(__doc__ or "", default_model="full")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--speech", action="store_true", help="Golos clips instead of silence")
    args = parser.parse_args()
    model = common.model_dir(args.model, int8=args.int8)
    from gigastt.engine.audio import resample

    if args.speech:
        audio = np.concatenate(common.golos_clips())[: int(args.seconds * 16000)]
    else:
        audio = np.zeros(int(args.seconds * 16000), np.float32)
    pcm = common.pcm16(resample(audio, 16000, 48000))
    rows = []
    for round_ in range(args.rounds):
        for name, env in SETTINGS.items():
            server = common.Server(model, env=env)
            try:
                cpu0, wall0 = common.proc_cpu_seconds(server.pid), time.perf_counter()
                asyncio.run(stream(server.port, pcm))
                cpu = common.proc_cpu_seconds(server.pid) - cpu0
                wall = time.perf_counter() - wall0
            finally:
                server.stop()
            rows.append([str(round_ + 1), name, common.fmt(cpu / wall * 100, 0)])
    kind = "Golos speech" if args.speech else "silence"
    print(f"### One real-time stream of {kind}, {args.seconds:.0f} s — model `{args.model}`, "
          f"{'INT8' if args.int8 else 'FP32'} encoder\n")
    print(common.markdown_table(["round", "setting", "server CPU %"], rows))
    print("\n" + common.machine_line(common.machine_info()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
