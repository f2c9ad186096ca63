// The page: loads the verified model into ONNX Runtime Web once, then draws, uploads and generates on this device.
// Nothing is sent anywhere (CSP connect-src 'self'; only this folder's static files are fetched). With
// `?selftest=1` it generates the reference sample shipped in selftest/ and reports PSNR, time and backend, also as
// JSON in <pre id="selftest">, and leaves `globalThis.refineSelftest.run()` (one more timed image) for benchmarks.
// Other query parameters: precision=int8, backend=webgpu, threads=N, runs=N (timed self-test runs),
// opt=disabled|basic|extended|all (ORT graph optimisation level), fixed=0 (dynamic shapes instead of sessions
// pinned to the model's resolution by web.json's free-dimension overrides), spin=0 (ORT's thread pool without
// spinning), proxy=0 (ORT on the page's thread).
import * as ort from "onnxruntime-web";
import { canny, edgesToControl } from "./canny.js";
import { ModelError, WebPipeline, gaussian, precisions, psnr } from "./pipeline.js";
import { sha256 } from "./sha256.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const MAX_UPLOAD_BYTES = 20 << 20;

function status(text) {
  $("status").textContent = text;
}

function note(text) {
  const el = $("note");
  el.hidden = false;
  el.textContent = el.textContent ? `${el.textContent} ${text}` : text;
}

async function fetchBytes(path) {
  const response = await fetch(path);
  if (response.status === 404) return null;
  if (!response.ok) throw new ModelError(`${path}: HTTP ${response.status}`);
  return response.arrayBuffer();
}

function simdSupported() {
  // (module (func (result v128) i32.const 0 i8x16.splat i8x16.popcnt)) — the probe ONNX Runtime Web's docs use
  const probe = new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 10, 1, 8, 0, 65,
    0, 253, 15, 253, 98, 11]);
  return typeof WebAssembly === "object" && WebAssembly.validate(probe);
}

async function webgpuState() {
  if (!navigator.gpu) return "not available";
  try {
    return (await navigator.gpu.requestAdapter()) ? "available" : "not available (no adapter)";
  } catch {
    return "not available (no adapter)";
  }
}

/** Configure ORT Web: its own files from ./lib/ort/ (never a CDN), threads only when cross-origin isolated. */
function configureRuntime() {
  ort.env.wasm.wasmPaths = new URL("../lib/ort/", import.meta.url).href;
  ort.env.logLevel = "error";
  const isolated = globalThis.crossOriginIsolated === true;
  const wanted = Number(params.get("threads")) || Math.min(navigator.hardwareConcurrency || 1, 4);
  ort.env.wasm.numThreads = isolated ? wanted : 1;
  // ORT in its own worker, so building sessions and running steps never freezes the page (drawing, progress)
  ort.env.wasm.proxy = params.get("proxy") !== "0";
  if (!isolated) {
    note("Single-thread mode: the page is not cross-origin isolated (serve it with the COOP/COEP headers, see README).");
  }
  return { isolated, threads: ort.env.wasm.numThreads, simd: simdSupported(), proxy: ort.env.wasm.proxy };
}

/** Register sw.js and wait until it has cached the folder: "activated", "redundant" (its install failed, e.g. a
 * missing file), "unsupported" (not a secure context) or "failed: ...". */
async function registerServiceWorker() {
  if (!("serviceWorker" in navigator)) return "unsupported (not a secure context?)";
  try {
    const registration = await navigator.serviceWorker.register("./sw.js", { scope: "./" });
    const worker = registration.installing ?? registration.waiting;
    if (!worker) return registration.active ? "activated" : "no worker";
    return await new Promise((resolve) => {
      const check = () => {
        if (worker.state === "activated" || worker.state === "redundant") resolve(worker.state);
      };
      worker.addEventListener("statechange", check);
      check();
    });
  } catch (err) {
    return `failed: ${err.message}`;
  }
}

function controlFromCanvas(canvas, width, height, preprocess) {
  const off = document.createElement("canvas");
  off.width = width;
  off.height = height;
  const g = off.getContext("2d", { willReadFrequently: true });
  g.drawImage(canvas, 0, 0, width, height);
  const rgba = g.getImageData(0, 0, width, height).data;
  if (preprocess) return edgesToControl(canny(rgba, width, height), width, height);
  const plane = width * height;
  const out = new Float32Array(3 * plane);
  for (let i = 0; i < plane; i++) for (let c = 0; c < 3; c++) out[c * plane + i] = rgba[i * 4 + c] / 255;
  return out;
}

function showImage(canvas, rgba, width, height) {
  canvas.width = width;
  canvas.height = height;
  canvas.getContext("2d").putImageData(new ImageData(rgba, width, height), 0, 0);
}

/** Show a (3, H, W) control image in [0, 1] on the sketch canvas (scaled up without smoothing). */
function showControl(canvas, control, size) {
  const plane = size * size;
  const rgba = new Uint8ClampedArray(plane * 4);
  for (let i = 0; i < plane; i++) {
    for (let c = 0; c < 3; c++) rgba[4 * i + c] = Math.round(control[c * plane + i] * 255);
    rgba[4 * i + 3] = 255;
  }
  const small = document.createElement("canvas");
  small.width = small.height = size;
  small.getContext("2d").putImageData(new ImageData(rgba, size, size), 0, 0);
  const g = canvas.getContext("2d");
  g.imageSmoothingEnabled = false;
  g.drawImage(small, 0, 0, canvas.width, canvas.height);
}

function setupSketch(canvas, onDraw) {
  const g = canvas.getContext("2d");
  const clear = () => {
    g.fillStyle = "#000";
    g.fillRect(0, 0, canvas.width, canvas.height);
  };
  clear();
  let last = null;
  const point = (e) => {
    const r = canvas.getBoundingClientRect();
    return [((e.clientX - r.left) * canvas.width) / r.width, ((e.clientY - r.top) * canvas.height) / r.height];
  };
  canvas.addEventListener("pointerdown", (e) => {
    canvas.setPointerCapture(e.pointerId);
    last = point(e);
    onDraw();
  });
  canvas.addEventListener("pointermove", (e) => {
    if (!last) return;
    const p = point(e);
    g.strokeStyle = "#fff";
    g.lineWidth = Math.max(2, canvas.width / 64);
    g.lineCap = "round";
    g.beginPath();
    g.moveTo(...last);
    g.lineTo(...p);
    g.stroke();
    last = p;
  });
  for (const type of ["pointerup", "pointercancel"]) canvas.addEventListener(type, () => (last = null));
  return clear;
}

async function loadImageFile(file) {
  if (!file.type.startsWith("image/")) throw new Error(`${file.name} is not an image`);
  if (file.size > MAX_UPLOAD_BYTES) throw new Error(`${file.name} is larger than ${MAX_UPLOAD_BYTES >> 20} MB`);
  try {
    return await createImageBitmap(file);
  } catch {
    throw new Error(`${file.name} could not be decoded as an image`);
  }
}

/** web.json's free-dimension overrides ({graph: {symbolic dimension: size}} at the model's resolution), or null
 * when the folder has none (written before they were). */
async function readFixedDims() {
  const bytes = await fetchBytes("web.json");
  if (bytes == null) return null;
  return JSON.parse(new TextDecoder().decode(bytes)).fixed_dims ?? null;
}

async function loadPipeline(manifest, runtime) {
  const precision = params.get("precision") || "fp32";
  const backend = params.get("backend") === "webgpu" ? "webgpu" : "wasm";
  const executionProviders = backend === "webgpu" ? ["webgpu", "wasm"] : ["wasm"];
  const levels = ["disabled", "basic", "extended", "all"];
  const graphOptimizationLevel = levels.includes(params.get("opt")) ? params.get("opt") : "all";
  runtime.graph_optimization = graphOptimizationLevel;
  // benchmarks/web_latency.py's A/B (results/web/): fixed shapes 0.94× and 0.98× the time of dynamic ones in two
  // runs (the second within its noise floor), so on by default; a pool without spinning 1.05× and 1.00×, so off.
  const fixedDims = params.get("fixed") === "0" ? null : await readFixedDims();
  runtime.fixed_shapes = fixedDims != null;
  const spinning = params.get("spin") !== "0";
  runtime.spinning = spinning;
  const pipe = await WebPipeline.load(ort, manifest, (name) => fetchBytes(`model/${name}`), {
    precision,
    executionProviders,
    graphOptimizationLevel,
    fixedDims,
    sessionOptions: spinning ? {} : { extra: { session: { intra_op: { allow_spinning: "0" } } } },
    onFile: (name) => status(`Checked ${name}.`),
  });
  runtime.backend = backend;
  return pipe;
}

async function selftest(manifest, runtime) {
  const report = { ok: false, reference: "Python OnnxControlNetPipeline (written at export)" };
  try {
    report.service_worker = await registerServiceWorker();
    const sample = JSON.parse(new TextDecoder().decode(await fetchBytes("selftest/sample.json")));
    const binary = async (name) => {
      const bytes = await fetchBytes(`selftest/${name}`);
      if (bytes == null || (await sha256(bytes)) !== sample.files[name]) {
        throw new ModelError(`selftest/${name} is missing or corrupted`);
      }
      return bytes;
    };
    const control = new Float32Array(await binary("control.f32"));
    const initial = new Float32Array(await binary("latents.f32"));
    const noises = new Float32Array(await binary("noise.f32"));
    const loadStart = performance.now();
    const pipe = await loadPipeline(manifest, runtime);
    const referenceName = sample.references[pipe.precision];
    if (!referenceName) throw new ModelError(`the self-test has no ${pipe.precision} reference image`);
    const reference = new Uint8Array(await binary(referenceName));
    report.load_ms = performance.now() - loadStart;
    report.load_phases_ms = pipe.loadTimings;
    const run = () => {
      let drawn = 0;
      return pipe.generate({
        prompt: sample.prompt,
        negativePrompt: sample.negative_prompt,
        control,
        width: sample.width,
        height: sample.height,
        steps: sample.steps,
        guidanceScale: sample.guidance_scale,
        controlnetScale: sample.controlnet_scale,
        initialNoise: initial,
        noise: (n) => noises.slice(n * drawn, n * ++drawn),
        onStep: (done, total) => status(`Self-test: step ${done} of ${total}.`),
      });
    };
    report.generation_started_ms = performance.timeOrigin + performance.now();
    let start = performance.now();
    const image = await run();
    report.first_image_ms = performance.now() - start;
    const times = [];
    const runs = params.has("runs") ? Math.max(0, Math.floor(Number(params.get("runs")) || 0)) : 2;
    for (let i = 0; i < runs; i++) {
      start = performance.now();
      await run();
      times.push(performance.now() - start);
    }
    times.sort((a, b) => a - b);
    report.ms_per_image = times.length ? times[Math.floor(times.length / 2)] : report.first_image_ms;
    report.timed_runs = times.length;
    const rgbaRef = new Uint8ClampedArray(image.length);
    for (let i = 0; i < reference.length / 3; i++) {
      rgbaRef.set(reference.subarray(3 * i, 3 * i + 3), 4 * i);
      rgbaRef[4 * i + 3] = 255;
    }
    const db = psnr(image, rgbaRef);
    report.identical = db === Infinity;
    report.psnr_db = Number.isFinite(db) ? db : null;
    let maxDiff = 0;
    for (let i = 0; i < image.length; i++) if (i % 4 !== 3) maxDiff = Math.max(maxDiff, Math.abs(image[i] - rgbaRef[i]));
    report.max_abs_diff = maxDiff;
    report.precision = pipe.precision;
    report.guidance_embedded = pipe.guidanceEmbedded;
    report.scheduler = sample.scheduler;
    report.files = pipe.files;
    report.steps = sample.steps;
    report.size = [sample.width, sample.height];
    report.graphs_ms = { ...pipe.graphMs };
    report.ok = true;
    // One more timed image on demand (benchmarks/web_latency.py interleaves these with native runs).
    globalThis.refineSelftest = {
      run: async () => {
        const t = performance.now();
        await run();
        return { ms: performance.now() - t, graphs_ms: { ...pipe.graphMs } };
      },
    };
    showImage($("result"), image, sample.width, sample.height);
    status(`Self-test: ${report.identical ? "identical to" : `PSNR ${db.toFixed(1)} dB against`} the reference, ` +
      `${report.ms_per_image.toFixed(0)} ms per image.`);
  } catch (err) {
    report.error = String(err?.message ?? err);
    status(`Self-test failed: ${report.error}`);
  }
  report.backend = { ...runtime, webgpu: await webgpuState() };
  report.user_agent = navigator.userAgent;
  $("selftest").textContent = JSON.stringify(report, null, 1);
}

async function interactive(manifest, runtime) {
  status("Keeping a copy for offline use…");
  const worker = await registerServiceWorker();
  if (worker !== "activated") note(`No offline copy (service worker: ${worker}).`);
  const pipe = await loadPipeline(manifest, runtime);
  const size = pipe.resolution;
  const sketch = $("sketch");
  const clear = setupSketch(sketch, () => (photoControl = null));
  let photoControl = null; // the control image made from an uploaded photo, until the user draws again
  $("clear").addEventListener("click", () => {
    clear();
    photoControl = null;
  });
  $("photo").addEventListener("change", async () => {
    const file = $("photo").files[0];
    if (!file) return;
    try {
      const bitmap = await loadImageFile(file);
      const edges = pipe.facts.preprocessor === "canny";
      photoControl = controlFromCanvas(bitmap, size, size, edges);
      showControl(sketch, photoControl, size);
      status(edges ? "Photo loaded: its Canny edges are the control image." : "Image loaded as the control image.");
    } catch (err) {
      status(err.message);
    }
  });
  $("steps").value = pipe.defaultSteps;
  $("guidance").value = pipe.defaultGuidanceScale;
  if (pipe.guidanceRange) [$("guidance").min, $("guidance").max] = pipe.guidanceRange;
  $("generate").disabled = false;
  $("generate").addEventListener("click", async () => {
    $("generate").disabled = true;
    try {
      const seed = Math.max(0, Math.floor(Number($("seed").value) || 0));
      const rng = gaussian(seed);
      const control = photoControl ?? controlFromCanvas(sketch, size, size, false);
      const latentSize = pipe.latentShape(size, size).reduce((a, b) => a * b, 1);
      const start = performance.now();
      const image = await pipe.generate({
        prompt: $("prompt").value,
        control,
        width: size,
        height: size,
        steps: Math.max(1, Math.floor(Number($("steps").value) || pipe.defaultSteps)),
        guidanceScale: Number($("guidance").value),
        initialNoise: rng(latentSize),
        noise: rng,
        onStep: (done, total) => status(`Step ${done} of ${total}…`),
      });
      showImage($("result"), image, size, size);
      status(`Done in ${(performance.now() - start).toFixed(0)} ms, on this device.`);
    } catch (err) {
      status(`Error: ${err.message}`);
    } finally {
      $("generate").disabled = false;
    }
  });
  status("Ready.");
}

async function main() {
  const runtime = configureRuntime();
  if (!runtime.simd) {
    status("This browser lacks WebAssembly SIMD, which ONNX Runtime Web needs; the model cannot run here.");
    if (params.get("selftest")) $("selftest").textContent = JSON.stringify({ ok: false, error: "no WebAssembly SIMD" });
    return;
  }
  let manifest;
  try {
    manifest = JSON.parse(new TextDecoder().decode(await fetchBytes("model/manifest.json")));
    const facts = manifest.pipeline ?? {};
    $("model").textContent = `${facts.resolution} px, ${facts.preprocessor} control, scheduler ${facts.scheduler}, ` +
      `denoiser ${precisions(manifest).join(" / ")}; ${runtime.threads} WASM thread(s).`;
  } catch (err) {
    status(`Cannot read model/manifest.json: ${err.message}`);
    return;
  }
  try {
    if (params.get("selftest")) await selftest(manifest, runtime);
    else await interactive(manifest, runtime);
  } catch (err) {
    status(`Error: ${err.message}`);
  }
}

main();
