"""Every head (D29) behind a real server and CLI: the routes report and use the head served,
hotword lists reach each route, and bad input (missing head, over-limit lists, a hotwords file
that is not UTF-8) gets a precise error.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gigastt.engine.heads import HEADS
from gigastt.engine.model import GigaamModel
from gigastt.engine.recognizer import Recognizer
from gigastt.server.openai import prompt_phrases
from gigastt.store.download import sha256_of
from gigastt.testing.audio import speech_like, tone_sequence, wav_bytes
from gigastt.testing.models import write_small_model, write_tone_model
from tests.mirror import ModelServer
from tests.serverproc import ROOT, ServerProcess, serving
from tests.wsclient import open_session, pcm16

TONES = ["▁При", "вет", ",", "▁как", "▁де", "ла", "?"]
BOUNDARY = "heads-boundary"


@pytest.fixture(scope="module")
def tone_heads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tone-heads")
    write_tone_model(path)
    write_tone_model(path, head="e2e_ctc")
    return path


@pytest.fixture(scope="module")
def letter_heads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("letter-heads")
    write_small_model(path, head="rnnt")
    write_small_model(path, head="ctc")
    return path


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith("GIGASTT_") and "proxy" not in k.lower()}


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gigastt", *args], cwd=ROOT,
                          env=env or _env(), capture_output=True, text=True, timeout=120)


def _form(fields: list[tuple[str, str]], file: bytes) -> bytes:
    parts = [f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{n}"\r\n\r\n{v}\r\n'
             .encode() for n, v in fields]
    parts.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
                 'filename="a.wav"\r\nContent-Type: audio/wav\r\n\r\n'.encode() + file + b"\r\n")
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def _openai(server: ServerProcess, fields: list[tuple[str, str]], file: bytes) -> Any:
    return server.request("POST", "/v1/audio/transcriptions", _form(fields, file),
                          {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})


def _sse_finals(body: bytes) -> list[str]:
    events = [json.loads(line[6:]) for line in body.decode().splitlines()
              if line.startswith("data: ")]
    return [e["text"] for e in events if e["type"] == "final"]


async def _ws_finals(server: ServerProcess, samples: np.ndarray,
                     configure: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[str]]:
    ws, ready = await open_session(server)
    await ws.send(json.dumps({"type": "configure", "sample_rate": 16000, **(configure or {})}))
    data = pcm16(samples)
    for start in range(0, len(data), 6400):
        await ws.send(data[start : start + 6400])
    await ws.send(json.dumps({"type": "stop"}))
    finals: list[str] = []
    errors: list[str] = []
    async for raw in ws:
        message = json.loads(raw)
        if message["type"] == "final":
            finals.append(message["text"])
        elif message["type"] == "error":
            errors.append(message["code"])
    assert not errors, errors
    return ready, [f for f in finals if f]


def _wait_job(server: ServerProcess, job_id: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        body = server.request("GET", f"/v1/jobs/{job_id}").json()
        assert isinstance(body, dict)
        if body["status"] == "done":
            return
        assert body["status"] in ("queued", "running") and time.monotonic() < deadline, body
        time.sleep(0.05)


@pytest.fixture(scope="module")
def ctc_tone_server(tone_heads: Path, tmp_path_factory: pytest.TempPathFactory
                    ) -> Iterator[ServerProcess]:
    jobs = tmp_path_factory.mktemp("jobs")
    yield from serving(tone_heads, "--model-variant", "e2e_ctc", "--jobs-dir", str(jobs))


def test_every_route_works_with_a_ctc_head(ctc_tone_server: ServerProcess) -> None:
    """e2e_ctc (tone model): REST, SSE, WS, OpenAI and jobs give the exact sentence."""
    server = ctc_tone_server
    assert server.request("GET", "/health").json() == {
        "status": "ok", "model": "gigaam-v3-e2e-ctc", "version": _version()}
    models = server.request("GET", "/v1/models").json()
    assert isinstance(models, dict)
    assert (models["id"], models["name"]) == ("gigaam-v3-e2e-ctc", "GigaAM v3 CTC")
    audio = wav_bytes(tone_sequence(TONES))
    reply = server.request("POST", "/v1/transcribe", audio)
    assert reply.status == 200 and reply.json()["text"] == "Привет, как дела?"  # type: ignore
    sse = server.request("POST", "/v1/transcribe/stream", audio)
    assert _sse_finals(sse.body) == ["Привет, как дела?"]
    ready, finals = asyncio.run(_ws_finals(server, tone_sequence(TONES)))
    assert ready["model"] == "gigaam-v3-e2e-ctc" and finals == ["Привет, как дела?"]
    reply = _openai(server, [("model", "whisper-1")], audio)
    assert reply.json() == {"text": "Привет, как дела?",  # type: ignore[attr-defined]
                            "usage": {"type": "duration", "seconds": 2.0}}
    job = server.request("POST", "/v1/jobs?format=text", audio)
    assert job.status == 202
    job_id = job.json()["id"]  # type: ignore[index]
    _wait_job(server, job_id)
    result = server.request("GET", f"/v1/jobs/{job_id}/result?format=text")
    assert result.body.decode().strip() == "Привет, как дела?"
    # A job's own hotword list (D29): kept with the job, used when it runs; bounds checked first.
    weak = wav_bytes(WEAK)
    job = server.request("POST", "/v1/jobs?format=text&hotwords=%D0%9F%D1%80%D0%B8%D0%B2%D0%B5"
                         "%D1%82", weak)
    job_id = job.json()["id"]  # type: ignore[index]
    _wait_job(server, job_id)
    result = server.request("GET", f"/v1/jobs/{job_id}/result?format=text")
    assert result.body.decode().strip() == "Привет, как дела?"
    many = ",".join(f"w{i}" for i in range(65))
    refused = server.request("POST", f"/v1/jobs?hotwords={many}", weak)
    assert (refused.status, refused.json()["code"]) == (400, "too_many_hotwords")  # type: ignore
    plain = server.request("POST", "/v1/transcribe", weak)
    assert plain.json()["text"] == "При, как дела?"  # type: ignore[index]


def _version() -> str:
    from gigastt import __version__

    return __version__


@pytest.mark.parametrize("name", ["rnnt", "ctc"])
def test_plain_heads_serve_lower_case_letters(name: str, letter_heads: Path) -> None:
    """rnnt and ctc (letter vocabulary): the ids are reported and the text equals the engine's."""
    # as the WAV carries it (PCM16)
    samples = np.round(speech_like(3.0, seed=2) * 32768).clip(-32768, 32767) / 32768
    samples = samples.astype(np.float32)
    expected = Recognizer(GigaamModel(letter_heads, head=HEADS[name])).transcribe(samples).text
    assert expected and set(expected) <= set("абвгдежзийклмнопрстуфхцчшщъыьэюя ")
    server = ServerProcess(letter_heads, "--model-variant", name)
    try:
        model_id = f"gigaam-v3-{name}"
        assert server.request("GET", "/health").json()["model"] == model_id  # type: ignore
        assert server.request("GET", "/v1/models").json()["id"] == model_id  # type: ignore
        reply = server.request("POST", "/v1/transcribe", wav_bytes(samples))
        assert reply.json()["text"] == expected  # type: ignore[index]
        ready, finals = asyncio.run(_ws_finals(server, samples))
        assert ready["model"] == model_id and finals
        assert "variant " + name in server.log
    finally:
        server.stop()


def test_auto_serves_the_only_head_present(letter_heads: Path, tmp_path: Path) -> None:
    only = tmp_path / "only"
    only.mkdir()
    for f in HEADS["ctc"].files:
        (only / f).write_bytes((letter_heads / f).read_bytes())
    server = ServerProcess(only)
    try:
        assert server.request("GET", "/health").json()["model"] == "gigaam-v3-ctc"  # type: ignore
    finally:
        server.stop()


# --- hotwords through the routes --------------------------------------------------------------


@pytest.fixture(scope="module")
def rnnt_tone_server(tone_heads: Path, tmp_path_factory: pytest.TempPathFactory
                     ) -> Iterator[ServerProcess]:
    phrases = tmp_path_factory.mktemp("hw") / "hotwords.txt"
    phrases.write_text("мир\n", encoding="utf-8")  # unrelated to the audio below
    yield from serving(tone_heads, "--hotwords-file", str(phrases))


# "вет" at a tenth of its level: greedy decoding misses it by a small margin.
WEAK = tone_sequence(TONES, gains=[1, 0.1, 1, 1, 1, 1, 1])


def test_request_lists_reach_every_route_and_do_not_leak(rnnt_tone_server: ServerProcess
                                                        ) -> None:
    server = rnnt_tone_server
    assert server.request("GET", "/health").json()["model"] == "gigaam-v3-e2e-rnnt"  # type: ignore
    audio = wav_bytes(WEAK)

    def rest(query: str = "") -> str:
        reply = server.request("POST", "/v1/transcribe" + query, audio)
        assert reply.status == 200, reply.body
        return str(reply.json()["text"])  # type: ignore[index]

    assert rest() == "При, как дела?"  # the server's list (unrelated) changes nothing
    assert rest("?hotwords=%D0%9F%D1%80%D0%B8%D0%B2%D0%B5%D1%82") == "Привет, как дела?"
    assert rest() == "При, как дела?"  # the previous request's list is gone
    assert rest("?hotwords=") == "При, как дела?"  # empty: biasing off
    # "Привет,х": a phrase the vocabulary cannot write ("х") is left out, the other kept
    sse = server.request("POST", "/v1/transcribe/stream?hotwords=%D0%9F%D1%80%D0%B8%D0%B2%D0%B5"
                         "%D1%82,%D1%85", audio)
    assert _sse_finals(sse.body) == ["Привет, как дела?"]
    reply = _openai(server, [("prompt", "Привет, мир")], audio)
    assert reply.json()["text"] == "Привет, как дела?"  # type: ignore[index]
    assert _openai(server, [("prompt", "")], audio).json()["text"] == "При, как дела?"  # type: ignore

    async def sessions() -> tuple[list[str], list[str]]:
        with_list = _ws_finals(server, WEAK, {"hotwords": ["Привет"]})
        without = _ws_finals(server, WEAK)
        (_, a), (_, b) = await asyncio.gather(with_list, without)
        return a, b

    biased, plain = asyncio.run(sessions())
    assert biased == ["Привет, как дела?"] and plain == ["При, как дела?"]
    assert "Привет" not in server.log  # hotword texts are never logged at info level


def test_request_lists_over_the_limits_are_refused(rnnt_tone_server: ServerProcess) -> None:
    server = rnnt_tone_server
    audio = wav_bytes(WEAK)
    many = ",".join(f"w{i}" for i in range(65))
    reply = server.request("POST", f"/v1/transcribe?hotwords={many}", audio)
    assert (reply.status, reply.json()) == (400, {
        "code": "too_many_hotwords", "error": "Too many hotwords: at most 64 phrases per request"})
    reply = server.request("POST", "/v1/transcribe/stream?hotwords=" + "x" * 65, audio)
    assert (reply.status, reply.json()) == (400, {
        "code": "hotword_phrase_too_long",
        "error": "A hotword phrase is too long: at most 64 characters"})
    # The OpenAI `prompt` is lenient (D24): a sentence or a list beyond the bounds is not a
    # hotword list and is ignored whole (not truncated: "Привет" in it would otherwise win).
    sentence = "Привет, это запись разговора двух коллег о планах на следующую неделю и о бюджете"
    for prompt in (sentence, ",".join(["Привет"] * 65)):
        reply = _openai(server, [("prompt", prompt)], audio)
        assert (reply.status, reply.json()["text"]) == (200, "При, как дела?")  # type: ignore
    ok = ",".join(f"w{i}" for i in range(64))
    assert server.request("POST", f"/v1/transcribe?hotwords={ok}", audio).status == 200

    async def ws_error() -> dict[str, Any]:
        ws, _ = await open_session(server)
        await ws.send(json.dumps({"type": "configure", "hotwords": ["x"] * 65}))
        message = json.loads(await asyncio.wait_for(ws.recv(), 10))
        await ws.close()
        return dict(message)

    assert asyncio.run(ws_error()) == {
        "type": "error", "code": "invalid_hotwords",
        "message": "hotwords must be a list of at most 64 phrases of 1 to 64 characters"
                   " without control characters"}


# --- bad input at start-up --------------------------------------------------------------------


def test_variant_pointing_at_a_missing_head_is_a_precise_error(letter_heads: Path,
                                                               tmp_path: Path) -> None:
    """e2e_rnnt and ctc present, rnnt asked for: its files are named, and since their checksums
    are not pinned, no download is tried without the operator's list."""
    both = tmp_path / "both"
    write_small_model(both)
    for f in HEADS["ctc"].files:
        (both / f).write_bytes((letter_heads / f).read_bytes())
    missing = "v3_rnnt_encoder.onnx, v3_rnnt_decoder.onnx, v3_rnnt_joint.onnx"
    expected = (f"Error: no known SHA-256 for {missing} (model variant rnnt): gigastt pins only"
                " the e2e_rnnt files, so list these files' checksums (sha256sum format) in a"
                f" file named by GIGASTT_MODEL_SHA256_FILE; model files missing in {both}:"
                f" {missing} (run `gigastt download --variant rnnt` on a connected machine and"
                " copy the directory, or point GIGASTT_MODEL_URL at a mirror)\n")
    serve = _cli("serve", "--port", "0", "--model-dir", str(both), "--model-variant", "rnnt")
    assert serve.returncode == 1 and serve.stderr.endswith(expected), serve.stderr
    env = {**_env(), "GIGASTT_MODEL_VARIANT": "rnnt"}
    wav = tmp_path / "a.wav"
    wav.write_bytes(wav_bytes(speech_like(1.0)))
    cli = _cli("transcribe", str(wav), "--model-dir", str(both), env=env)
    assert cli.returncode == 1 and cli.stderr.endswith(expected), cli.stderr
    bad_env = _cli("transcribe", str(wav), "--model-dir", str(both),
                   env={**_env(), "GIGASTT_MODEL_VARIANT": "tdt"})
    assert bad_env.returncode == 2 and "GIGASTT_MODEL_VARIANT must be one of auto, e2e_rnnt," \
        " rnnt, ctc, e2e_ctc" in bad_env.stderr


def test_download_variant_uses_the_operators_checksums(letter_heads: Path,
                                                       tmp_path: Path) -> None:
    files = {f: (letter_heads / f).read_bytes() for f in HEADS["ctc"].files}
    mirror = ModelServer(files)
    try:
        target = tmp_path / "models"
        env = {**_env(), "GIGASTT_MODEL_URL": mirror.url}
        refused = _cli("download", "--variant", "ctc", "--model-dir", str(target), env=env)
        assert refused.returncode == 1
        assert "no known SHA-256 for v3_ctc.onnx, v3_vocab.txt (model variant ctc)" \
            in refused.stderr and "GIGASTT_MODEL_SHA256_FILE" in refused.stderr
        assert mirror.requests() == []
        sums = tmp_path / "SHA256SUMS"
        sums.write_text("".join(f"{sha256_of(letter_heads / f)}  {f}\n" for f in files))
        done = _cli("download", "--variant", "ctc", "--skip-quantize", "--model-dir",
                    str(target), env={**env, "GIGASTT_MODEL_SHA256_FILE": str(sums)})
        assert done.returncode == 0, done.stderr
        assert sorted(p.name for p in target.iterdir() if not p.name.startswith(".")) == \
            sorted(files)
    finally:
        mirror.close()


@pytest.mark.parametrize(("content", "message"), [
    (b"\xd0\x9c\xd0\xb8\xd1\x80\n\xff\xfe\n", "is not UTF-8 (line 2, byte 7)"),
    ("".join(f"w{i}\n" for i in range(1025)).encode(), "has more than 1024 phrases"),
    (("ok\n" + "я" * 65 + "\n").encode(), "line 2 is 65 characters long; a hotword phrase may"
                                           " have at most 64"),
    ("сбер\t-1\n".encode(), "line 1: the weight after the TAB must be a number above 0 and"
                            " at most 10"),
])
def test_bad_hotwords_files_are_precise_errors(content: bytes, message: str, tone_heads: Path,
                                               tmp_path: Path) -> None:
    path = tmp_path / "hotwords.txt"
    path.write_bytes(content)
    serve = _cli("serve", "--port", "0", "--model-dir", str(tone_heads), "--hotwords-file",
                 str(path))
    assert serve.returncode == 1
    assert serve.stderr.endswith(f"Error: hotwords file {path} {message}\n") or \
        serve.stderr.endswith(f"Error: hotwords file {path}: {message}\n"), serve.stderr
    if message.startswith("is not UTF-8"):
        wav = tmp_path / "a.wav"
        wav.write_bytes(wav_bytes(WEAK))
        cli = _cli("transcribe", str(wav), "--model-dir", str(tone_heads), "--hotwords-file",
                   str(path))
        assert cli.returncode == 1 and cli.stderr.endswith(
            f"Error: hotwords file {path} {message}\n")


def test_cli_transcribe_with_a_hotwords_file_and_variant(tone_heads: Path, tmp_path: Path
                                                         ) -> None:
    wav = tmp_path / "a.wav"
    wav.write_bytes(wav_bytes(WEAK))
    phrases = tmp_path / "hotwords.txt"
    phrases.write_text("\ufeffПривет\t1.5\n\nмир\n", encoding="utf-8")
    for variant in ("e2e_rnnt", "e2e_ctc"):
        plain = _cli("transcribe", str(wav), "--model-dir", str(tone_heads), "--model-variant",
                     variant)
        biased = _cli("transcribe", str(wav), "--model-dir", str(tone_heads), "--model-variant",
                      variant, "--hotwords-file", str(phrases))
        assert (plain.stdout, biased.stdout) == ("При, как дела?\n", "Привет, как дела?\n")


def test_openai_prompt_is_a_hotword_list_only_within_the_bounds() -> None:
    # D24/D29: a phrase list within the request bounds is used; anything else (a sentence, the
    # previous transcript, a repeated field) keeps the server's list instead of a 400.
    assert prompt_phrases(["Сбер, GigaAM ,, Невский проспект"]) == [
        "Сбер", "GigaAM", "Невский проспект"]
    assert prompt_phrases([]) is None and prompt_phrases(["  , "]) is None
    assert prompt_phrases(["x" * 64]) == ["x" * 64]
    assert prompt_phrases(["x" * 65]) is None
    assert prompt_phrases([",".join(["a"] * 64)]) == ["a"] * 64
    assert prompt_phrases([",".join(["a"] * 65)]) is None
    assert prompt_phrases(["a", "b"]) is None
