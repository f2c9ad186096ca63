// refine-serve web page: draw or upload a control image, type a prompt, follow progress, keep the results made in
// this tab (history, downloads named after them, reuse seed, result → control).
// Talks only to this server (the Content-Security-Policy allows nothing else). Nothing is stored: the history lives in
// this tab's memory and is gone on reload.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  token: sessionStorage.getItem("refine-token") || "",
  job: null,
  abort: null,
  limits: null,
  mode: "draw",
  started: null, // when the running job was first seen running (performance.now())
  history: [], // newest first: {id, url, blob, prompt, negative, seed, steps, guidance, cscale, width, height, seconds, control}
  current: null,
  nextId: 1,
};
const HISTORY_MAX = 50;
const CANVAS_LONG_SIDE = 512; // the sketch's pixels: an integer multiple of the output size, about this long
const UNDO_MAX = 20;

function headers(extra = {}) {
  const h = { ...extra };
  if (state.token) h.Authorization = "Bearer " + state.token;
  return h;
}

function setStatus(text, kind = "") {
  const el = $("status");
  el.textContent = text;
  el.className = kind;
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: headers(options.headers || {}), cache: "no-store" });
  if (response.status === 401) {
    $("auth").hidden = false;
    throw new Error("this server needs an access token");
  }
  if (!response.ok) {
    let detail = response.statusText;
    try {
      const body = await response.json();
      detail = body.detail || body.error || detail;
    } catch (err) { /* not JSON */ }
    const retry = response.headers.get("Retry-After");
    throw new Error(detail + (retry ? ` (retry in ${retry} s)` : ""));
  }
  return response;
}

// ---------------------------------------------------------------- model and limits
function fillSizes(select, low, high, multiple, value) {
  select.replaceChildren();
  const step = Math.max(multiple, Math.ceil((high - low) / 16 / multiple) * multiple);
  for (let v = low; v <= high; v += step) select.add(new Option(String(v), String(v)));
  if (![...select.options].some((o) => o.value === String(value))) select.add(new Option(String(value), String(value)));
  select.value = String(value);
}

// The on-device mode (refine-serve --web): a link to the page that runs the model in this browser, or why it is off.
function showDeviceMode(device) {
  if (!device) return;
  if (device.available) {
    $("device-link").href = device.url;
    $("device").hidden = false;
  } else {
    $("device-off").textContent = `Run on this device: ${device.note}.`;
    $("device-off").hidden = false;
  }
}

async function loadModel() {
  try {
    const data = await (await api("/v1/models")).json();
    const model = data.models[0];
    const limits = (state.limits = data.limits);
    $("model").textContent = `Model ${model.name} · ${model.precision} · ${model.resolution} px · ${model.scheduler}`;
    fillSizes($("width"), limits.min_output_side, limits.max_output_side, limits.size_multiple, model.resolution);
    fillSizes($("height"), limits.min_output_side, limits.max_output_side, limits.size_multiple, model.resolution);
    $("steps").max = String(limits.max_steps);
    $("steps").value = String(Math.min(model.recommended_steps, limits.max_steps));
    $("guidance").value = String(model.recommended_guidance_scale);
    if (model.guidance_range) {
      // A guidance-distilled student takes only the scales it was trained on.
      [$("guidance").min, $("guidance").max] = model.guidance_range.map(String);
    }
    $("preprocessor").replaceChildren(...limits.preprocessors.map((p) => new Option(p, p)));
    $("preprocessor").value = model.preprocessor && limits.preprocessors.includes(model.preprocessor) ? model.preprocessor : limits.preprocessors[0];
    followSize();
    showDeviceMode(data.device);
    $("generate").disabled = false;
    setStatus("Ready.");
  } catch (err) {
    setStatus(err.message, "error");
  }
}

// ---------------------------------------------------------------- drawing
// White strokes on black; the eraser paints black. Every stroke, clear and result → control first saves the pixels,
// so Undo restores them exactly. The canvas keeps the output's aspect ratio: its size is the output size times an
// integer, so the server's resize to the output never stretches it.
const sketch = { canvas: null, ctx: null, tool: "brush", undo: [], pointer: null };

function blank() {
  const { canvas, ctx } = sketch;
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
}

function canvasSize(width, height) {
  const k = Math.max(1, Math.round(CANVAS_LONG_SIDE / Math.max(width, height)));
  return [width * k, height * k];
}

// Draw `source` (w × h) as large as fits, centred, without changing its aspect ratio.
function drawContained(source, w, h, smooth = true) {
  const { canvas, ctx } = sketch;
  const scale = Math.min(canvas.width / w, canvas.height / h);
  const dw = w * scale;
  const dh = h * scale;
  ctx.imageSmoothingEnabled = smooth;
  ctx.drawImage(source, (canvas.width - dw) / 2, (canvas.height - dh) / 2, dw, dh);
  ctx.imageSmoothingEnabled = true;
}

function snapshot() {
  return sketch.ctx.getImageData(0, 0, sketch.canvas.width, sketch.canvas.height);
}

function restore(image) {
  const { canvas, ctx } = sketch;
  if (image.width === canvas.width && image.height === canvas.height) {
    ctx.putImageData(image, 0, 0);
    return;
  }
  const copy = document.createElement("canvas"); // saved at another size: fit it in, as a resize does
  [copy.width, copy.height] = [image.width, image.height];
  copy.getContext("2d").putImageData(image, 0, 0);
  blank();
  drawContained(copy, copy.width, copy.height);
}

function pushUndo() {
  sketch.undo.push(snapshot());
  if (sketch.undo.length > UNDO_MAX) sketch.undo.shift();
  $("undo").disabled = false;
}

function undo() {
  const image = sketch.undo.pop();
  if (image) restore(image);
  $("undo").disabled = sketch.undo.length === 0;
}

function resizeCanvas(width, height) {
  const { canvas } = sketch;
  const [w, h] = canvasSize(width, height);
  if (canvas.width === w && canvas.height === h) return;
  const old = snapshot();
  [canvas.width, canvas.height] = [w, h]; // clears it
  restore(old); // the drawing so far, fitted in (not stretched)
}

function selectSize(select, value) {
  if (![...select.options].some((o) => o.value === String(value))) select.add(new Option(String(value), String(value)));
  select.value = String(value);
}

function followSize() {
  resizeCanvas(Number($("width").value), Number($("height").value));
}

function setTool(tool) {
  sketch.tool = tool;
  $("tool-brush").setAttribute("aria-pressed", String(tool === "brush"));
  $("tool-eraser").setAttribute("aria-pressed", String(tool === "eraser"));
  sketch.canvas.classList.toggle("erasing", tool === "eraser");
}

function setupCanvas() {
  const canvas = (sketch.canvas = $("sketch"));
  const ctx = (sketch.ctx = canvas.getContext("2d", { willReadFrequently: true }));
  blank();
  // Pointer events cover mouse, pen and touch; only the first finger draws (touch-action: none in the stylesheet).
  const point = (event) => {
    const rect = canvas.getBoundingClientRect();
    const x = ((event.clientX - rect.left - canvas.clientLeft) * canvas.width) / Math.max(1, canvas.clientWidth);
    const y = ((event.clientY - rect.top - canvas.clientTop) * canvas.height) / Math.max(1, canvas.clientHeight);
    return [x, y];
  };
  canvas.addEventListener("pointerdown", (event) => {
    if (!event.isPrimary || event.button > 0 || sketch.pointer !== null) return;
    event.preventDefault();
    pushUndo();
    sketch.pointer = event.pointerId;
    canvas.setPointerCapture?.(event.pointerId);
    ctx.strokeStyle = sketch.tool === "eraser" ? "#000" : "#fff";
    ctx.lineWidth = (Number($("brush").value) * canvas.width) / Math.max(1, canvas.clientWidth); // brush in screen px
    ctx.lineCap = ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(...point(event));
    ctx.lineTo(...point(event));
    ctx.stroke();
  });
  canvas.addEventListener("pointermove", (event) => {
    if (event.pointerId !== sketch.pointer) return;
    for (const e of event.getCoalescedEvents?.() || [event]) ctx.lineTo(...point(e));
    ctx.stroke();
  });
  const stop = (event) => {
    if (event.pointerId === sketch.pointer) sketch.pointer = null;
  };
  for (const name of ["pointerup", "pointercancel", "lostpointercapture"]) canvas.addEventListener(name, stop);
  $("clear").addEventListener("click", () => {
    pushUndo();
    blank();
  });
  $("undo").addEventListener("click", undo);
  $("tool-brush").addEventListener("click", () => setTool("brush"));
  $("tool-eraser").addEventListener("click", () => setTool("eraser"));
  document.addEventListener("keydown", (event) => {
    const typing = event.target.closest?.("input, textarea, select");
    if ((event.ctrlKey || event.metaKey) && !event.shiftKey && event.key.toLowerCase() === "z" && !typing) {
      event.preventDefault();
      undo();
    }
  });
  $("width").addEventListener("change", followSize);
  $("height").addEventListener("change", followSize);
}

function canvasBase64() {
  return $("sketch").toDataURL("image/png").split(",", 2)[1];
}

function fileBase64(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1]);
    reader.onerror = () => reject(new Error("could not read the file"));
    reader.readAsDataURL(file);
  });
}

function switchTab(mode) {
  state.mode = mode;
  $("pane-draw").hidden = mode !== "draw";
  $("pane-upload").hidden = mode !== "upload";
  $("tab-draw").setAttribute("aria-selected", String(mode === "draw"));
  $("tab-upload").setAttribute("aria-selected", String(mode === "upload"));
}

let uploadUrl = null;
function showUpload() {
  const file = $("file").files[0];
  if (uploadUrl) URL.revokeObjectURL(uploadUrl);
  uploadUrl = file ? URL.createObjectURL(file) : null;
  $("upload-preview").hidden = !file;
  if (file) $("upload-preview").src = uploadUrl;
  $("control-preview").hidden = true;
}

async function previewControl() {
  const file = $("file").files[0];
  if (!file) return setStatus("Choose an image first.", "error");
  try {
    const body = { image: await fileBase64(file), preprocessor: $("preprocessor").value };
    const blob = await (await api("/v1/preprocess", { method: "POST", body: JSON.stringify(body), headers: { "Content-Type": "application/json" } })).blob();
    const img = $("control-preview");
    if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
    img.src = URL.createObjectURL(blob);
    img.hidden = false;
  } catch (err) {
    setStatus(err.message, "error");
  }
}

// ---------------------------------------------------------------- generation
async function requestBody() {
  const body = {
    prompt: $("prompt").value,
    negative_prompt: $("negative").value,
    steps: Number($("steps").value),
    guidance_scale: Number($("guidance").value),
    controlnet_scale: Number($("cscale").value),
    width: Number($("width").value),
    height: Number($("height").value),
  };
  if ($("seed").value !== "") body.seed = Number($("seed").value);
  if (state.mode === "draw") {
    body.control_image = canvasBase64();
  } else {
    const file = $("file").files[0];
    if (!file) throw new Error("Choose an image to upload, or draw one.");
    body.image = await fileBase64(file);
    body.preprocessor = $("preprocessor").value;
  }
  return body;
}

// Server-sent events read with fetch, so the Authorization header can be sent (EventSource cannot).
async function followEvents(jobId, signal) {
  const response = await api(`/v1/jobs/${jobId}/events`, { signal });
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let last = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5)).join("\n");
      if (!data) continue;
      last = JSON.parse(data);
      showProgress(last);
    }
  }
  return last;
}

function showProgress(job) {
  const { step, total } = job.progress;
  $("progress").max = Math.max(1, total);
  $("progress").value = step;
  if (job.status === "queued") setStatus(`Queued (${job.position ?? 0} ahead)…`);
  else if (job.status === "running") {
    state.started ??= performance.now();
    setStatus(`Step ${step} of ${total}…`);
  }
}

async function generate() {
  $("generate").disabled = true;
  $("cancel").disabled = false;
  $("progress").value = 0;
  setStatus("Sending…");
  state.abort = new AbortController();
  state.started = null;
  try {
    const body = await requestBody();
    const sent = performance.now();
    const job = await (await api("/v1/jobs", { method: "POST", body: JSON.stringify(body), headers: { "Content-Type": "application/json" } })).json();
    state.job = job.id;
    showProgress(job);
    const final = await followEvents(job.id, state.abort.signal);
    // Time per image: from when the job started running (as the page saw it; from sending when it never saw it run).
    const seconds = (performance.now() - (state.started ?? sent)) / 1000;
    if (!final || final.status !== "done") {
      setStatus(final && final.status === "cancelled" ? "Cancelled." : `Failed: ${(final && final.detail) || "no result"}`, final && final.status === "cancelled" ? "" : "error");
      return;
    }
    const blob = await (await api(`/v1/jobs/${job.id}/result`)).blob();
    await api(`/v1/jobs/${job.id}`, { method: "DELETE" }); // the server forgets the image now
    const entry = {
      id: state.nextId++,
      url: URL.createObjectURL(blob),
      blob,
      prompt: body.prompt,
      negative: body.negative_prompt,
      seed: final.seed,
      steps: body.steps,
      guidance: body.guidance_scale,
      cscale: body.controlnet_scale,
      width: final.width,
      height: final.height,
      seconds,
      control: state.mode === "draw" ? "sketch" : `upload, ${body.preprocessor}`,
    };
    addToHistory(entry);
    showResult(entry);
    $("progress").value = $("progress").max;
    setStatus("Done.", "done");
  } catch (err) {
    if (err.name === "AbortError") setStatus("Cancelled.");
    else setStatus(err.message, "error");
  } finally {
    state.job = null;
    $("generate").disabled = false;
    $("cancel").disabled = true;
  }
}

// ---------------------------------------------------------------- results and history
function slug(text) {
  const words = text.toLowerCase().normalize("NFKD").replace(/[\u0300-\u036f]/g, "").replace(/[^a-z0-9]+/g, "-");
  return words.replace(/^-+/, "").slice(0, 48).replace(/-+$/, "");
}

// refine-<prompt>-seed<N>.png: a folder of downloads says what made each image.
function downloadName(entry) {
  const name = slug(entry.prompt);
  return `refine-${name ? name + "-" : ""}seed${entry.seed}.png`;
}

function duration(seconds) {
  return `${seconds.toFixed(seconds < 10 ? 2 : 1)} s`;
}

function settingsText(entry) {
  return `${entry.width}×${entry.height} · ${entry.steps} steps · guidance ${entry.guidance} · strength ${entry.cscale} · ${entry.control} · ${duration(entry.seconds)}`;
}

function showResult(entry) {
  state.current = entry;
  const img = $("result");
  img.src = entry.url;
  img.alt = `generated image: ${entry.prompt || "no prompt"}, seed ${entry.seed}`;
  img.hidden = false;
  $("result-prompt").textContent = entry.prompt || "(no prompt)";
  $("result-prompt").hidden = false;
  $("seed-used").textContent = `seed ${entry.seed}`;
  $("result-info").textContent = "· " + settingsText(entry);
  $("download").href = entry.url;
  $("download").download = downloadName(entry);
  $("result-actions").hidden = false;
  for (const item of $("history").children) {
    item.firstElementChild.setAttribute("aria-current", String(Number(item.dataset.id) === entry.id));
  }
}

function addToHistory(entry) {
  state.history.unshift(entry);
  for (const old of state.history.splice(HISTORY_MAX)) {
    URL.revokeObjectURL(old.url);
    $("history").querySelector(`li[data-id="${old.id}"]`)?.remove();
  }
  const item = document.createElement("li");
  item.dataset.id = String(entry.id);
  item.dataset.seed = String(entry.seed);
  const button = document.createElement("button");
  button.type = "button";
  button.className = "thumb";
  button.title = `${entry.prompt || "(no prompt)"}\n${settingsText(entry)}`;
  const img = document.createElement("img");
  img.src = entry.url;
  img.alt = "";
  const prompt = document.createElement("span");
  prompt.className = "caption";
  prompt.textContent = entry.prompt || "(no prompt)";
  const meta = document.createElement("span");
  meta.className = "meta";
  meta.textContent = `seed ${entry.seed} · ${entry.steps} steps · g ${entry.guidance} · ${duration(entry.seconds)}`;
  button.append(img, prompt, meta);
  button.addEventListener("click", () => showResult(entry));
  item.append(button);
  $("history").prepend(item);
  $("history-panel").hidden = false;
}

// Seed, steps, guidance, control strength and size of a result back in the form (the prompt stays as typed).
function reuseSettings(entry) {
  $("seed").value = String(entry.seed);
  $("steps").value = String(entry.steps);
  $("guidance").value = String(entry.guidance);
  $("cscale").value = String(entry.cscale);
  $("negative").value = entry.negative;
  selectSize($("width"), entry.width);
  selectSize($("height"), entry.height);
  followSize();
}

// Result → control: the result goes through the same preprocessor as an uploaded photo (the Upload tab's choice,
// by default the model's), and the control map lands on the sketch canvas, where it can be drawn on, erased or undone.
async function useAsControl(entry) {
  const button = $("use-control");
  button.disabled = true;
  try {
    const preprocessor = $("preprocessor").value;
    const body = { image: await fileBase64(entry.blob), preprocessor, width: entry.width, height: entry.height };
    const response = await api("/v1/preprocess", { method: "POST", body: JSON.stringify(body), headers: { "Content-Type": "application/json" } });
    const map = await createImageBitmap(await response.blob());
    selectSize($("width"), entry.width);
    selectSize($("height"), entry.height);
    followSize();
    pushUndo();
    blank();
    drawContained(map, map.width, map.height, false); // an integer upscale, no smoothing: edges stay edges
    map.close();
    switchTab("draw");
    $("sketch-note").textContent = `The ${preprocessor} map of the result with seed ${entry.seed}: draw on it, erase, or undo.`;
  } catch (err) {
    setStatus(err.message, "error");
  } finally {
    button.disabled = false;
  }
}

async function cancel() {
  const id = state.job;
  if (!id) return;
  $("cancel").disabled = true;
  try {
    await api(`/v1/jobs/${id}`, { method: "DELETE" });
  } catch (err) {
    setStatus(err.message, "error");
  }
}

document.addEventListener("DOMContentLoaded", () => {
  setupCanvas();
  $("tab-draw").addEventListener("click", () => switchTab("draw"));
  $("tab-upload").addEventListener("click", () => switchTab("upload"));
  $("file").addEventListener("change", showUpload);
  $("preview").addEventListener("click", previewControl);
  $("generate").addEventListener("click", generate);
  $("cancel").addEventListener("click", cancel);
  $("reuse").addEventListener("click", () => state.current && reuseSettings(state.current));
  $("use-control").addEventListener("click", () => state.current && useAsControl(state.current));
  $("token-save").addEventListener("click", () => {
    state.token = $("token").value.trim();
    sessionStorage.setItem("refine-token", state.token);
    $("auth").hidden = true;
    loadModel();
  });
  loadModel();
});
