// The caregiver's page: pick the patient, hold the button while they speak, read the text.
//
// The recording is captured with getUserMedia + WebAudio and sent as a 16 kHz mono 16-bit WAV that this file
// encodes itself: MediaRecorder would give webm/mp4, which a server without an ffmpeg-based decoder cannot
// read. Browsers allow the microphone only on https or localhost; elsewhere the page says so and the upload
// field still works. No library, no CDN: the page works with no internet.
"use strict";

(function () {
  const TARGET_RATE = 16000; // what the server's models hear; sending exactly that keeps the upload small
  const MAX_SECONDS = 30; // the servers' default max_audio_seconds: stop and send rather than get a 413
  const MIN_SECONDS = 0.3; // a tap, not a phrase: say so instead of sending it
  const TOKEN_KEY = "resonance.token";
  const PATIENT_KEY = "resonance.patient";
  // Files the server decodes itself (libsndfile); anything else (m4a, webm ...) is decoded here first.
  const SERVER_FORMATS = /\.(wav|flac|ogg|oga|mp3)$/i;

  const READY = "准备好了：按住按钮说话 · Ready: hold the button and speak";
  const READY_UPLOAD = "准备好了：请上传录音 · Ready: upload a recording";

  const $ = (id) => document.getElementById(id);

  class AuthNeeded extends Error {}

  // -- storage (localStorage can be off in private windows: the page then asks again next time) --------------

  function load(key) {
    try {
      return window.localStorage.getItem(key) || "";
    } catch (e) {
      return "";
    }
  }

  function store(key, value) {
    try {
      if (value) window.localStorage.setItem(key, value);
      else window.localStorage.removeItem(key);
    } catch (e) {
      /* not persisted; this visit still works */
    }
  }

  // -- status line -----------------------------------------------------------------------------------------

  function setState(state, message) {
    document.body.dataset.state = state; // the CSS (red button while recording) and the tests read it
    if (message !== undefined) $("status").textContent = message;
  }

  function micAvailable() {
    return Boolean(window.isSecureContext && navigator.mediaDevices && navigator.mediaDevices.getUserMedia);
  }

  function readyMessage() {
    return micAvailable() ? READY : READY_UPLOAD;
  }

  // -- the server's API ------------------------------------------------------------------------------------

  async function api(path, options) {
    const token = load(TOKEN_KEY);
    const headers = token ? { Authorization: "Bearer " + token } : {};
    const response = await fetch(path, Object.assign({}, options, { headers: headers }));
    const type = response.headers.get("Content-Type") || "";
    const body = type.indexOf("application/json") >= 0 ? await response.json() : null;
    if (response.status === 401) {
      askForToken(token ? "令牌不对 · Wrong token" : "");
      throw new AuthNeeded("the server needs an access token");
    }
    if (!response.ok) {
      const error = body && body.error;
      const text = error ? error.message + (error.hint ? " (" + error.hint + ")" : "") : "HTTP " + response.status;
      throw new Error(text);
    }
    return body;
  }

  function askForToken(problem) {
    $("token-box").hidden = false;
    $("token-error").hidden = !problem;
    $("token-error").textContent = problem || "";
    $("token").focus();
    setState("token", "请输入访问令牌 · Enter the access token");
  }

  async function saveToken() {
    const token = $("token").value.trim();
    if (!token) return;
    store(TOKEN_KEY, token);
    $("token").value = "";
    $("token-box").hidden = true;
    $("token-change").hidden = false;
    if (await loadPatients()) {
      const pending = state.pendingUpload;
      state.pendingUpload = null;
      if (pending) await send(pending.blob, pending.name);
    }
  }

  async function loadPatients() {
    let patients;
    try {
      patients = await api("/patients");
    } catch (e) {
      if (!(e instanceof AuthNeeded)) setState("error", "无法连接服务器 · Cannot reach the server: " + e.message);
      return false;
    }
    const select = $("patient");
    const wanted = select.value || load(PATIENT_KEY);
    select.textContent = "";
    for (const p of patients) {
      const option = document.createElement("option");
      option.value = p.id;
      option.textContent = p.id + (p.language ? "  (" + p.language + ")" : "");
      select.appendChild(option);
    }
    if (patients.some((p) => p.id === wanted)) select.value = wanted;
    select.disabled = patients.length === 0;
    $("record").disabled = patients.length === 0 || !micAvailable();
    if (load(TOKEN_KEY)) $("token-change").hidden = false;
    if (patients.length === 0) {
      setState("error", "服务器上没有患者模型 · The server has no patient models yet");
      return false;
    }
    setState("idle", readyMessage());
    return true;
  }

  // -- audio: resampling and WAV encoding ------------------------------------------------------------------

  // Windowed-sinc resampler: a low-pass at the lower Nyquist (no aliasing when going 48 kHz -> 16 kHz) and
  // exact for any rate ratio (44.1 kHz too). Plain JS: the same result in every browser.
  function resample(input, fromRate, toRate) {
    if (fromRate === toRate) return Float32Array.from(input);
    const step = fromRate / toRate; // input samples per output sample
    const out = new Float32Array(Math.floor(input.length / step));
    const cutoff = 0.5 * Math.min(1, toRate / fromRate) * 0.92; // cycles per input sample; 8% transition band
    const half = Math.ceil(8 / (2 * cutoff)); // 8 zero crossings of the sinc on each side
    for (let i = 0; i < out.length; i++) {
      const centre = i * step;
      const first = Math.max(0, Math.ceil(centre - half));
      const last = Math.min(input.length - 1, Math.floor(centre + half));
      let sum = 0;
      let weights = 0;
      for (let k = first; k <= last; k++) {
        const x = k - centre;
        const arg = 2 * cutoff * x;
        const sinc = arg === 0 ? 1 : Math.sin(Math.PI * arg) / (Math.PI * arg);
        const w = sinc * (0.5 + 0.5 * Math.cos((Math.PI * x) / half)); // Hann window
        sum += input[k] * w;
        weights += w;
      }
      out[i] = weights !== 0 ? sum / weights : 0; // normalised: unity gain at DC, also at the edges
    }
    return out;
  }

  // 16-bit PCM mono WAV: the 44-byte RIFF header, then little-endian samples.
  function encodeWav(samples, rate) {
    const bytes = samples.length * 2;
    const buffer = new ArrayBuffer(44 + bytes);
    const view = new DataView(buffer);
    const ascii = (offset, text) => {
      for (let i = 0; i < text.length; i++) view.setUint8(offset + i, text.charCodeAt(i));
    };
    ascii(0, "RIFF");
    view.setUint32(4, 36 + bytes, true);
    ascii(8, "WAVE");
    ascii(12, "fmt ");
    view.setUint32(16, 16, true); // size of the fmt chunk
    view.setUint16(20, 1, true); // PCM
    view.setUint16(22, 1, true); // mono
    view.setUint32(24, rate, true);
    view.setUint32(28, rate * 2, true); // bytes per second
    view.setUint16(32, 2, true); // bytes per frame
    view.setUint16(34, 16, true); // bits per sample
    ascii(36, "data");
    view.setUint32(40, bytes, true);
    for (let i = 0; i < samples.length; i++) {
      const s = samples[i];
      const v = s === s ? Math.round(s * 32768) : 0; // NaN -> 0; x * 32768 is how readers map int16 back
      view.setInt16(44 + 2 * i, Math.max(-32768, Math.min(32767, v)), true);
    }
    return buffer;
  }

  function concat(chunks) {
    let length = 0;
    for (const c of chunks) length += c.length;
    const all = new Float32Array(length);
    let offset = 0;
    for (const c of chunks) {
      all.set(c, offset);
      offset += c.length;
    }
    return all;
  }

  // -- recording (hold to talk) ----------------------------------------------------------------------------

  const state = { rec: null, context: null, pendingUpload: null, lastWav: null, lastReply: null };

  function audioContext() {
    // Made on the first press (a user gesture, so the autoplay policy lets it run), then reused.
    if (!state.context) state.context = new (window.AudioContext || window.webkitAudioContext)();
    return state.context;
  }

  async function startRecording() {
    if (state.rec || $("record").disabled) return;
    const rec = { chunks: [], stopRequested: false, stream: null, source: null, node: null, timer: 0 };
    state.rec = rec;
    const context = audioContext();
    setState("starting", "正在打开麦克风… · Opening the microphone…");
    try {
      if (context.state === "suspended") await context.resume();
      // Raw audio: echo cancellation and noise suppression are tuned for calls and can erase weak speech.
      rec.stream = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
      });
    } catch (e) {
      state.rec = null;
      setState("error", "麦克风不能用 · Microphone not available: " + (e.message || e.name));
      return;
    }
    rec.source = context.createMediaStreamSource(rec.stream);
    // ScriptProcessorNode is deprecated but runs everywhere without a second file (an AudioWorklet module).
    rec.node = context.createScriptProcessor(4096, 1, 1);
    rec.node.onaudioprocess = (event) => {
      const block = new Float32Array(event.inputBuffer.getChannelData(0));
      rec.chunks.push(block);
      showLevel(block);
    };
    rec.source.connect(rec.node);
    rec.node.connect(context.destination); // the node only runs when connected; its output stays silent
    rec.timer = window.setTimeout(stopRecording, MAX_SECONDS * 1000);
    setState("recording", "正在录音… 说完松开 · Recording… release when done");
    if (rec.stopRequested) stopRecording(); // released while the microphone was opening
  }

  function showLevel(block) {
    let sum = 0;
    for (let i = 0; i < block.length; i++) sum += block[i] * block[i];
    const rms = Math.sqrt(sum / Math.max(1, block.length));
    const percent = Math.min(100, Math.max(0, ((20 * Math.log10(rms + 1e-9) + 60) / 60) * 100)); // -60..0 dBFS
    $("level").style.width = percent.toFixed(0) + "%";
  }

  async function stopRecording() {
    const rec = state.rec;
    if (!rec) return;
    if (!rec.node) {
      rec.stopRequested = true; // still opening: stop as soon as it is open
      return;
    }
    state.rec = null;
    window.clearTimeout(rec.timer);
    rec.source.disconnect();
    rec.node.disconnect();
    rec.stream.getTracks().forEach((track) => track.stop()); // the browser's "recording" indicator goes off
    $("level").style.width = "0";
    const rate = state.context.sampleRate;
    const samples = concat(rec.chunks);
    if (samples.length < MIN_SECONDS * rate) {
      setState("idle", "太短了：请按住按钮一直到说完 · Too short: hold the button until the end of the phrase");
      return;
    }
    const wav = encodeWav(resample(samples, rate, TARGET_RATE), TARGET_RATE);
    await send(new Blob([wav], { type: "audio/wav" }), "recording.wav");
  }

  // -- upload ----------------------------------------------------------------------------------------------

  async function uploadFile(file) {
    if (!file) return;
    let blob = file;
    let name = file.name || "upload.wav";
    if (!SERVER_FORMATS.test(name)) {
      // e.g. a phone's .m4a: decode it here (the browser has the codec) and send 16 kHz WAV instead.
      try {
        const decoded = await audioContext().decodeAudioData(await file.arrayBuffer());
        const mono = new Float32Array(decoded.length);
        for (let c = 0; c < decoded.numberOfChannels; c++) {
          const data = decoded.getChannelData(c);
          for (let i = 0; i < data.length; i++) mono[i] += data[i] / decoded.numberOfChannels;
        }
        blob = new Blob([encodeWav(resample(mono, decoded.sampleRate, TARGET_RATE), TARGET_RATE)], {
          type: "audio/wav",
        });
        name = name.replace(/\.[^.]*$/, "") + ".wav";
      } catch (e) {
        /* the browser cannot decode it either: send it as it is and let the server explain */
      }
    }
    await send(blob, name);
  }

  async function send(blob, name) {
    const form = new FormData();
    form.append("file", blob, name);
    const patient = $("patient").value;
    if (patient) form.append("patient", patient);
    state.lastWav = blob;
    setState("sending", "正在识别… · Recognising…");
    try {
      showResult(await api("/transcribe", { method: "POST", body: form }));
      setState("done", readyMessage());
    } catch (e) {
      if (e instanceof AuthNeeded) state.pendingUpload = { blob: blob, name: name };
      else setState("error", "出错了 · Error: " + e.message);
    }
  }

  // -- showing the result ----------------------------------------------------------------------------------

  // The phrase-board match: the /transcribe reply (mode=both, the default) carries
  //   "phrase": "..." (null when rejected) with "phrase_confidence": 0.87,
  //   "phrases": [{"text", "confidence"}, ...] (top-k), "phrase_rejected": true for "none of these".
  // Also read: "phrase": {"text", "confidence"}, a plain "confidence", a "score" like a "confidence".
  // The candidate with the highest confidence is shown under the raw text; without one, or when the server
  // rejected them all ("none of these"), the slot stays hidden.
  function bestPhrase(reply) {
    if (reply && reply.phrase_rejected === true) return null;
    const candidates = [];
    const number = (v) => (typeof v === "number" && isFinite(v) ? v : null);
    const add = (item, confidence) => {
      if (typeof item === "string" && item) candidates.push({ text: item, confidence: number(confidence) });
      else if (item && typeof item === "object" && typeof (item.text || item.phrase) === "string") {
        const c = item.confidence !== undefined ? item.confidence : item.score;
        candidates.push({ text: item.text || item.phrase, confidence: number(c) });
      }
    };
    if (reply && reply.phrase !== undefined && reply.phrase !== null)
      add(reply.phrase, reply.phrase_confidence !== undefined ? reply.phrase_confidence : reply.confidence);
    if (reply && Array.isArray(reply.phrases)) reply.phrases.forEach((p) => add(p, null));
    if (candidates.length === 0) return null;
    const rank = (c) => (c.confidence === null ? -Infinity : c.confidence);
    return candidates.reduce((best, c) => (rank(c) > rank(best) ? c : best)); // ties: the server's order
  }

  function showResult(reply) {
    state.lastReply = reply;
    const text = $("text");
    text.textContent = reply.text ? reply.text : "（没有听到文字 · no words recognised）";
    text.classList.toggle("empty", !reply.text);
    text.dataset.text = reply.text || ""; // the exact transcript, for tests and screen readers' copy
    const parts = [];
    if (typeof reply.duration_s === "number") parts.push(reply.duration_s.toFixed(1) + " s");
    if (typeof reply.latency_ms === "number") parts.push(Math.round(reply.latency_ms) + " ms");
    if (reply.patient) parts.push(reply.patient);
    $("meta").textContent = parts.join(" · ");
    const phrase = bestPhrase(reply);
    $("phrase-box").hidden = !phrase;
    $("phrase").textContent = phrase ? phrase.text : "";
    $("phrase-confidence").textContent =
      phrase && phrase.confidence !== null
        ? "置信度 · confidence " + Math.round(Math.max(0, Math.min(1, phrase.confidence)) * 100) + "%"
        : "";
  }

  // -- wiring ----------------------------------------------------------------------------------------------

  function wire() {
    const button = $("record");
    button.addEventListener("pointerdown", (event) => {
      if (event.button !== 0) return;
      button.setPointerCapture(event.pointerId); // keeps "up" with us even if the finger slides off
      event.preventDefault();
      startRecording();
    });
    button.addEventListener("pointerup", stopRecording);
    button.addEventListener("pointercancel", stopRecording);
    button.addEventListener("lostpointercapture", stopRecording);
    button.addEventListener("contextmenu", (event) => event.preventDefault()); // long press on a phone
    button.addEventListener("keydown", (event) => {
      if ((event.key === " " || event.key === "Enter") && !event.repeat) {
        event.preventDefault();
        startRecording();
      }
    });
    button.addEventListener("keyup", (event) => {
      if (event.key === " " || event.key === "Enter") stopRecording();
    });
    $("patient").addEventListener("change", () => store(PATIENT_KEY, $("patient").value));
    $("upload").addEventListener("change", () => {
      const file = $("upload").files[0];
      $("upload").value = ""; // choosing the same file again sends it again
      uploadFile(file);
    });
    $("token-save").addEventListener("click", saveToken);
    $("token").addEventListener("keydown", (event) => {
      if (event.key === "Enter") saveToken();
    });
    $("token-change").addEventListener("click", () => {
      store(TOKEN_KEY, "");
      askForToken("");
    });
    if (!micAvailable()) {
      $("insecure").hidden = false;
      $("record-zh").textContent = "麦克风不可用";
      $("record-en").textContent = "Microphone unavailable here";
    }
  }

  // For the tests and for debugging from the console; the page itself does not need it.
  window.Resonance = {
    resample: resample,
    encodeWav: encodeWav,
    bestPhrase: bestPhrase,
    showResult: showResult,
    state: state,
    async lastWavBase64() {
      if (!state.lastWav) return "";
      const bytes = new Uint8Array(await state.lastWav.arrayBuffer());
      let binary = "";
      for (let i = 0; i < bytes.length; i += 0x8000) {
        binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
      }
      return window.btoa(binary);
    },
  };

  wire();
  loadPatients();
})();
