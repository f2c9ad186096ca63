// refine-serve web page: draw or upload a control image, type a prompt, follow progress, see the result.
// Talks only to this server (the Content-Security-Policy allows nothing else). Nothing is stored.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { token: sessionStorage.getItem("refine-token") || "", job: null, abort: null, limits: null, mode: "draw" };

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
    showDeviceMode(data.device);
    $("generate").disabled = false;
    setStatus("Ready.");
  } catch (err) {
    setStatus(err.message, "error");
  }
}

// ---------------------------------------------------------------- drawing
function setupCanvas() {
  const canvas = $("sketch");
  const ctx = canvas.getContext("2d");
  const clear = () => {
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
  };
  clear();
  let drawing = false;
  const point = (event) => {
    const rect = canvas.getBoundingClientRect();
    return [((event.clientX - rect.left) * canvas.width) / rect.width, ((event.clientY - rect.top) * canvas.height) / rect.height];
  };
  canvas.addEventListener("pointerdown", (event) => {
    drawing = true;
    canvas.setPointerCapture?.(event.pointerId);
    ctx.strokeStyle = "#fff";
    ctx.lineWidth = Number($("brush").value);
    ctx.lineCap = ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(...point(event));
    ctx.lineTo(...point(event));
    ctx.stroke();
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!drawing) return;
    ctx.lineTo(...point(event));
    ctx.stroke();
  });
  const stop = () => { drawing = false; };
  canvas.addEventListener("pointerup", stop);
  canvas.addEventListener("pointerleave", stop);
  $("clear").addEventListener("click", clear);
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
  else if (job.status === "running") setStatus(`Step ${step} of ${total}…`);
}

async function generate() {
  $("generate").disabled = true;
  $("cancel").disabled = false;
  $("progress").value = 0;
  setStatus("Sending…");
  state.abort = new AbortController();
  try {
    const body = await requestBody();
    const job = await (await api("/v1/jobs", { method: "POST", body: JSON.stringify(body), headers: { "Content-Type": "application/json" } })).json();
    state.job = job.id;
    showProgress(job);
    const final = await followEvents(job.id, state.abort.signal);
    if (!final || final.status !== "done") {
      setStatus(final && final.status === "cancelled" ? "Cancelled." : `Failed: ${(final && final.detail) || "no result"}`, final && final.status === "cancelled" ? "" : "error");
      return;
    }
    const blob = await (await api(`/v1/jobs/${job.id}/result`)).blob();
    await api(`/v1/jobs/${job.id}`, { method: "DELETE" }); // the server forgets the image now
    const img = $("result");
    if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
    img.src = URL.createObjectURL(blob);
    img.hidden = false;
    $("download").href = img.src;
    $("download").hidden = false;
    $("seed-used").textContent = `seed ${final.seed}`;
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
  $("token-save").addEventListener("click", () => {
    state.token = $("token").value.trim();
    sessionStorage.setItem("refine-token", state.token);
    $("auth").hidden = true;
    loadModel();
  });
  loadModel();
});
