"""Fairness: one real-time WebSocket stream alone, then with a long file upload running beside it.

Reports the stream's partial cadence and the time from its last audio to its final, and the
upload's time beside the stream and alone; the stream's passes run on the live inference lane,
the upload on the lower-priority bulk lane, both on the one model.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import numpy as np
from common import (
    Server,
    arg_parser,
    fmt,
    golos_clips,
    machine_info,
    machine_line,
    markdown_table,
    model_dir,
    pcm16,
    write_json,
)

from gigastt.engine.audio import resample
from gigastt.testing.audio import speech_like, wav_bytes
from tests.wsclient import open_session

FRAME_MS = 100


async def _stream(server: Server, audio48: np.ndarray) -> dict[str, float]:
    ws, _ = await open_session(server)
    data = pcm16(audio48)
    step = 48 * FRAME_MS * 2
    arrivals: list[float] = []

    async def reader() -> None:
        while True:
            message = json.loads(await ws.recv())
            arrivals.append(time.monotonic())
            if message["type"] == "final" and stopped.is_set():
                return

    stopped = asyncio.Event()
    task = asyncio.ensure_future(reader())
    started = time.monotonic()
    for n, start in enumerate(range(0, len(data), step)):
        await ws.send(data[start : start + step])
        await asyncio.sleep(max(0.0, started + (n + 1) * FRAME_MS / 1000 - time.monotonic()))
    last_audio = time.monotonic()
    stopped.set()
    await ws.send(json.dumps({"type": "stop"}))
    await asyncio.wait_for(task, 120)
    await ws.close()
    gaps = np.diff(arrivals[:-1]) if len(arrivals) > 2 else np.array([0.0])
    return {"messages": len(arrivals), "gap_p50": float(np.median(gaps)),
            "gap_max": float(gaps.max()), "final_after_stop": arrivals[-1] - last_audio}


def main() -> None:
    parser = arg_parser(__doc__ or "", default_model="full")
    args = parser.parse_args()
    clips = golos_clips()
    gap = np.zeros(16000, np.float32)
    audio = np.concatenate([p for c in clips[: 4 if args.quick else 8] for p in (c, gap)])
    audio48 = resample(audio, 16000, 48000)
    upload = wav_bytes(speech_like(120.0 if args.quick else 600.0, seed=9))
    rows: list[list[str]] = []
    results: dict[str, Any] = {}
    with Server(model_dir(args.model, int8=args.int8), "--pool-size", "4") as server:
        results["alone"] = asyncio.run(_stream(server, audio48))
        done: dict[str, float] = {}

        def post() -> None:
            t = time.monotonic()
            server.request("POST", "/v1/transcribe", upload, timeout=1200)
            done["upload_s"] = time.monotonic() - t

        uploader = threading.Thread(target=post)
        uploader.start()
        time.sleep(1.0)
        results["with upload"] = asyncio.run(_stream(server, audio48))
        uploader.join()
        results["upload_s"] = done.get("upload_s", float("nan"))
        post()  # the price of fairness: the same upload without the stream beside it
        results["upload_alone_s"] = done["upload_s"]
    for name in ("alone", "with upload"):
        r = results[name]
        rows.append([name, str(r["messages"]), fmt(r["gap_p50"]), fmt(r["gap_max"]),
                     fmt(r["final_after_stop"])])
    print(machine_line(machine_info()))
    alone, beside = results["alone"], results["with upload"]
    print(f"stream: {len(audio) / 16000:.1f} s of Golos speech at 48 kHz in {FRAME_MS} ms frames, "
          f"real time; upload: {len(upload) // 32000} s file, {results['upload_s']:.1f} s beside "
          f"the stream, {results['upload_alone_s']:.1f} s alone")
    print(markdown_table(["stream", "messages", "partial gap p50 s", "partial gap max s",
                          "final after stop s"], rows))
    print(f"partial gap with the upload ÷ alone: p50 {beside['gap_p50'] / alone['gap_p50']:.2f}×, "
          f"max {beside['gap_max'] / alone['gap_max']:.2f}×")
    write_json(args.json, results)


if __name__ == "__main__":
    main()
