// AudioWorklet: microphone samples -> 16 kHz mono signed 16-bit little-endian PCM.
//
// Runs on the audio rendering thread. Input channels are averaged to mono, low-pass
// filtered (windowed-sinc FIR, cut-off just under the target's Nyquist frequency) and
// resampled by linear interpolation between filtered samples, so any device rate works
// (48 kHz, 44.1 kHz, ...). Complete frames of `frameMs` milliseconds are posted to the
// main thread as transferable ArrayBuffers: {type: "pcm", buffer, samples}.
// Messages in: {type: "flush"} posts the partial frame, then {type: "flushed"};
// {type: "stop"} ends the processor.

function designLowPass(cutoff, taps) {
  // cutoff in cycles per input sample (0..0.5); Blackman window; unity gain at DC.
  const h = new Float32Array(taps);
  const mid = (taps - 1) / 2;
  let sum = 0;
  for (let n = 0; n < taps; n++) {
    const x = n - mid;
    const sinc = x === 0 ? 2 * cutoff : Math.sin(2 * Math.PI * cutoff * x) / (Math.PI * x);
    const w =
      0.42 - 0.5 * Math.cos((2 * Math.PI * n) / (taps - 1)) +
      0.08 * Math.cos((4 * Math.PI * n) / (taps - 1));
    h[n] = sinc * w;
    sum += h[n];
  }
  for (let n = 0; n < taps; n++) h[n] /= sum;
  return h;
}

class PcmEncoder extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = (options && options.processorOptions) || {};
    this.outRate = opts.targetRate || 16000;
    this.frameSamples = Math.max(1, Math.round((this.outRate * (opts.frameMs || 250)) / 1000));
    // Input samples per output sample; `sampleRate` is the worklet scope's global.
    this.step = sampleRate / this.outRate;
    this.h = null;
    if (this.step > 1.0001) {
      let taps = Math.ceil(this.step * 16) | 1;
      taps = Math.min(Math.max(taps, 15), 255);
      this.h = designLowPass((0.45 * this.outRate) / sampleRate, taps);
    }
    this.history = this.h ? this.h.length : 2;
    this.buf = new Float32Array(8192);
    this.len = 0; // samples held in buf
    this.base = 0; // absolute index of buf[0]
    this.pos = 0; // absolute input position of the next output sample
    this.frame = new DataView(new ArrayBuffer(this.frameSamples * 2));
    this.filled = 0;
    this.running = true;
    this.port.onmessage = (event) => {
      const type = event.data && event.data.type;
      if (type === "flush") {
        this.emit();
        this.port.postMessage({ type: "flushed" });
      } else if (type === "stop") {
        this.running = false;
      }
    };
  }

  input(n) {
    // Raw (mono) sample at absolute index n; silence before the stream began.
    const i = n - this.base;
    return i >= 0 ? this.buf[i] : 0;
  }

  filtered(n) {
    const h = this.h;
    if (!h) return this.input(n);
    let acc = 0;
    for (let j = 0; j < h.length; j++) acc += h[j] * this.input(n - j);
    return acc;
  }

  emit() {
    if (this.filled === 0) return;
    const bytes = this.frame.buffer.slice(0, this.filled * 2);
    this.port.postMessage({ type: "pcm", buffer: bytes, samples: this.filled }, [bytes]);
    this.filled = 0;
  }

  push(channels) {
    const n = channels[0].length;
    if (this.len + n > this.buf.length) {
      const bigger = new Float32Array(Math.max(this.buf.length * 2, this.len + n));
      bigger.set(this.buf.subarray(0, this.len));
      this.buf = bigger;
    }
    const count = channels.length;
    for (let k = 0; k < n; k++) {
      let s = 0;
      for (let c = 0; c < count; c++) s += channels[c][k];
      this.buf[this.len + k] = s / count;
    }
    this.len += n;
  }

  drain() {
    const last = this.base + this.len - 1;
    for (;;) {
      const i = Math.floor(this.pos);
      const frac = this.pos - i;
      if (i + (frac > 0 ? 1 : 0) > last) break;
      let v = this.filtered(i);
      if (frac > 0) v += (this.filtered(i + 1) - v) * frac;
      v = v < -1 ? -1 : v > 1 ? 1 : v;
      this.frame.setInt16(this.filled * 2, Math.round(v < 0 ? v * 0x8000 : v * 0x7fff), true);
      this.filled += 1;
      if (this.filled === this.frameSamples) this.emit();
      this.pos += this.step;
    }
    // Keep what the filter still needs for the next output samples.
    const drop = Math.floor(this.pos) - this.history - this.base;
    if (drop > 0) {
      this.buf.copyWithin(0, drop, this.len);
      this.len -= drop;
      this.base += drop;
    }
  }

  process(inputs) {
    const input = inputs[0];
    if (this.running && input && input.length > 0 && input[0].length > 0) {
      this.push(input);
      this.drain();
    }
    return this.running;
  }
}

registerProcessor("pcm-encoder", PcmEncoder);
