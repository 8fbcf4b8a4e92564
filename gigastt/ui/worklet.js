// gigastt's AudioWorklet (docs/api.md "The browser page"): the microphone's float samples as
// PCM16 little-endian mono at the context's rate, posted in frames of `frame` samples (100 ms).
"use strict";

class Pcm16Frames extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.size = options.processorOptions.frame;
    this.frame = new Int16Array(this.size);
    this.filled = 0;
    this.port.onmessage = (event) => {
      if (event.data === "flush") {
        this.post();
        this.port.postMessage("flushed");
      }
    };
  }

  post() {
    if (this.filled > 0) {
      const out = this.frame.slice(0, this.filled);
      this.port.postMessage(out.buffer, [out.buffer]);
      this.filled = 0;
    }
  }

  process(inputs) {
    // One input, down-mixed to one channel by the node's options; nothing while disconnected.
    const samples = inputs[0] && inputs[0][0];
    if (samples) {
      for (let i = 0; i < samples.length; i++) {
        // The server reads value / 32768 (docs/api.md, binary frames): the exact inverse.
        const value = Math.round(samples[i] * 32768);
        this.frame[this.filled++] = value > 32767 ? 32767 : value < -32768 ? -32768 : value;
        if (this.filled === this.size) {
          this.post();
        }
      }
    }
    return true;
  }
}

registerProcessor("pcm16-frames", Pcm16Frames);
