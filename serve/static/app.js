// stethoscope's web page: pick a published machine, upload or record a WAV, score it with POST /v1/score and show
// the answer (score, threshold, decision, each ensemble member, anomaly maps as heat maps). Plain JavaScript, no
// framework, no build step, nothing loaded from elsewhere. The API key, if the user gives one, is kept in
// localStorage and sent as "Authorization: Bearer <key>" with every API call. URLs are relative to the page's
// <base href>, which the server sets to the application's route prefix.
"use strict";

const KEY_STORAGE = "stethoscope.apiKey";
// viridis, sampled at 10 evenly spaced points (low → high)
const COLOURS = ["#440154", "#482878", "#3e4989", "#31688e", "#26828e", "#1f9e89", "#35b779", "#6ece58", "#b5de2b",
  "#fde725"].map((h) => [1, 3, 5].map((i) => parseInt(h.slice(i, i + 2), 16)));

const $ = (id) => document.getElementById(id);
let machines = new Map(); // machine_type → {idField, bundles: [summary], groups: [two-digit strings]}
let clip = null; // {blob, name}
let recorder = null;

/** The number as shown on the page: 6 significant digits. */
function fmt(x) {
  return typeof x === "number" && Number.isFinite(x) ? x.toPrecision(6) : String(x);
}

/** A short label (axis ends): 4 significant digits, no trailing zeros. */
function short(x) {
  return String(Number(x.toPrecision(4)));
}

/** fetch() with the API key; resolves to the JSON body, rejects with the API's own error text. */
async function callApi(path, init = {}) {
  const key = localStorage.getItem(KEY_STORAGE);
  const headers = { ...(init.headers || {}), ...(key ? { Authorization: `Bearer ${key}` } : {}) };
  const resp = await fetch(path, { ...init, headers });
  const text = await resp.text();
  let body = null;
  try {
    body = JSON.parse(text);
  } catch (_) {
    // not JSON: shown as it came
  }
  if (!resp.ok) {
    const what = body && body.error ? `${body.error}: ${body.detail}` : text || resp.statusText;
    throw new Error(`${resp.status} ${what}`);
  }
  return body;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

// --- machines ------------------------------------------------------------------------------------------------
async function loadModels() {
  showError("");
  let listing;
  try {
    listing = await callApi("v1/models");
  } catch (err) {
    showError(`GET v1/models failed: ${err.message}`);
    return;
  }
  machines = new Map();
  for (const m of listing.models) {
    const entry = machines.get(m.machine_type) || { idField: m.id_field, bundles: [], groups: new Set() };
    entry.bundles.push(m);
    for (const g of [...(m.groups || []), m.scope]) {
      const two = /_(\d{2})$/.exec(g);
      if (two) entry.groups.add(two[1]);
    }
    machines.set(m.machine_type, entry);
  }
  const select = $("machine-type");
  const previous = select.value;
  select.replaceChildren(...[...machines.keys()].map((mt) => new Option(mt, mt)));
  if (machines.has(previous)) select.value = previous;
  const broken = (listing.broken || []).map((b) => `${b.machine_type}/${b.scope} (${b.detail})`);
  if (!machines.size) showError("No machine is published on this server yet.");
  $("model-info").dataset.broken = broken.length ? `Broken bundles: ${broken.join("; ")}` : "";
  machineChanged();
}

function machineChanged() {
  const entry = machines.get($("machine-type").value);
  const groups = entry ? [...entry.groups].sort() : [];
  $("group-label").textContent = entry ? entry.idField : "machine_id";
  $("group-options").replaceChildren(...groups.map((g) => new Option(g, g)));
  if (!groups.includes($("group").value)) $("group").value = groups[0] || "00";
  describeBundle();
  updateSubmit();
}

function describeBundle() {
  const entry = machines.get($("machine-type").value);
  const info = $("model-info");
  if (!entry) {
    info.textContent = info.dataset.broken || "";
    return;
  }
  const own = entry.bundles.find((b) => b.scope.endsWith(`_${$("group").value}`));
  const b = own || entry.bundles.find((x) => x.scope === "all");
  const parts = b ? [
    `bundle ${b.machine_type}/${b.scope}, version ${b.version}`,
    `${b.members.length} member(s): ${b.members.map((m) => `${m.name} (${m.method})`).join(", ")}`,
    `threshold ${fmt(b.threshold)}`,
    `${b.sample_rate} Hz`,
  ] : [`no bundle serves ${entry.idField} ${$("group").value}`];
  info.textContent = [...parts, info.dataset.broken].filter(Boolean).join(" · ");
}

// --- the clip: a file or a recording ---------------------------------------------------------------------------
function setClip(blob, name) {
  clip = blob ? { blob, name } : null;
  $("clip-status").textContent = clip ? `${name}, ${(blob.size / 1024).toFixed(1)} KiB` : "no clip chosen";
  const player = $("player");
  if (player.src) URL.revokeObjectURL(player.src);
  player.hidden = !clip;
  if (clip) player.src = URL.createObjectURL(blob);
  updateSubmit();
}

function updateSubmit() {
  $("submit").disabled = !clip || !machines.has($("machine-type").value) || recorder !== null;
}

/** Mono 16-bit PCM WAV (RIFF) of ``samples`` (Float32Array in [-1, 1]) at ``rate`` Hz. */
function encodeWav(samples, rate) {
  const view = new DataView(new ArrayBuffer(44 + samples.length * 2));
  const text = (offset, s) => [...s].forEach((c, i) => view.setUint8(offset + i, c.charCodeAt(0)));
  text(0, "RIFF");
  view.setUint32(4, 36 + samples.length * 2, true);
  text(8, "WAVEfmt ");
  view.setUint32(16, 16, true); // fmt chunk size
  view.setUint16(20, 1, true); // PCM
  view.setUint16(22, 1, true); // channels
  view.setUint32(24, rate, true);
  view.setUint32(28, rate * 2, true); // bytes per second
  view.setUint16(32, 2, true); // block align
  view.setUint16(34, 16, true); // bits per sample
  text(36, "data");
  view.setUint32(40, samples.length * 2, true);
  samples.forEach((x, i) => view.setInt16(44 + i * 2, Math.round(Math.max(-1, Math.min(1, x)) * 32767), true));
  return new Blob([view], { type: "audio/wav" });
}

/** The recorded blob (any format the browser records) decoded, mixed to mono and resampled to ``rate`` Hz. */
async function recordingToWav(blob, rate) {
  const ctx = new AudioContext();
  let decoded;
  try {
    decoded = await ctx.decodeAudioData(await blob.arrayBuffer());
  } finally {
    ctx.close();
  }
  const offline = new OfflineAudioContext(1, Math.max(1, Math.ceil(decoded.duration * rate)), rate);
  const source = offline.createBufferSource();
  source.buffer = decoded;
  source.connect(offline.destination);
  source.start();
  const rendered = await offline.startRendering();
  return encodeWav(rendered.getChannelData(0), rate);
}

async function startRecording() {
  showError("");
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (err) {
    showError(`The microphone is not available: ${err.message}`);
    return;
  }
  const chunks = [];
  recorder = new MediaRecorder(stream);
  recorder.ondataavailable = (e) => chunks.push(e.data);
  recorder.onstop = async () => {
    stream.getTracks().forEach((t) => t.stop());
    const entry = machines.get($("machine-type").value);
    const rate = (entry && entry.bundles[0].sample_rate) || 16000;
    try {
      setClip(await recordingToWav(new Blob(chunks, { type: recorder.mimeType }), rate), "recording.wav");
    } catch (err) {
      showError(`The recording could not be converted to WAV: ${err.message}`);
    }
    recorder = null;
    $("record").disabled = false;
    $("stop").disabled = true;
    updateSubmit();
  };
  recorder.start();
  $("file").value = "";
  $("record").disabled = true;
  $("stop").disabled = false;
  $("clip-status").textContent = "recording…";
  updateSubmit();
}

// --- scoring and the result ------------------------------------------------------------------------------------
async function submit(event) {
  event.preventDefault();
  const entry = machines.get($("machine-type").value);
  if (!clip || !entry) return;
  const params = new URLSearchParams({ machine_type: $("machine-type").value, [entry.idField]: $("group").value });
  if ($("map").checked) params.set("map", "true");
  showError("");
  $("result").hidden = true;
  $("busy").hidden = false;
  $("submit").disabled = true;
  try {
    const body = await callApi(`v1/score?${params}`, {
      method: "POST", headers: { "Content-Type": "audio/wav" }, body: clip.blob,
    });
    showResult(body);
  } catch (err) {
    showError(err.message);
  } finally {
    $("busy").hidden = true;
    updateSubmit();
  }
}

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text;
  return td;
}

function showResult(body) {
  $("score").textContent = fmt(body.score);
  $("threshold").textContent = fmt(body.threshold);
  $("decision").textContent = body.is_anomaly ? "anomalous" : "normal";
  $("decision").className = body.is_anomaly ? "anomalous" : "normal";
  $("bundle").textContent = `${body.machine.bundle}, version ${body.model_version}`;
  const a = body.audio;
  $("audio").textContent = [`${a.duration_s} s at ${a.sample_rate} Hz`, ...(a.notes || [])].join("; ");
  $("members").replaceChildren(...body.members.map((m) => {
    const tr = document.createElement("tr");
    tr.append(cell(m.name), cell(m.method), cell(fmt(m.weight)), cell(fmt(m.raw_score)), cell(fmt(m.standardized_score)));
    return tr;
  }));
  $("maps").replaceChildren(...(body.anomaly_maps || []).map((m, i) => heatMap(m, i, a.duration_s)));
  $("result").hidden = false;
}

function colour(u) {
  const x = Math.min(1, Math.max(0, u)) * (COLOURS.length - 1);
  const i = Math.min(COLOURS.length - 2, Math.floor(x));
  const f = x - i;
  return COLOURS[i].map((c, k) => Math.round(c + (COLOURS[i + 1][k] - c) * f));
}

function element(tag, className, text) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (text !== undefined) el.textContent = text;
  return el;
}

/** A figure with the map ([mel bins][frames]) as a heat map: time on x, mel bin on y (low bins at the bottom),
 *  each pixel the nearest cell's value; and its colour scale. Canvas ids: map-<i>, scale-<i>. */
function heatMap(map, i, durationS) {
  const [bins, frames] = map.shape;
  const values = map.values.flat();
  const lo = values.reduce((a, b) => Math.min(a, b), Infinity);
  const hi = values.reduce((a, b) => Math.max(a, b), -Infinity);
  const span = hi > lo ? hi - lo : 1;
  const canvas = element("canvas", "map");
  canvas.id = `map-${i}`;
  canvas.width = Math.max(720, frames);
  canvas.height = Math.max(256, bins);
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(canvas.width, canvas.height);
  for (let py = 0; py < canvas.height; py++) {
    const bin = bins - 1 - Math.floor(((py + 0.5) * bins) / canvas.height);
    for (let px = 0; px < canvas.width; px++) {
      const frame = Math.floor(((px + 0.5) * frames) / canvas.width);
      const [r, g, b] = colour((map.values[bin][frame] - lo) / span);
      const o = (py * canvas.width + px) * 4;
      image.data.set([r, g, b, 255], o);
    }
  }
  ctx.putImageData(image, 0, 0);

  const scale = element("canvas", "scale");
  scale.id = `scale-${i}`;
  scale.width = 16;
  scale.height = canvas.height;
  const sctx = scale.getContext("2d");
  for (let py = 0; py < scale.height; py++) {
    sctx.fillStyle = `rgb(${colour(1 - (py + 0.5) / scale.height).join(",")})`;
    sctx.fillRect(0, py, scale.width, 1);
  }

  const figure = element("figure", "heat-map");
  const yAxis = element("div", "y-axis");
  yAxis.append(element("span", "", String(bins - 1)), element("span", "axis-title", "mel bin"), element("span", "", "0"));
  const bar = element("div", "colour-bar");
  bar.append(element("span", "", short(hi)), scale, element("span", "", short(lo)));
  const plot = element("div", "plot");
  plot.append(yAxis, canvas, bar);
  const xAxis = element("div", "x-axis");
  xAxis.append(element("span", "", "0 s"), element("span", "axis-title", `time (${frames} frames)`),
    element("span", "", `${durationS} s`));
  figure.append(element("figcaption", "", `Anomaly map of ${map.member} (${bins} mel bins × ${frames} frames)`), plot,
    xAxis);
  return figure;
}

// --- wiring ------------------------------------------------------------------------------------------------------
document.addEventListener("DOMContentLoaded", () => {
  $("api-key").value = localStorage.getItem(KEY_STORAGE) || "";
  $("api-key").addEventListener("change", () => {
    const key = $("api-key").value.trim();
    if (key) localStorage.setItem(KEY_STORAGE, key);
    else localStorage.removeItem(KEY_STORAGE);
    loadModels();
  });
  $("machine-type").addEventListener("change", machineChanged);
  $("group").addEventListener("input", describeBundle);
  $("file").addEventListener("change", () => {
    const f = $("file").files[0];
    setClip(f || null, f ? f.name : "");
  });
  $("record").addEventListener("click", startRecording);
  $("stop").addEventListener("click", () => recorder && recorder.stop());
  $("score-form").addEventListener("submit", submit);
  $("record").disabled = !(navigator.mediaDevices && window.MediaRecorder);
  loadModels();
});
