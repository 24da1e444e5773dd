// The transcription page: microphone or file -> /client/ws/speech, results rendered live;
// cluster status from /client/ws/status (pushed) and /status (polled).
// Every URL is relative to the page, so the page works behind a proxy, under a path
// prefix and over https/wss. No framework, no build step.

const PCM_CAPS =
  "audio/x-raw, layout=(string)interleaved, rate=(int)16000, format=(string)S16LE, channels=(int)1";
const FRAME_MS = 250;
const STATUS_POLL_MS = 3000;
const FINISH_TIMEOUT_MS = 60000;
const UPLOAD_CHUNK = 64 * 1024;
const UPLOAD_HIGH_WATER = 1 << 20;

const STATUS_NAMES = {
  1: "No speech",
  2: "Aborted",
  3: "Audio capture error",
  4: "Network error",
  5: "Not allowed",
  6: "Service not allowed",
  7: "Bad grammar",
  8: "Language not supported",
  9: "No decoder available",
};

const $ = (id) => document.getElementById(id);

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// ---------------------------------------------------------------- URLs and formatting

function socketUrl(path, params = {}) {
  const url = new URL(path, document.baseURI);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  // Browsers cannot set headers on a websocket: the page's own ?token= (API key or
  // signed token, when the gateway requires one) goes on in the query.
  const token = new URLSearchParams(window.location.search).get("token");
  if (token) params = { ...params, token };
  // encodeURIComponent: spaces as %20, never "+", for the caps string.
  url.search = Object.entries(params)
    .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`)
    .join("&");
  return url.href;
}

function clock(seconds) {
  const s = Math.max(0, Number(seconds) || 0);
  const m = Math.floor(s / 60);
  const rest = s - m * 60;
  const h = Math.floor(m / 60);
  const mm = h ? String(m % 60).padStart(2, "0") : String(m);
  return `${h ? `${h}:` : ""}${mm}:${rest.toFixed(1).padStart(4, "0")}`;
}

function wallTime(date = new Date()) {
  return date.toLocaleTimeString([], {
    hour: "2-digit",
    minute: "2-digit",
    second: "2-digit",
    hourCycle: "h23",
  });
}

function duration(seconds) {
  const s = Math.round(Number(seconds) || 0);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

// ---------------------------------------------------------------- notices

function showNotice(title, text, kind = "error") {
  const box = $("notice");
  box.dataset.kind = kind;
  $("notice-title").textContent = title;
  $("notice-text").textContent = text || "";
  box.hidden = false;
}

function hideNotice() {
  $("notice").hidden = true;
}

// ---------------------------------------------------------------- transcript

function wordTime(start, end) {
  return `${start.toFixed(2)}–${end.toFixed(2)} s`;
}

// A final's words as spans that tell their time (title on hover; a tooltip when focused
// from the keyboard), when the server aligned them ("word-alignment": start and length
// in seconds from the start of the stream) and they spell the transcript: a
// post-processor may have changed the text, and then the words no longer fit it.
// Otherwise null: the row shows plain text.
function timedWords(text, alignment) {
  if (!Array.isArray(alignment) || alignment.length === 0) return null;
  const ok = (w) =>
    w && typeof w.word === "string" && Number.isFinite(w.start) && Number.isFinite(w.length);
  if (!alignment.every(ok)) return null;
  const squash = (s) => s.replace(/\s+/g, "");
  if (squash(alignment.map((w) => w.word).join("")) !== squash(text)) return null;
  const nodes = [];
  alignment.forEach((w, i) => {
    if (i) nodes.push(document.createTextNode(" "));
    const end = w.start + Math.max(0, w.length);
    const span = el("span", "word", w.word.trim());
    span.title = wordTime(w.start, end);
    span.dataset.start = w.start.toFixed(3);
    span.dataset.end = end.toFixed(3);
    // One tab stop per row (its first word); the arrow keys move between its words.
    span.tabIndex = i === 0 ? 0 : -1;
    nodes.push(span);
  });
  return nodes;
}

function moveWordFocus(event) {
  const word = event.target instanceof Element ? event.target.closest(".word") : null;
  if (!word) return;
  const words = [...word.parentElement.querySelectorAll(".word")];
  const at = words.indexOf(word);
  const to = { ArrowRight: at + 1, ArrowLeft: at - 1, Home: 0, End: words.length - 1 }[event.key];
  if (to === undefined || to < 0 || to >= words.length) return;
  event.preventDefault();
  word.tabIndex = -1;
  words[to].tabIndex = 0;
  words[to].focus();
}

const transcript = {
  groups: [], // {node, list, partial, source, started, finals: [{start, end, text}]}
  current: null,

  begin(source, label) {
    $("empty").hidden = true;
    const node = el("section", "group");
    node.dataset.source = source;
    const head = el("div", "group-head");
    head.append(el("span", `group-icon group-icon-${source}`));
    head.append(el("span", "group-label", label));
    head.append(el("span", "group-time", wallTime()));
    const list = el("ol", "segments");
    const partial = el("div", "partial");
    partial.hidden = true;
    node.append(head, list, partial);
    $("transcript").append(node);
    const group = { node, list, partial, source, label, started: new Date(), finals: [] };
    this.groups.push(group);
    this.current = group;
    this.updateActions();
    return group;
  },

  partial(group, text) {
    // The worker repeats an unchanged best path at every interval: nothing to redraw.
    if (group.partial.textContent === text && group.partial.hidden === !text) return;
    group.partial.hidden = !text;
    group.partial.textContent = text;
    this.scroll();
  },

  final(group, segment, text, start, length, alignment) {
    group.partial.hidden = true;
    group.partial.textContent = "";
    if (!text) return;
    const row = el("li", "final");
    row.dataset.segment = String(segment);
    const hasTime = typeof start === "number";
    if (hasTime) row.dataset.start = String(start);
    const stamp = el("span", "stamp", hasTime ? clock(start) : "");
    if (hasTime && typeof length === "number") {
      stamp.title = `${clock(start)} – ${clock(start + length)} from the start of the stream`;
    }
    const words = timedWords(text, alignment);
    const body = el("span", "text");
    if (words) {
      body.classList.add("timed");
      body.append(...words);
    } else {
      body.textContent = text;
    }
    row.append(stamp, body);
    group.list.append(row);
    group.finals.push({ start, end: hasTime ? start + (length || 0) : undefined, text });
    this.updateActions();
    this.scroll();
  },

  end(group) {
    group.partial.hidden = true;
    if (group.finals.length === 0 && !group.node.querySelector(".group-note")) {
      group.node.append(el("div", "group-note", "No speech recognised."));
    }
  },

  note(group, text) {
    group.node.append(el("div", "group-note", text));
  },

  scroll() {
    const box = $("transcript");
    box.scrollTop = box.scrollHeight;
  },

  asText() {
    return this.groups
      .filter((g) => g.finals.length)
      .map((g) => {
        const lines = g.finals.map((f) => `[${clock(f.start)}] ${f.text}`);
        return `# ${g.label} — ${g.started.toLocaleString()}\n${lines.join("\n")}`;
      })
      .join("\n\n");
  },

  clear() {
    for (const g of this.groups) g.node.remove();
    this.groups = [];
    this.current = null;
    $("empty").hidden = false;
    this.updateActions();
  },

  updateActions() {
    const anyFinal = this.groups.some((g) => g.finals.length);
    $("copy").disabled = !anyFinal;
    $("download").disabled = !anyFinal;
    $("clear").disabled = this.groups.length === 0 || app.busy();
  },
};

// ---------------------------------------------------------------- one speech session

class SpeechSession {
  // A websocket to client/ws/speech; results go to a transcript group.
  constructor({ contentType, model, group, onEnd }) {
    const params = { "content-type": contentType };
    if (model) params.model = model;
    this.group = group;
    this.onEnd = onEnd;
    this.sid = "";
    this.failed = false;
    this.ended = false;
    this.eosSent = false;
    this.ws = new WebSocket(socketUrl("client/ws/speech", params));
    this.ws.binaryType = "arraybuffer";
    this.opened = new Promise((resolve, reject) => {
      this.ws.addEventListener("open", () => resolve(), { once: true });
      this.ws.addEventListener("close", () => reject(new Error("closed")), { once: true });
    });
    this.opened.catch(() => {});
    this.ws.addEventListener("message", (event) => this.message(event.data));
    this.ws.addEventListener("close", (event) => this.closed(event));
  }

  get open() {
    return this.ws.readyState === WebSocket.OPEN;
  }

  send(data) {
    if (this.open && !this.eosSent) this.ws.send(data);
  }

  eos() {
    if (this.open && !this.eosSent) {
      this.ws.send("EOS");
      this.eosSent = true;
      this.finishTimer = setTimeout(() => this.ws.close(4000, "no final"), FINISH_TIMEOUT_MS);
    }
  }

  abort() {
    if (this.ws.readyState <= WebSocket.OPEN) this.ws.close(1000, "cancelled");
  }

  message(data) {
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return;
    }
    if (msg.id && !this.sid) {
      this.sid = msg.id;
      this.group.node.dataset.sid = msg.id;
    }
    if (msg.status !== 0) {
      this.failed = true;
      const name = STATUS_NAMES[msg.status] || "Error";
      const text = msg.message || "";
      showNotice(`${name} (status ${msg.status})`, text);
      transcript.note(this.group, text || `${name} (status ${msg.status})`);
      return;
    }
    const result = msg.result || {};
    const hyp = (result.hypotheses && result.hypotheses[0]) || {};
    const text = (hyp.transcript || "").trim();
    if (result.final) {
      if (this.group.source === "file" && typeof msg["total-length"] === "number") {
        app.setAudioSeconds(msg["total-length"]);
      }
      transcript.final(
        this.group,
        msg.segment,
        text,
        msg["segment-start"],
        msg["segment-length"],
        hyp["word-alignment"],
      );
    } else {
      transcript.partial(this.group, text);
    }
  }

  closed(event) {
    clearTimeout(this.finishTimer);
    if (this.ended) return;
    this.ended = true;
    if (!this.failed && event.code !== 1000) {
      const reason =
        event.code === 1012
          ? "The gateway is restarting; please try again."
          : event.code === 1006
            ? "The connection to the gateway was lost."
            : `The connection closed (code ${event.code}${event.reason ? `: ${event.reason}` : ""}).`;
      showNotice("Connection closed", reason);
      transcript.note(this.group, reason);
    }
    transcript.end(this.group);
    this.onEnd(this);
  }
}

// ---------------------------------------------------------------- microphone

class Microphone {
  // getUserMedia -> AudioWorklet (16 kHz S16LE frames) -> callback; AnalyserNode for the meter.
  async start(onFrame) {
    if (!window.isSecureContext) {
      throw new Error("The microphone needs a secure page: open it over https or on localhost.");
    }
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw new Error("This browser cannot record audio.");
    }
    this.stream = await navigator.mediaDevices.getUserMedia({
      audio: {
        channelCount: 1,
        echoCancellation: false,
        noiseSuppression: false,
        autoGainControl: false,
      },
    });
    this.context = new AudioContext();
    await this.context.audioWorklet.addModule(new URL("pcm-worklet.js", document.baseURI));
    this.source = this.context.createMediaStreamSource(this.stream);
    this.node = new AudioWorkletNode(this.context, "pcm-encoder", {
      numberOfInputs: 1,
      numberOfOutputs: 0,
      channelCount: 1,
      channelCountMode: "explicit",
      channelInterpretation: "speakers",
      processorOptions: { targetRate: 16000, frameMs: FRAME_MS },
    });
    this.flushed = null;
    this.node.port.onmessage = (event) => {
      const data = event.data;
      if (data.type === "pcm") onFrame(data.buffer, data.samples);
      else if (data.type === "flushed" && this.flushed) this.flushed();
    };
    this.analyser = this.context.createAnalyser();
    this.analyser.fftSize = 1024;
    this.source.connect(this.node);
    this.source.connect(this.analyser);
    if (this.context.state === "suspended") await this.context.resume();
    this.samples = new Float32Array(this.analyser.fftSize);
  }

  level() {
    // 0..1 on a dB scale (-60 dBFS .. 0 dBFS) of the current block's RMS.
    if (!this.analyser) return 0;
    this.analyser.getFloatTimeDomainData(this.samples);
    let sum = 0;
    for (const s of this.samples) sum += s * s;
    const rms = Math.sqrt(sum / this.samples.length);
    const db = 20 * Math.log10(rms + 1e-9);
    return Math.min(1, Math.max(0, (db + 60) / 60));
  }

  async flush() {
    // The partial last frame, then resolve.
    if (!this.node) return;
    await new Promise((resolve) => {
      this.flushed = resolve;
      this.node.port.postMessage({ type: "flush" });
      setTimeout(resolve, 500);
    });
  }

  stop() {
    if (this.node) this.node.port.postMessage({ type: "stop" });
    if (this.stream) for (const track of this.stream.getTracks()) track.stop();
    if (this.source) this.source.disconnect();
    if (this.context) this.context.close().catch(() => {});
    this.node = this.source = this.analyser = this.context = this.stream = null;
  }
}

// ---------------------------------------------------------------- the page's state

const app = {
  state: "idle", // idle | connecting | recording | uploading | finishing
  session: null,
  mic: null,
  audioSeconds: 0,
  meterFrame: 0,

  busy() {
    return this.state !== "idle";
  },

  setState(state, detail) {
    this.state = state;
    document.body.dataset.state = state;
    const button = $("record");
    const recording = state === "recording" || state === "uploading";
    button.setAttribute("aria-pressed", String(recording));
    button.disabled = state === "connecting" || state === "finishing";
    button.querySelector(".record-label").textContent =
      state === "recording" ? "Stop" : state === "uploading" ? "Cancel" : "Record";
    $("file").disabled = this.busy();
    $("model").disabled = this.busy();
    document.querySelector(".file-btn").classList.toggle("disabled", this.busy());
    const labels = {
      idle: "Ready",
      connecting: "Connecting…",
      recording: "Listening",
      uploading: "Sending file",
      finishing: "Finishing the last segment…",
    };
    $("session-state").textContent = detail || labels[state];
    transcript.updateActions();
  },

  setAudioSeconds(seconds) {
    this.audioSeconds = seconds;
    const timer = $("timer");
    timer.textContent = clock(seconds);
    timer.dataset.audioSeconds = seconds.toFixed(2);
  },

  newSession(contentType, source, label) {
    hideNotice();
    const group = transcript.begin(source, label);
    const session = new SpeechSession({
      contentType,
      model: $("model").value,
      group,
      onEnd: (s) => this.sessionEnded(s),
    });
    this.session = session;
    status.refreshSoon();
    return session;
  },

  sessionEnded(session) {
    if (this.session !== session) return;
    this.session = null;
    this.stopMic();
    this.setState("idle");
    status.refreshSoon();
  },

  // -- microphone

  async record() {
    if (this.busy()) return;
    this.setState("connecting");
    this.setAudioSeconds(0);
    const pending = [];
    let sent = 0;
    let session = null;
    const mic = new Microphone();
    this.mic = mic;
    try {
      await mic.start((buffer, samples) => {
        sent += samples;
        this.setAudioSeconds(sent / 16000);
        if (session && session.open) session.send(buffer);
        else pending.push(buffer);
      });
    } catch (err) {
      this.stopMic();
      this.setState("idle");
      const denied = err && (err.name === "NotAllowedError" || err.name === "SecurityError");
      showNotice(
        denied ? "Microphone blocked" : "Microphone unavailable",
        denied ? "Allow microphone access for this page and try again." : String(err.message || err),
      );
      return;
    }
    session = this.newSession(PCM_CAPS, "mic", "Microphone");
    try {
      await session.opened;
    } catch {
      if (!session.failed) showNotice("Cannot reach the gateway", "The speech websocket did not open.");
      return; // sessionEnded has reset the page
    }
    for (const buffer of pending.splice(0)) session.send(buffer);
    if (this.session === session) {
      this.setState("recording");
      this.runMeter();
    }
  },

  async stop() {
    const session = this.session;
    if (!session) return;
    if (this.state === "recording") {
      this.setState("finishing");
      if (this.mic) await this.mic.flush();
      this.stopMic();
      session.eos();
    } else if (this.state === "uploading") {
      this.uploadCancelled = true;
      session.abort();
    }
  },

  stopMic() {
    if (this.mic) this.mic.stop();
    this.mic = null;
    cancelAnimationFrame(this.meterFrame);
    $("meter-fill").style.transform = "scaleX(0)";
  },

  runMeter() {
    const tick = () => {
      if (!this.mic) return;
      $("meter-fill").style.transform = `scaleX(${this.mic.level().toFixed(3)})`;
      this.meterFrame = requestAnimationFrame(tick);
    };
    this.meterFrame = requestAnimationFrame(tick);
  },

  // -- file

  async transcribeFile(file) {
    if (this.busy() || !file) return;
    this.setState("connecting");
    this.setAudioSeconds(0);
    this.uploadCancelled = false;
    // Empty content type: the gateway detects WAV, OGG, WebM, MP3, FLAC from the bytes.
    const session = this.newSession("", "file", file.name);
    try {
      await session.opened;
    } catch {
      if (!session.failed) showNotice("Cannot reach the gateway", "The speech websocket did not open.");
      return;
    }
    this.setState("uploading", "Sending file · 0%");
    let offset = 0;
    while (offset < file.size && session.open && !this.uploadCancelled) {
      const piece = await file.slice(offset, offset + UPLOAD_CHUNK).arrayBuffer();
      while (session.ws.bufferedAmount > UPLOAD_HIGH_WATER && session.open) {
        await new Promise((r) => setTimeout(r, 20));
      }
      session.send(piece);
      offset += piece.byteLength;
      if (this.session === session) {
        this.setState("uploading", `Sending file · ${Math.round((100 * offset) / file.size)}%`);
      }
    }
    if (session.open && !this.uploadCancelled) {
      session.eos();
      if (this.session === session) this.setState("finishing", "Decoding the rest of the file…");
    }
  },
};

// ---------------------------------------------------------------- cluster status

const status = {
  socket: null,
  retry: 500,
  lastPoll: 0,
  pollTimer: 0,
  pushed: null, // last /client/ws/status message
  snapshot: null, // last /status document

  connect() {
    const ws = new WebSocket(socketUrl("client/ws/status"));
    this.socket = ws;
    ws.addEventListener("open", () => {
      this.retry = 500;
    });
    ws.addEventListener("message", (event) => {
      try {
        this.pushed = JSON.parse(event.data);
      } catch {
        return;
      }
      this.render();
      this.refreshSoon();
    });
    ws.addEventListener("close", () => {
      this.socket = null;
      this.pushed = null;
      this.render();
      setTimeout(() => this.connect(), this.retry);
      this.retry = Math.min(this.retry * 2, 10000);
    });
  },

  refreshSoon() {
    clearTimeout(this.pollTimer);
    this.pollTimer = setTimeout(() => this.poll(), 150);
  },

  async poll() {
    clearTimeout(this.pollTimer);
    try {
      // /status needs the page's credential too when the gateway requires one.
      const token = new URLSearchParams(window.location.search).get("token");
      const headers = token ? { Authorization: `Bearer ${token}` } : {};
      const reply = await fetch(new URL("status", document.baseURI), { cache: "no-store", headers });
      if (!reply.ok) throw new Error(String(reply.status));
      this.snapshot = await reply.json();
      this.lastPoll = Date.now();
    } catch {
      this.snapshot = null;
    }
    this.render();
    this.pollTimer = setTimeout(() => this.poll(), document.hidden ? 4 * STATUS_POLL_MS : STATUS_POLL_MS);
  },

  render() {
    const snap = this.snapshot;
    const pushed = this.pushed;
    const workers = snap ? snap.workers || [] : [];
    const sessions = snap ? snap.sessions || [] : [];
    const total = workers.reduce((n, w) => n + (w.slots_total || 0), 0);
    const free = pushed
      ? pushed.num_workers_available
      : snap
        ? workers.reduce((n, w) => n + (w.slots_free || 0), 0)
        : null;
    const processed = pushed ? pushed.num_requests_processed : snap ? snap.requests_processed : null;
    const queued = sessions.filter((s) => s.state === "queued").length;

    $("stat-free").textContent = free === null ? "–" : String(Math.max(0, free));
    $("stat-total").textContent = snap && total ? ` / ${total}` : "";
    $("stat-queue").textContent = snap ? String(queued) : "–";
    $("stat-sessions").textContent = snap ? String(sessions.length) : "–";
    $("stat-processed").textContent = processed === null ? "–" : String(processed);
    $("workers-count").textContent = snap ? String(workers.length) : "";
    $("sessions-count").textContent = snap ? String(sessions.length) : "";
    $("status-updated").textContent = snap ? `updated ${wallTime(new Date(this.lastPoll))}` : "—";

    const pill = $("cluster-pill");
    let online = "unknown";
    let text = "Connecting…";
    if (pushed || snap) {
      online = free > 0 ? "yes" : workers.length || total ? "busy" : "no";
      text =
        online === "yes"
          ? `Online · ${free} free slot${free === 1 ? "" : "s"}`
          : online === "busy"
            ? "All decoders busy"
            : "No decoder registered";
    } else if (!this.socket) {
      online = "no";
      text = "Gateway unreachable";
    }
    pill.dataset.online = online;
    $("cluster-pill-text").textContent = text;

    this.renderWorkers(snap ? workers : null);
    this.renderSessions(snap ? sessions : null);
    this.renderModels(workers);
  },

  renderWorkers(workers) {
    const list = $("workers");
    list.replaceChildren();
    if (!workers || workers.length === 0) {
      list.append(el("li", "muted-row", workers ? "No worker registered" : "Status unavailable"));
      return;
    }
    const sorted = [...workers].sort((a, b) => String(a.id).localeCompare(String(b.id)));
    for (const w of sorted) {
      const item = el("li", "worker");
      const top = el("div", "worker-top");
      top.append(el("span", "worker-id", w.id));
      const busy = (w.slots_total || 0) - (w.slots_free || 0);
      top.append(el("span", "worker-slots", `${busy} / ${w.slots_total} busy`));
      const slots = el("div", "slots");
      for (let i = 0; i < (w.slots_total || 0); i++) {
        slots.append(el("span", i < busy ? "slot slot-busy" : "slot"));
      }
      const meta = el("div", "worker-meta");
      meta.append(el("span", "", `${w.host || "?"} · pid ${w.pid}`));
      for (const m of w.models || []) meta.append(el("span", "chip", m));
      if (typeof w.heartbeat_age === "number") {
        meta.append(el("span", "beat", `♥ ${w.heartbeat_age.toFixed(1)}s`));
      }
      item.append(top, slots, meta);
      list.append(item);
    }
  },

  renderSessions(sessions) {
    const list = $("sessions");
    list.replaceChildren();
    if (!sessions || sessions.length === 0) {
      list.append(el("li", "muted-row", sessions ? "No live sessions" : "Status unavailable"));
      return;
    }
    for (const s of sessions) {
      const item = el("li", "session");
      const mine = Boolean(app.session && app.session.sid === s.id);
      if (mine) item.classList.add("mine");
      item.append(el("span", `badge badge-${s.state}`, s.state));
      item.append(el("span", "session-id", s.id.slice(0, 8)));
      item.append(el("span", "session-detail", `${clock(s.audio_seconds)} audio · ${duration(s.age)}`));
      if (s.owner) item.title = `worker ${s.owner}${mine ? " (this page)" : ""}`;
      list.append(item);
    }
  },

  renderModels(workers) {
    const select = $("model");
    const models = [...new Set(workers.flatMap((w) => w.models || []))].sort();
    const have = [...select.options].map((o) => o.value).filter(Boolean);
    if (models.join(",") === have.join(",")) return;
    const chosen = select.value;
    select.replaceChildren(el("option", "", "default"));
    select.options[0].value = "";
    for (const m of models) {
      const option = el("option", "", m);
      option.value = m;
      select.append(option);
    }
    select.value = models.includes(chosen) ? chosen : "";
  },
};

// ---------------------------------------------------------------- wiring

function download(name, text) {
  const url = URL.createObjectURL(new Blob([text], { type: "text/plain;charset=utf-8" }));
  const a = el("a");
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

function init() {
  $("record").addEventListener("click", () => {
    if (app.state === "idle") app.record();
    else app.stop();
  });
  $("file").addEventListener("change", (event) => {
    const file = event.target.files && event.target.files[0];
    event.target.value = "";
    app.transcribeFile(file);
  });
  $("notice-close").addEventListener("click", hideNotice);
  $("transcript").addEventListener("keydown", moveWordFocus);
  $("clear").addEventListener("click", () => transcript.clear());
  $("copy").addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(transcript.asText());
      $("copy").textContent = "Copied";
      setTimeout(() => {
        $("copy").textContent = "Copy";
      }, 1200);
    } catch {
      showNotice("Copy failed", "The browser did not allow clipboard access.", "info");
    }
  });
  $("download").addEventListener("click", () => {
    const stamp = new Date().toISOString().slice(0, 16).replace(/[-:T]/g, "");
    download(`transcript-${stamp}.txt`, transcript.asText());
  });
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) status.refreshSoon();
  });
  app.setState("idle");
  status.connect();
  status.poll();
}

init();
