"""``gigastt stream`` run for real against a real server: files, standard input, pacing, Ctrl-C,
and each way a session can fail (exit codes and their one-line messages).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gigastt.cli import main
from gigastt.client import Outcome, Printer, failure_line
from gigastt.testing.audio import silence, tone_sequence, wav_bytes
from tests.serverproc import ROOT, ServerProcess, pool_idle, serving
from tests.wsclient import open_session, pcm16

HELLO = ["▁При", "вет", ",", "▁мир", "."]
HOW = ["▁как", "▁де", "ла", "?"]
TEXT = "Привет, мир. как дела?"


def two_utterances(rate: int = 16000) -> np.ndarray:
    return np.concatenate([tone_sequence(HELLO, rate=rate), silence(1.2, rate),
                           tone_sequence(HOW, rate=rate), silence(0.8, rate)])


def client_env() -> dict[str, str]:
    # No proxy settings from the machine: the client honours them, these tests talk to loopback.
    return {k: v for k, v in os.environ.items()
            if not k.lower().endswith("_proxy") and not k.startswith("GIGASTT_")}


def gigastt_stream(*args: str, stdin: bytes | None = None,
                   timeout: float = 60) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "gigastt", "stream", *args], input=stdin,
                          capture_output=True, cwd=ROOT, env=client_env(), timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode,
                                       proc.stdout.decode(), proc.stderr.decode())


def url(server: ServerProcess, path: str = "/v1/ws") -> str:
    return f"ws://{server.host}:{server.port}{path}"


@pytest.fixture(scope="module")
def server(tone_model: Path) -> Iterator[ServerProcess]:
    yield from serving(tone_model, "--metrics")


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("stream") / "speech.wav"
    path.write_bytes(wav_bytes(two_utterances()))
    return path


def file_result(server: ServerProcess, data: bytes, fmt: str = "json") -> Any:
    reply = server.request("POST", f"/v1/transcribe?format={fmt}", data)
    assert reply.status == 200, reply.body[:200]
    return reply.json() if fmt == "json" else reply.body.decode()


# --- the transcript ---------------------------------------------------------------------------


def test_a_wav_file_at_real_time_gives_the_file_transcript(server: ServerProcess,
                                                           speech: Path) -> None:
    started = time.monotonic()
    done = gigastt_stream(str(speech), "--url", url(server))
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    file = file_result(server, speech.read_bytes())
    assert file["text"] == TEXT
    # Not a terminal: each final on a plain line, no partials, no control characters.
    assert done.stdout == "Привет, мир.\nкак дела?\n"
    # Paced at real time: it cannot end before the audio's own length has passed.
    assert elapsed >= len(two_utterances()) / 16000


def test_raw_pcm16_on_stdin_gives_the_same_transcript(server: ServerProcess) -> None:
    audio = two_utterances()
    done = gigastt_stream("-", "--rate", "16000", "--fast", "--format", "json",
                          "--url", url(server), stdin=pcm16(audio))
    assert done.returncode == 0, done.stderr
    messages = [json.loads(line) for line in done.stdout.splitlines()]
    assert messages[0]["type"] == "ready"
    finals = [m for m in messages if m["type"] == "final"]
    file = file_result(server, wav_bytes(audio))
    assert " ".join(f["text"] for f in finals if f["text"]) == file["text"] == TEXT
    # The words and their times are the file's (stream-relative times, docs/api.md).
    def timed(words: list[dict[str, Any]]) -> list[tuple[str, float, float]]:
        return [(w["word"], w["start"], w["end"]) for w in words]

    assert timed([w for f in finals for w in f["words"]]) == timed(file["words"])
    assert finals[-1]["text"] == ""  # the answer to `stop`


@pytest.mark.parametrize("rate", [44100, 22050])
def test_other_rates_are_sent_as_they_are_or_resampled(server: ServerProcess, tmp_path: Path,
                                                       rate: int) -> None:
    # 44.1 kHz is a session rate (sent as is); 22.05 kHz is not (resampled to 16 kHz first).
    path = tmp_path / f"speech{rate}.wav"
    path.write_bytes(wav_bytes(two_utterances(rate), rate))
    done = gigastt_stream(str(path), "--fast", "--url", url(server))
    assert done.returncode == 0, done.stderr
    assert file_result(server, path.read_bytes())["text"] == TEXT
    assert done.stdout == "Привет, мир.\nкак дела?\n"


def test_srt_output_is_the_file_export(server: ServerProcess, speech: Path) -> None:
    done = gigastt_stream(str(speech), "--fast", "--format", "srt", "--url", url(server))
    assert done.returncode == 0, done.stderr
    assert done.stdout == file_result(server, speech.read_bytes(), "srt")
    assert done.stdout.startswith("1\n00:00:00,320 --> ")


def test_fast_client_held_back_by_the_server_still_gets_every_final(
        server: ServerProcess, tmp_path: Path) -> None:
    # 90 s of audio sent as fast as the server takes it: the server falls behind, catches up in
    # passes of at most 8 s and stops reading the socket meanwhile (TCP back-pressure); the
    # client must wait (no keep-alive pings of its own that would time out behind its audio).
    parts = []
    for i in range(30):
        parts += [tone_sequence(HELLO if i % 2 == 0 else HOW), silence(1.5)]
    path = tmp_path / "long.wav"
    path.write_bytes(wav_bytes(np.concatenate(parts)))
    lagged_before = _passes_behind_by_more_than_5s(server)
    done = gigastt_stream(str(path), "--fast", "--url", url(server))
    assert done.returncode == 0, done.stderr
    assert done.stdout == "Привет, мир.\nкак дела?\n" * 15
    # The proof that the server was far behind this client (the metric of docs/api.md).
    assert _passes_behind_by_more_than_5s(server) > lagged_before


def _passes_behind_by_more_than_5s(server: ServerProcess) -> int:
    text = server.request("GET", "/metrics").body.decode()
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
              if line.startswith("gigastt_ws_lag_seconds_")}
    return int(values["gigastt_ws_lag_seconds_count"]
               - values['gigastt_ws_lag_seconds_bucket{le="5"}'])


# --- Ctrl-C ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_sigint_mid_stream_prints_the_final_and_exits_0(server: ServerProcess, tmp_path: Path,
                                                        fmt: str) -> None:
    # One long utterance with no pause, then silence: Ctrl-C arrives in the middle of it.
    audio = np.concatenate([tone_sequence(HELLO + HOW + HELLO), silence(20.0)])
    path = tmp_path / "long.wav"
    path.write_bytes(wav_bytes(audio))
    proc = subprocess.Popen(
        [sys.executable, "-m", "gigastt", "stream", str(path), "--format", "json",
         "--url", url(server)] if fmt == "json" else
        [sys.executable, "-m", "gigastt", "stream", str(path), "--url", url(server)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=client_env(), text=True)
    assert proc.stdout is not None
    try:
        if fmt == "json":
            while True:  # the first partial: the utterance is under way
                line = proc.stdout.readline()
                assert line, "the client ended before a partial"
                if json.loads(line)["type"] == "partial":
                    break
        else:
            # Text mode prints no partials off a terminal: wait until the session holds the
            # server's slot (the client handles Ctrl-C from before it connects), then speak on.
            deadline = time.monotonic() + 30
            while pool_idle(server, timeout=0.05) and time.monotonic() < deadline:
                pass
            time.sleep(0.8)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert err == ""
    if fmt == "json":
        texts = [json.loads(line)["text"] for line in out.splitlines()
                 if json.loads(line)["type"] == "final"]
        # The answer to `stop`, with the words spoken so far (or, had the signal come after
        # the utterance's end, its final and then an empty one).
        assert len([t for t in texts if t]) == 1
        text = next(t for t in texts if t)
    else:
        text = out.removesuffix("\n")
        assert "\n" not in text
    assert text and "Привет, мир. как дела? Привет, мир.".startswith(text)


# --- failures: exit 1 and one line -------------------------------------------------------------


def _one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
    return lines[0]


def test_nothing_listening_is_one_clear_line(speech: Path) -> None:
    import socket

    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    line = _one_error_line(gigastt_stream(str(speech), "--url", f"ws://127.0.0.1:{port}/v1/ws"))
    assert line == f"Error: cannot connect to ws://127.0.0.1:{port}/v1/ws: Connection refused"


def test_an_unknown_host_is_one_clear_line(speech: Path) -> None:
    # `.invalid` never resolves (RFC 6761); the lookup's own words, not "Unknown error -2".
    line = _one_error_line(gigastt_stream(str(speech), "--url", "ws://gigastt.invalid/v1/ws"))
    assert line.startswith("Error: cannot connect to ws://gigastt.invalid/v1/ws: ")
    assert "Unknown error" not in line and len(line) > len("Error: cannot connect to ws://"
                                                           "gigastt.invalid/v1/ws: ")


def test_a_wrong_path_is_a_refused_upgrade(server: ServerProcess, speech: Path) -> None:
    line = _one_error_line(gigastt_stream(str(speech), "--url", url(server, "/v1/nope")))
    assert line == f"Error: {url(server, '/v1/nope')} refused the WebSocket upgrade: HTTP 404"


def test_api_key_refused_without_it_and_accepted_with_it(tone_model: Path, tmp_path: Path,
                                                         speech: Path) -> None:
    key = tmp_path / "key"
    key.write_text("k" * 32 + "\n")
    keyed = ServerProcess(tone_model, "--api-key-file", str(key))
    try:
        line = _one_error_line(gigastt_stream(str(speech), "--fast", "--url", url(keyed)))
        assert line == (f"Error: {url(keyed)} refused the WebSocket upgrade: HTTP 401"
                        " (Missing or invalid API key)")
        done = gigastt_stream(str(speech), "--fast", "--url", url(keyed),
                              "--api-key-file", str(key))
        assert done.returncode == 0, done.stderr
        assert done.stdout == "Привет, мир.\nкак дела?\n"
        # The proxy's basic auth in the URL: the key then goes as the `bearer.` subprotocol.
        with_user = url(keyed).replace("ws://", "ws://user:secret@")
        done = gigastt_stream(str(speech), "--fast", "--url", with_user,
                              "--api-key-file", str(key))
        assert done.returncode == 0, done.stderr
        wrong = tmp_path / "wrong"
        wrong.write_text("w" * 32)
        line = _one_error_line(gigastt_stream(str(speech), "--url", with_user,
                                              "--api-key-file", str(wrong)))
        assert "secret" not in line and "HTTP 401" in line  # the password is never shown
    finally:
        keyed.stop()
    assert "k" * 32 not in keyed.log


@pytest.fixture(scope="module")
def single(tone_model: Path) -> Iterator[ServerProcess]:
    """One inference slot, waited for at most 3 s."""
    proc = ServerProcess(tone_model, "--pool-size", "1", "--pool-checkout-timeout-secs", "3",
                         "--metrics")
    yield proc
    proc.stop()


async def _holding_the_slot(server: ServerProcess, run: Any) -> Any:
    ws, _ = await open_session(server)  # `ready`: this session holds the only slot
    try:
        return await asyncio.to_thread(run)
    finally:
        await ws.close()


def test_server_busy_1013_is_one_clear_line(single: ServerProcess, speech: Path) -> None:
    done = asyncio.run(_holding_the_slot(
        single, lambda: gigastt_stream(str(speech), "--url", url(single))))
    line = _one_error_line(done)
    assert line == ("Error: server busy: no inference slot in time, try again later"
                    " (WebSocket close 1013)")
    assert pool_idle(single)


def test_a_second_ctrl_c_gives_up_at_once(single: ServerProcess, speech: Path) -> None:
    def run() -> tuple[int, str, str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gigastt", "stream", str(speech), "--url", url(single)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=client_env(),
            text=True)
        try:
            # Connected and queued for the slot: the final that `stop` asks for cannot come.
            deadline = time.monotonic() + 20
            while _waiters(single) < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            time.sleep(0.3)
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=10)
        finally:
            proc.kill()
        return proc.returncode, out, err

    code, out, err = asyncio.run(_holding_the_slot(single, run))
    assert (code, out, err) == (130, "", "")
    assert pool_idle(single)


def _waiters(server: ServerProcess) -> float:
    text = server.request("GET", "/metrics").body.decode()
    match = re.search(r"^gigastt_pool_waiters (\S+)$", text, re.M)
    assert match is not None
    return float(match.group(1))


def test_an_undecodable_file_is_one_clear_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    line = _one_error_line(gigastt_stream(str(bad)))
    assert line.startswith(f"Error: invalid audio in {bad}: ")
    line = _one_error_line(gigastt_stream(str(tmp_path / "missing.wav")))
    assert line == f"Error: cannot read {tmp_path / 'missing.wav'}: No such file or directory"


def test_bad_samples_met_while_sending_end_with_one_clear_line(server: ServerProcess,
                                                                tmp_path: Path) -> None:
    # The file is decoded as it is sent (D30): the NaN at 40 s is met after frames went out.
    x = np.tile(two_utterances(), 10)[: 16000 * 45].astype(np.float32)
    x[16000 * 40] = np.nan
    bad = tmp_path / "late.wav"
    bad.write_bytes(wav_bytes(x, 16000, sample_format="float32"))
    done = gigastt_stream(str(bad), "--url", url(server), "--fast")
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines()[-1] == (
        f"Error: invalid audio in {bad}: float WAV has non-finite samples (NaN or ±Inf); the"
        " first is at frame 640000 (40.000 s)")


# --- usage errors: exit 2 ----------------------------------------------------------------------


@pytest.mark.parametrize(("args", "message"), [
    (["-"], "raw PCM16 on standard input (FILE -) needs --rate"),
    (["-", "--rate", "22050"], "--rate must be one of 8000, 16000, 24000, 44100, 48000"),
    (["x.wav", "--rate", "16000"], "--rate is only for raw PCM16 on standard input"),
    (["x.wav", "--url", "http://127.0.0.1:9876/v1/ws"], "invalid --url"),
    (["x.wav", "--url", "ws://host:99999/v1/ws"], "invalid --url"),
    (["x.wav", "--fast", "--realtime"], "not allowed with argument"),
    (["x.wav", "--format", "vtt"], "invalid choice: 'vtt'"),
    (["x.wav", "--api-key-file", "/nonexistent/key"], "invalid API key file /nonexistent/key"),
    ([], "raw PCM16 on standard input (FILE -) needs --rate"),  # FILE defaults to -
])
def test_usage_errors_exit_2(args: list[str], message: str,
                            capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["stream", *args])
    assert exited.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert message in err and "usage: gigastt stream" in err


def test_a_url_password_is_never_shown(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["stream", "x.wav", "--url", "http://user:hunter2@host/v1/ws"])
    assert exited.value.code == 2 and "hunter2" not in capsys.readouterr().err


# --- the terminal line (sans-I/O) --------------------------------------------------------------


def test_partials_rewrite_one_terminal_line_and_finals_stay() -> None:
    out = io.StringIO()
    printer = Printer("text", out, tty=True, width=lambda: 20)

    def message(kind: str, text: str) -> None:
        body = {"type": kind, "text": text, "words": []}
        printer.message(json.dumps(body), body)

    message("partial", "Привет,")
    message("partial", "Привет, мир. как дела сегодня?")  # longer than the line: its tail
    message("final", "Привет, мир.")
    message("final", "")  # nothing to print, nothing to clear
    printer.finish(5.0)
    tail = "Привет, мир. как дела сегодня?"[-18:]
    assert out.getvalue() == ("\r\x1b[2KПривет," + "\r\x1b[2K…" + tail
                              + "\r\x1b[2K" + "Привет, мир.\n")


def test_on_a_terminal_partials_refresh_one_line(server: ServerProcess, speech: Path) -> None:
    import pty

    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gigastt", "stream", str(speech), "--fast",
             "--url", url(server)],
            stdout=follower, stderr=subprocess.PIPE, cwd=ROOT, env=client_env())
        os.close(follower)
        output = b""
        with contextlib.suppress(OSError):  # EIO: the client has closed the terminal
            while chunk := os.read(leader, 4096):
                output += chunk
        assert proc.wait(30) == 0
    finally:
        os.close(leader)
    text = output.decode()
    assert "\r\x1b[2KПривет," in text  # a partial, drawn over the line
    # Each final is written over the partial's line and ends it.
    assert "\r\x1b[2KПривет, мир.\r\n" in text and text.endswith("как дела?\r\n")
    finals = [line.rsplit("\x1b[2K", 1)[-1] for line in text.split("\r\n") if line]
    assert finals == ["Привет, мир.", "как дела?"]


@pytest.mark.parametrize(("code", "reason", "errors", "line"), [
    (1000, "", [], None),
    (1000, "idle timeout", [], None),
    (1000, "", [{"type": "error", "code": "inference_error",
                 "message": "Inference failed. Please check audio format."}],
     "server error: Inference failed. Please check audio format. (inference_error)"),
    (1013, "try again later", [{"type": "error", "code": "timeout", "message": "busy"}],
     "server busy: no inference slot in time, try again later (WebSocket close 1013)"),
    (1001, "server shutdown", [], "server shutdown (WebSocket close 1001)"),
    (1008, "max session duration", [{"type": "error", "code": "max_session_duration_exceeded",
                                     "message": "Maximum session duration exceeded"}],
     "Maximum session duration exceeded (max_session_duration_exceeded): max session duration"
     " (WebSocket close 1008)"),
    (None, "", [], "connection lost (WebSocket close 1006)"),
    (1002, "", [{"type": "error", "code": "x\x1b[31m", "message": "\x1b]0;pwned\x07hi"}],
     "]0;pwnedhi (x[31m): protocol error (WebSocket close 1002)"),
])
def test_each_ending_has_its_line(code: int | None, reason: str, errors: list[dict[str, Any]],
                                  line: str | None) -> None:
    assert failure_line(Outcome(code, reason, errors)) == line


def test_server_text_never_reaches_the_terminal_with_control_characters() -> None:
    out = io.StringIO()
    printer = Printer("text", out, tty=True, width=lambda: 80)
    body = {"type": "final", "text": "при\x1b[2Jвет\x07", "words": []}
    printer.message(json.dumps(body), body)
    assert out.getvalue() == "при[2Jвет\n"


def test_a_refusal_message_reaches_the_terminal_without_control_characters() -> None:
    from gigastt.client import _refusal_detail

    hostile = json.dumps({"error": "busy\x1b[2J\x1b]0;owned\x07 now"}).encode()
    assert _refusal_detail(hostile) == "busy[2J]0;owned now"
    assert _refusal_detail(b"\x1b[31mplain text\r\nsecond line") == "[31mplain text"
