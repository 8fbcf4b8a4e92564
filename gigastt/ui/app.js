// gigastt's page (docs/api.md "The browser page"): live dictation over /v1/ws and file
// transcription over /v1/transcribe. Same origin only; text is set as text, never as HTML.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  // The session rates the server takes (docs/api.md, `configure`); others are resampled by the
  // browser to 48 kHz.
  const RATES = [8000, 16000, 24000, 44100, 48000];
  const FRAME_SECONDS = 0.1;
  // Audio recorded before the session is open waits here: at most 5 s of it.
  const MAX_PENDING_FRAMES = 50;
  const STOP_GRACE_MS = 10000;
  const KEY_CHARS = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

  const live = {
    ws: null,
    ctx: null,
    media: null,
    node: null,
    source: null,
    pending: [],
    protocol: "1.2",
    opened: false,
    stopping: false,
    fallback: false,
    failed: false,
    stopTimer: 0,
  };

  // --- helpers ---------------------------------------------------------------------------

  function status(element, text, isError) {
    element.textContent = text;
    element.classList.toggle("error", Boolean(isError));
  }

  function apiKey() {
    return $("api-key").value.trim();
  }

  function seconds(value) {
    return Number(value).toFixed(2);
  }

  // Words as spans whose title gives their time and confidence (shown on hover).
  function wordsInto(element, words, text) {
    element.replaceChildren();
    if (!Array.isArray(words) || words.length === 0) {
      element.textContent = text || "";
      return;
    }
    words.forEach((word, index) => {
      if (index > 0) {
        element.append(" ");
      }
      const span = document.createElement("span");
      span.className = "word";
      span.textContent = String(word.word);
      let title = seconds(word.start) + "–" + seconds(word.end) + " s";
      if (typeof word.confidence === "number") {
        title += ", confidence " + Math.round(word.confidence * 100) + "%";
      }
      span.title = title;
      element.append(span);
    });
  }

  // --- live dictation --------------------------------------------------------------------

  function wsUrl() {
    return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/v1/ws";
  }

  function setRecording(recording) {
    const button = $("record");
    button.classList.toggle("recording", recording);
    button.textContent = recording ? "Stop" : "Record";
    button.disabled = false;
  }

  function microphoneMessage(error) {
    const name = error && error.name;
    if (name === "NotAllowedError" || name === "SecurityError") {
      return "Microphone access was refused. Allow the microphone for this site in the browser's settings, then press Record again.";
    }
    if (name === "NotFoundError" || name === "OverconstrainedError") {
      return "No microphone was found.";
    }
    if (name === "NotReadableError") {
      return "The microphone is in use by another program or could not be opened.";
    }
    return "The microphone could not be opened (" + (name || "unknown error") + ").";
  }

  async function startRecording() {
    if (!window.isSecureContext || !navigator.mediaDevices) {
      status($("live-status"), "Recording needs a secure page: open it over https:// or on localhost.", true);
      return;
    }
    const key = apiKey();
    if (key && !KEY_CHARS.test(key)) {
      status($("live-status"), "This API key cannot be sent by a browser: it may only hold letters, digits and !#$%&'*+-.^_`|~.", true);
      return;
    }
    $("record").disabled = true;
    status($("live-status"), "Opening the microphone…");
    try {
      // The recogniser wants the raw signal: no echo cancellation, noise suppression or gain.
      live.media = await navigator.mediaDevices.getUserMedia({
        audio: {
          echoCancellation: false,
          noiseSuppression: false,
          autoGainControl: false,
          channelCount: 1,
        },
      });
    } catch (error) {
      status($("live-status"), microphoneMessage(error), true);
      setRecording(false);
      return;
    }
    try {
      let ctx = new AudioContext();
      if (!RATES.includes(ctx.sampleRate)) {
        await ctx.close();
        ctx = new AudioContext({ sampleRate: 48000 });
      }
      live.ctx = ctx;
      await ctx.audioWorklet.addModule("/ui/worklet.js");
      live.source = ctx.createMediaStreamSource(live.media);
      live.node = new AudioWorkletNode(ctx, "pcm16-frames", {
        numberOfInputs: 1,
        numberOfOutputs: 1,
        channelCount: 1,
        channelCountMode: "explicit",
        channelInterpretation: "speakers",
        processorOptions: { frame: Math.round(ctx.sampleRate * FRAME_SECONDS) },
      });
      live.node.port.onmessage = onFrame;
      live.source.connect(live.node);
      // Its output is silence; being connected keeps the node running in every browser.
      live.node.connect(ctx.destination);
    } catch (error) {
      status($("live-status"), "The browser could not process the microphone's audio (" + error.name + ").", true);
      cleanup();
      setRecording(false);
      return;
    }
    live.pending = [];
    live.failed = false;
    live.protocol = "1.2";
    clearPartial();
    connect();
    setRecording(true);
  }

  function connect() {
    live.opened = false;
    live.stopping = false;
    live.fallback = false;
    const key = apiKey();
    let ws;
    try {
      // A browser cannot set headers on a WebSocket: the key goes as a subprotocol (D23).
      ws = new WebSocket(wsUrl(), key ? ["bearer." + key] : []);
    } catch (error) {
      status($("live-status"), "Could not open the connection (" + error.name + ").", true);
      cleanup();
      setRecording(false);
      return;
    }
    ws.binaryType = "arraybuffer";
    live.ws = ws;
    status($("live-status"), "Connecting…");
    ws.onopen = () => {
      live.opened = true;
      ws.send(JSON.stringify({
        type: "configure",
        sample_rate: live.ctx.sampleRate,
        protocol_version: live.protocol,
      }));
      for (const frame of live.pending) {
        ws.send(frame);
      }
      live.pending = [];
      status($("live-status"), "Waiting for the server…");
    };
    ws.onmessage = (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch (error) {
        return;
      }
      onMessage(message);
    };
    ws.onclose = (event) => onClose(ws, event);
  }

  function onFrame(event) {
    if (event.data === "flushed") {
      sendStop();
      return;
    }
    const ws = live.ws;
    if (ws && ws.readyState === WebSocket.OPEN) {
      ws.send(event.data);
    } else if (!live.stopping && live.pending.length < MAX_PENDING_FRAMES) {
      live.pending.push(event.data);
    }
  }

  function clearPartial() {
    $("committed").textContent = "";
    $("tentative").textContent = "";
  }

  function onMessage(message) {
    switch (message.type) {
      case "ready":
        status($("live-status"), "Listening — speak now.");
        break;
      case "partial": {
        // Protocol 1.2 splits the words agreed on from the rest; 1.0 has only the text.
        const committed = typeof message.committed === "string" ? message.committed : "";
        const tentative = typeof message.tentative === "string" ? message.tentative : String(message.text || "");
        $("committed").textContent = committed;
        $("tentative").textContent = tentative;
        $("placeholder").hidden = true;
        break;
      }
      case "final":
        clearPartial();
        if (message.text) {
          const paragraph = document.createElement("p");
          paragraph.className = "final";
          wordsInto(paragraph, message.words, message.text);
          $("finals").append(paragraph);
          $("placeholder").hidden = true;
        }
        break;
      case "error":
        if (message.code === "unsupported_protocol_version" && live.protocol !== "1.0") {
          live.fallback = true; // an older server: reconnect with protocol 1.0
        } else if (message.code === "timeout") {
          live.failed = true;
          status($("live-status"), "The server is busy: no recognition slot is free. Try again in a moment.", true);
        } else {
          status($("live-status"), "Server: " + String(message.message || message.code), true);
        }
        break;
      default:
        break;
    }
  }

  function closeMessage(ws, event) {
    switch (event.code) {
      case 1000:
        return event.reason === "idle timeout" ? "The session ended: no audio reached the server for too long." : "";
      case 1001:
        return "The server is shutting down; the session has ended.";
      case 1008:
        return "The session ended: " + (event.reason || "server policy") + ".";
      case 1013:
        return "The server is busy: no recognition slot is free. Try again in a moment.";
      default:
        if (!live.opened) {
          // The browser hides why an upgrade failed (status 401, 403, 429, 503…).
          return "Could not connect to the server. Check the API key (if the server needs one); behind a proxy, the server must allow this page's origin (--allow-origin) and the proxy must pass WebSockets.";
        }
        return "The connection to the server was lost.";
    }
  }

  function onClose(ws, event) {
    if (ws !== live.ws) {
      return;
    }
    if (live.fallback && !live.stopping) {
      live.protocol = "1.0";
      connect();
      return;
    }
    const message = closeMessage(ws, event);
    if (message) {
      status($("live-status"), message, true);
    } else if (!live.failed) {
      status($("live-status"), "Stopped.");
    }
    clearPartial();
    cleanup();
    live.ws = null;
    setRecording(false);
  }

  function stopRecording() {
    if (live.stopping) {
      return;
    }
    live.stopping = true;
    $("record").disabled = true;
    status($("live-status"), "Finishing…");
    if (live.source) {
      live.source.disconnect();
    }
    if (live.media) {
      live.media.getTracks().forEach((track) => track.stop());
    }
    if (live.node) {
      live.node.port.postMessage("flush"); // the last partial frame, then "flushed"
    } else {
      sendStop();
    }
  }

  function sendStop() {
    const ws = live.ws;
    if (ws && ws.readyState === WebSocket.OPEN) {
      ws.send(JSON.stringify({ type: "stop" }));
      // The server answers with the final and closes; a server that never does is left.
      live.stopTimer = setTimeout(() => ws.close(), STOP_GRACE_MS);
    } else if (ws) {
      ws.close();
    }
  }

  function cleanup() {
    clearTimeout(live.stopTimer);
    if (live.media) {
      live.media.getTracks().forEach((track) => track.stop());
    }
    if (live.ctx && live.ctx.state !== "closed") {
      live.ctx.close();
    }
    live.media = live.ctx = live.node = live.source = null;
    live.pending = [];
  }

  // --- files -----------------------------------------------------------------------------

  const file = { blob: null, name: "transcript", urls: [] };

  function authHeaders() {
    const key = apiKey();
    return key ? { Authorization: "Bearer " + key } : {};
  }

  async function refusal(response) {
    let body = null;
    try {
      body = await response.json();
    } catch (error) {
      body = null;
    }
    const said = body && typeof body.error === "string" ? body.error : "";
    switch (response.status) {
      case 401:
        return "The server needs an API key: enter it under “API key”.";
      case 403:
        return "The server does not allow this page's origin (start it with --allow-origin).";
      case 413:
        return "The file is larger than the server accepts.";
      case 422:
        return "The server could not read this audio" + (said ? ": " + said : ".");
      case 429:
        return "Too many requests: try again in " + (response.headers.get("retry-after") || "a few") + " s.";
      case 503:
        return "The server is busy: try again in a moment.";
      default:
        return "The server answered " + response.status + (said ? ": " + said : ".");
    }
  }

  function transcribe(format) {
    const query = format === "json" ? "" : "?format=" + format;
    // From the origin, not relative to the page: a page opened as https://user:password@host/
    // keeps those in its URL, and fetch() refuses URLs with credentials (the browser still
    // sends the Basic auth it has cached for this origin).
    return fetch(location.origin + "/v1/transcribe" + query, {
      method: "POST",
      body: file.blob,
      headers: authHeaders(),
      cache: "no-store",
    });
  }

  // The server's answer for `format`, or null once what went wrong is shown.
  async function transcribed(format) {
    let response;
    try {
      response = await transcribe(format);
    } catch (error) {
      status($("file-status"), "The connection to the server failed.", true);
      return null;
    }
    if (!response.ok) {
      status($("file-status"), await refusal(response), true);
      return null;
    }
    return response;
  }

  function resetDownloads() {
    file.urls.forEach((url) => URL.revokeObjectURL(url));
    file.urls = [];
    for (const format of ["text", "srt", "vtt"]) {
      const link = $("download-" + format);
      link.href = "#";
      delete link.dataset.ready;
      link.download = file.name + (format === "text" ? ".txt" : "." + format);
    }
  }

  function offer(format, text, type) {
    const url = URL.createObjectURL(new Blob([text], { type: type }));
    file.urls.push(url);
    const link = $("download-" + format);
    link.href = url;
    link.dataset.ready = "1";
    return link;
  }

  async function upload(chosen) {
    if (!chosen) {
      return;
    }
    file.blob = chosen;
    file.name = (chosen.name || "transcript").replace(/\.[^.]*$/, "") || "transcript";
    resetDownloads();
    $("file-result").hidden = true;
    status($("file-status"), "Transcribing " + chosen.name + "…");
    const response = await transcribed("json");
    if (!response) {
      return;
    }
    const result = await response.json();
    wordsInto($("file-text"), result.words, result.text);
    offer("text", result.text + "\n", "text/plain;charset=utf-8");
    $("file-result").hidden = false;
    status($("file-status"), "Done: " + chosen.name + ", " + seconds(result.duration) + " s of audio.");
  }

  // Subtitles are made by the server (its cue rules, docs/api.md "Exports") when first asked for.
  async function download(event, format) {
    const link = event.currentTarget;
    if (link.dataset.ready || !file.blob) {
      return;
    }
    event.preventDefault();
    status($("file-status"), "Making the " + format.toUpperCase() + " file…");
    const response = await transcribed(format);
    if (!response) {
      return;
    }
    const type = format === "srt" ? "application/x-subrip" : "text/vtt";
    offer(format, await response.text(), type + ";charset=utf-8").click();
    status($("file-status"), format.toUpperCase() + " file ready.");
  }

  // --- wiring ----------------------------------------------------------------------------

  function init() {
    $("record").addEventListener("click", () => {
      if (live.ws || live.media) {
        stopRecording();
      } else {
        startRecording();
      }
    });
    $("key-form").addEventListener("submit", (event) => event.preventDefault());
    $("file-input").addEventListener("change", (event) => {
      const chosen = event.target.files[0];
      event.target.value = ""; // choosing the same file again (after a fix) is a new upload
      upload(chosen);
    });
    const drop = $("drop");
    drop.addEventListener("dragover", (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (event) => {
      event.preventDefault();
      drop.classList.remove("over");
      upload(event.dataTransfer.files[0]);
    });
    $("download-text").addEventListener("click", (event) => {
      if (!event.currentTarget.dataset.ready) {
        event.preventDefault();
      }
    });
    $("download-srt").addEventListener("click", (event) => download(event, "srt"));
    $("download-vtt").addEventListener("click", (event) => download(event, "vtt"));
    if (!window.isSecureContext) {
      status($("live-status"), "Recording needs a secure page: open it over https:// or on localhost.", true);
    }
  }

  init();
})();
