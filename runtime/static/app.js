// The caregiver's page: hold the big button while the patient speaks; the phrase they meant appears first and
// biggest (and can be read aloud), what the model heard under it. A grid of the patient's own phrases is there
// to tap when recognition fails; ✓ / ✗ send a correction when the server collects them (serve --collect).
//
// The recording is captured with getUserMedia + WebAudio and sent as a 16 kHz mono 16-bit WAV that this file
// encodes itself: MediaRecorder would give webm/mp4, which a server without an ffmpeg-based decoder cannot
// read. Browsers allow the microphone only in a secure context (https, or localhost); elsewhere the big button
// opens the phone's own recorder instead (<input type=file capture>). No library, no CDN: the page works with
// no internet, and a service worker (/sw.js) keeps its shell so it opens even when the server cannot be reached.
"use strict";

(function () {
  const TARGET_RATE = 16000; // what the server's models hear; sending exactly that keeps the upload small
  const MAX_SECONDS = 30; // the servers' default max_audio_seconds: stop and send rather than get a 413
  const MIN_SECONDS = 0.3; // a tap, not a phrase: say so instead of sending it
  const HISTORY_SIZE = 20; // results of this session kept (with their recordings, for ✓ / ✗)
  const TOKEN_KEY = "resonance.token";
  const PATIENT_KEY = "resonance.patient";
  const AUTO_SPEAK_KEY = "resonance.autoSpeak";
  // Files the server decodes itself (libsndfile); anything else (m4a, webm ...) is decoded here first.
  const SERVER_FORMATS = /\.(wav|flac|ogg|oga|mp3)$/i;

  const READY = "准备好了 · Ready";
  const READY_RECORDER = "准备好了：点按钮录音 · Ready: tap to record";
  const UNCLEAR = "没听清";
  const UNCLEAR_EN = "Not understood: say it again, or tap the phrase below";

  const $ = (id) => document.getElementById(id);

  class AuthNeeded extends Error {}
  class Unreachable extends Error {}

  const state = {
    rec: null, // the recording in progress
    context: null, // the AudioContext, made on the first press
    pendingUpload: null, // a recording sent while the token was missing: sent again once it is given
    lastWav: null, // the last recording sent (a Blob)
    lastReply: null, // the server's last /transcribe reply
    patients: [], // [{id, language, phrases, ...}] from /patients
    collecting: false, // the server keeps corrections (/health "collecting")
    history: [], // this session's results, newest first: {id, reply, answer, blob, patient, time, feedback}
    current: null, // the history entry the result area shows
    correcting: null, // the entry being corrected (✗): the grid then picks the right phrase
    spoken: [], // what was read aloud (for the tests and the console)
  };
  let nextId = 1;

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

  // The QR code `resonance serve --auth` prints opens the page as /#token=...: the fragment is never sent to
  // the server (nor into its logs). Keep the token and take it out of the address bar and the history.
  function takeTokenFromAddress() {
    const match = /(?:^#|&)token=([^&]+)/.exec(window.location.hash);
    if (!match) return false;
    store(TOKEN_KEY, decodeURIComponent(match[1]));
    window.history.replaceState(null, "", window.location.pathname + window.location.search);
    $("token-box").hidden = true;
    return true;
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
    return micAvailable() ? READY : READY_RECORDER;
  }

  // -- the server's API ------------------------------------------------------------------------------------

  async function api(path, options) {
    const token = load(TOKEN_KEY);
    const headers = token ? { Authorization: "Bearer " + token } : {};
    let response;
    try {
      response = await fetch(path, Object.assign({}, options, { headers: headers, cache: "no-store" }));
    } catch (e) {
      showOffline(true);
      throw new Unreachable("无法连接服务器 · Cannot reach the server");
    }
    showOffline(false);
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

  function showOffline(offline) {
    $("offline").hidden = !offline;
    if (offline) setState("offline", "无法连接服务器 · Cannot reach the server");
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
      const health = await api("/health");
      state.collecting = Boolean(health && health.collecting);
      showSecureLinks(health);
      patients = await api("/patients");
    } catch (e) {
      if (!(e instanceof AuthNeeded) && !(e instanceof Unreachable))
        setState("error", "出错了 · Error: " + e.message);
      return false;
    }
    state.patients = patients;
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
    $("collecting").hidden = !state.collecting;
    if (load(TOKEN_KEY)) $("token-change").hidden = false;
    showGrid();
    showResult(state.current);
    if (patients.length === 0) {
      setState("error", "服务器上没有患者模型 · The server has no patient models yet");
      return false;
    }
    setState("idle", readyMessage());
    return true;
  }

  // On plain http (no microphone): where the same page is served over https, and the certificate to trust.
  function showSecureLinks(health) {
    const https = health && health.https_port && !window.isSecureContext;
    $("https-link").hidden = !https;
    if (https) $("https-link").href = "https://" + window.location.hostname + ":" + health.https_port + "/";
    $("ca-link").hidden = !(health && health.ca_certificate);
  }

  function currentPatient() {
    const id = $("patient").value;
    return state.patients.find((p) => p.id === id) || null;
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

  // -- upload (the phone's recorder, or a file) -----------------------------------------------------------

  async function uploadFile(file) {
    if (!file) return;
    let blob = file;
    let name = file.name || "upload.wav";
    if (!SERVER_FORMATS.test(name)) {
      // e.g. a phone's .m4a or .webm: decode it here (the browser has the codec) and send 16 kHz WAV instead.
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
      const reply = await api("/transcribe", { method: "POST", body: form });
      addResult(reply, blob, reply.patient || patient);
      setState("done", readyMessage());
    } catch (e) {
      if (e instanceof AuthNeeded) state.pendingUpload = { blob: blob, name: name };
      else if (!(e instanceof Unreachable)) setState("error", "出错了 · Error: " + e.message);
    }
  }

  // -- the result ------------------------------------------------------------------------------------------

  // The phrase-board match: the /transcribe reply (mode=both, the default) carries
  //   "phrase": "..." (null when rejected) with "phrase_confidence": 0.87,
  //   "phrases": [{"text", "confidence"}, ...] (top-k), "phrase_rejected": true for "none of these".
  // Also read: "phrase": {"text", "confidence"}, a plain "confidence", a "score" like a "confidence".
  // The candidate with the highest confidence wins; none when the server rejected them all.
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

  // What the result says the patient meant: the matched phrase; for a patient without a phrase board, the
  // free text; "" ("没听清") when the board rejected every phrase ("none of these") or nothing was heard.
  function answerOf(reply) {
    if (!reply) return "";
    const phrase = bestPhrase(reply);
    if (phrase) return phrase.text;
    const noBoard = reply.phrase_rejected === undefined || reply.phrase_reason === "no_phrases";
    return noBoard && reply.text ? reply.text : "";
  }

  function addResult(reply, blob, patient) {
    const entry = {
      id: nextId++,
      reply: reply,
      answer: answerOf(reply),
      blob: blob,
      patient: patient,
      time: new Date(),
      feedback: null, // null, or {kind: "right"|"corrected", text, saved: bool, message}
    };
    state.history.unshift(entry);
    for (const old of state.history.slice(HISTORY_SIZE)) old.blob = null; // recordings of the newest only
    state.history.length = Math.min(state.history.length, HISTORY_SIZE);
    endCorrection();
    showResult(entry);
    if (entry.answer && $("auto-speak").checked) speak(entry.answer);
  }

  // Show a history entry (or, for the console and tests, a bare /transcribe reply) in the result area.
  function showResult(entryOrReply) {
    let entry = entryOrReply;
    if (entry && !("reply" in entry)) {
      entry = { id: 0, reply: entry, answer: answerOf(entry), blob: null, patient: entry.patient, feedback: null };
    }
    state.current = entry;
    state.lastReply = entry ? entry.reply : null;
    const phraseEl = $("phrase");
    const text = $("text");
    if (!entry) {
      phraseEl.textContent = micAvailable()
        ? "按住下面的按钮说话 · Hold the button below and speak"
        : "点下面的按钮录音 · Tap the button below to record";
      phraseEl.className = "phrase placeholder";
      $("heard").hidden = true;
      text.dataset.text = "";
      $("meta").textContent = "";
      updateActions();
      return;
    }
    const reply = entry.reply;
    phraseEl.className = entry.answer ? "phrase" : "phrase unclear";
    phraseEl.textContent = entry.answer || UNCLEAR;
    phraseEl.title = entry.answer ? "" : UNCLEAR_EN;
    const phrase = bestPhrase(reply);
    // The free text under the answer, whenever it is not the answer itself.
    text.textContent = reply.text ? reply.text : "（没有听到文字 · no words recognised）";
    text.dataset.text = reply.text || ""; // the exact transcript, for tests and screen readers' copy
    // What the model heard, under the answer; not repeated when it is the answer (a patient without phrases).
    $("heard").hidden = Boolean(entry.board || (!phrase && entry.answer && entry.answer === reply.text));
    const parts = [];
    if (entry.board) parts.push("短语板 · from the phrase board");
    if (!entry.answer) parts.push(UNCLEAR_EN);
    if (phrase && phrase.confidence !== null)
      parts.push("置信度 · confidence " + Math.round(Math.max(0, Math.min(1, phrase.confidence)) * 100) + "%");
    if (typeof reply.duration_s === "number") parts.push(reply.duration_s.toFixed(1) + " s");
    if (typeof reply.latency_ms === "number") parts.push(Math.round(reply.latency_ms) + " ms");
    $("meta").textContent = parts.join(" · ");
    if (reply.warning) $("meta").textContent += " · " + reply.warning;
    updateActions();
    showHistory();
  }

  function updateActions() {
    const entry = state.current;
    $("speak").disabled = !(entry && entry.answer) || !speechAvailable();
    const canCorrect = Boolean(state.collecting && entry && entry.blob && entry.id);
    const done = Boolean(entry && entry.feedback && entry.feedback.saved);
    $("right").hidden = !canCorrect;
    $("wrong").hidden = !canCorrect;
    $("right").disabled = done || !(entry && entry.answer);
    $("wrong").disabled = done;
    const feedback = entry && entry.feedback;
    $("feedback-status").textContent = feedback ? feedback.message : "";
  }

  // -- read aloud (the phone's own voices: offline where it has a Chinese one) -------------------------------

  function speechAvailable() {
    return Boolean(window.speechSynthesis && window.SpeechSynthesisUtterance);
  }

  function chineseVoice() {
    const voices = speechAvailable() ? window.speechSynthesis.getVoices() : [];
    const zh = voices.filter((v) => /^zh([-_]|$)/i.test(v.lang));
    const mainland = zh.filter((v) => /^zh[-_]CN/i.test(v.lang) || /hans/i.test(v.lang));
    const pool = mainland.length ? mainland : zh;
    return pool.find((v) => v.localService) || pool[0] || null; // on the phone first: works offline
  }

  function speak(text) {
    if (!text || !speechAvailable()) return false;
    const utterance = new window.SpeechSynthesisUtterance(text);
    utterance.lang = "zh-CN";
    const voice = chineseVoice();
    if (voice) utterance.voice = voice;
    utterance.rate = 0.9; // a little slower: clear for the listener
    window.speechSynthesis.cancel(); // the newest phrase, not a queue of old ones
    window.speechSynthesis.speak(utterance);
    state.spoken.push(text);
    return true;
  }

  function describeVoices() {
    const note = $("voice-note");
    if (!speechAvailable()) {
      note.hidden = false;
      note.textContent = "这个浏览器不能朗读。 · This browser cannot read aloud.";
      return;
    }
    const voices = window.speechSynthesis.getVoices();
    note.hidden = voices.length === 0 || Boolean(chineseVoice());
    note.textContent =
      "手机上没有中文语音：请在系统设置的“文字转语音”里下载中文。 · No Chinese voice on this phone: add one in the system's text-to-speech settings.";
  }

  // -- the phrase grid -------------------------------------------------------------------------------------

  function showGrid() {
    const patient = currentPatient();
    const phrases = patient && Array.isArray(patient.phrases) ? patient.phrases : [];
    const grid = $("grid");
    grid.textContent = "";
    for (const phrase of phrases) {
      const tile = document.createElement("button");
      tile.type = "button";
      tile.className = "tile";
      tile.textContent = phrase;
      tile.dataset.phrase = phrase;
      grid.appendChild(tile);
    }
    $("phrases-card").hidden = phrases.length === 0 && !state.correcting;
  }

  function tapPhrase(phrase) {
    if (state.correcting) {
      sendFeedback(state.correcting, "corrected", phrase);
      return;
    }
    // Recognition failed, or nobody waits for it: the caregiver says it for the patient. Shown as the answer,
    // but it is no recording: nothing to confirm or correct.
    showResult({ id: 0, reply: { text: "" }, answer: phrase, blob: null, patient: null, board: true });
    speak(phrase);
  }

  // -- corrections (✓ / ✗), kept by the server only with `serve --collect` -------------------------------------

  function startCorrection() {
    const entry = state.current;
    if (!entry || !entry.blob) return;
    state.correcting = entry;
    document.body.classList.add("correcting");
    $("grid-title").textContent = "选正确的短语，或输入说的话 · Pick the right phrase, or type what was said";
    $("correct-form").hidden = false;
    $("correct-cancel").hidden = false;
    $("phrases-card").hidden = false;
    $("phrases-card").scrollIntoView({ block: "start" });
  }

  function endCorrection() {
    state.correcting = null;
    document.body.classList.remove("correcting");
    $("grid-title").textContent = "常用短语 · Phrases";
    $("correct-form").hidden = true;
    $("correct-cancel").hidden = true;
    $("correct-text").value = "";
    showGrid();
  }

  async function sendFeedback(entry, kind, text) {
    if (!entry || !entry.blob || !text) return;
    const form = new FormData();
    form.append("file", entry.blob, "recording.wav");
    form.append("text", text);
    if (entry.patient) form.append("patient", entry.patient);
    $("feedback-status").textContent = "正在保存… · Saving…";
    try {
      const saved = await api("/feedback", { method: "POST", body: form });
      entry.feedback = {
        kind: kind,
        text: text,
        saved: true,
        message:
          "已保存，用于下次训练（共 " + saved.count + " 条） · Saved for the next training round (" + saved.count + " in all)",
      };
      if (kind === "corrected") entry.answer = text;
      endCorrection();
    } catch (e) {
      entry.feedback = { kind: kind, text: text, saved: false, message: "没有保存 · Not saved: " + e.message };
    }
    if (state.current === entry) showResult(entry);
    else showHistory();
  }

  // -- history of this session -----------------------------------------------------------------------------

  function showHistory() {
    const list = $("history");
    list.textContent = "";
    for (const entry of state.history) {
      const item = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.id = String(entry.id);
      if (entry === state.current) button.className = "current";
      const time = document.createElement("span");
      time.className = "time";
      time.textContent = entry.time.toTimeString().slice(0, 5);
      const said = document.createElement("span");
      said.className = "said";
      said.textContent = entry.answer || UNCLEAR;
      const mark = document.createElement("span");
      mark.className = "mark";
      const fb = entry.feedback;
      mark.textContent = fb && fb.saved ? (fb.kind === "right" ? "✓" : "✗→✓") : "";
      button.append(time, said, mark);
      item.appendChild(button);
      list.appendChild(item);
    }
    $("history-card").hidden = state.history.length === 0;
  }

  // -- offline: the service worker keeps the page's shell --------------------------------------------------

  function registerServiceWorker() {
    if (!("serviceWorker" in navigator) || !window.isSecureContext) return;
    navigator.serviceWorker.register("/sw.js").catch((e) => {
      // e.g. an https page whose certificate the phone does not trust yet: the page still works online
      console.warn("service worker not registered:", e && e.message);
    });
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
    $("patient").addEventListener("change", () => {
      store(PATIENT_KEY, $("patient").value);
      endCorrection();
    });
    for (const id of ["upload", "upload-file"]) {
      $(id).addEventListener("change", () => {
        const file = $(id).files[0];
        $(id).value = ""; // choosing the same file again sends it again
        uploadFile(file);
      });
    }
    $("token-save").addEventListener("click", saveToken);
    $("token").addEventListener("keydown", (event) => {
      if (event.key === "Enter") saveToken();
    });
    $("token-change").addEventListener("click", () => {
      store(TOKEN_KEY, "");
      askForToken("");
    });
    $("retry").addEventListener("click", loadPatients);
    window.addEventListener("hashchange", () => {
      if (takeTokenFromAddress()) loadPatients(); // the QR code's address opened in an open page
    });
    window.addEventListener("online", loadPatients);
    $("speak").addEventListener("click", () => speak(state.current && state.current.answer));
    $("auto-speak").checked = load(AUTO_SPEAK_KEY) === "1";
    $("auto-speak").addEventListener("change", () => store(AUTO_SPEAK_KEY, $("auto-speak").checked ? "1" : ""));
    $("right").addEventListener("click", () => {
      const entry = state.current;
      if (entry && entry.answer) sendFeedback(entry, "right", entry.answer);
    });
    $("wrong").addEventListener("click", startCorrection);
    $("correct-cancel").addEventListener("click", endCorrection);
    $("correct-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const text = $("correct-text").value.trim();
      if (text && state.correcting) sendFeedback(state.correcting, "corrected", text);
    });
    $("grid").addEventListener("click", (event) => {
      const tile = event.target.closest(".tile");
      if (tile) tapPhrase(tile.dataset.phrase);
    });
    $("history").addEventListener("click", (event) => {
      const item = event.target.closest("button[data-id]");
      const entry = item && state.history.find((e) => String(e.id) === item.dataset.id);
      if (entry) {
        endCorrection();
        showResult(entry);
        window.scrollTo({ top: 0 });
      }
    });
    if (speechAvailable()) window.speechSynthesis.addEventListener("voiceschanged", describeVoices);
    describeVoices();
    if (!micAvailable()) {
      // No microphone here (plain http on the LAN): the big button opens the phone's own recorder instead.
      $("insecure").hidden = window.isSecureContext;
      $("record").hidden = true;
      $("recorder").hidden = false;
    }
  }

  // For the tests and for debugging from the console; the page itself does not need it.
  window.Resonance = {
    resample: resample,
    encodeWav: encodeWav,
    bestPhrase: bestPhrase,
    answerOf: answerOf,
    showResult: showResult,
    addResult: addResult,
    speak: speak,
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

  takeTokenFromAddress();
  wire();
  registerServiceWorker();
  loadPatients();
})();
