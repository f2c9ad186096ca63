// The sampling loop of refine_control/runtime/pipeline.py's OnnxControlNetPipeline, in the browser with ONNX Runtime Web:
// the same graphs, inputs, scheduler arithmetic, classifier-free guidance (a batch of 2) or embedded guidance (one
// batch-1 pass reading the scale), VAE decode and post-processing, all driven by the manifest's pipeline facts.
// Every file is checked against the manifest's sha256 and size before it is used.
import { PromptEncoder } from "./tokenizer.js";
import { LCM, makeScheduler } from "./schedulers.js";
import { sha256 } from "./sha256.js";

const f = Math.fround;
export const GRAPHS = ["text_encoder", "denoiser", "vae_decoder"];
const DENOISER_INPUTS = ["sample", "timestep", "encoder_hidden_states", "controlnet_cond", "conditioning_scale"];

export class ModelError extends Error {}

/** As layout.graph_file: `denoiser.onnx`, `denoiser.int8.onnx`, ... */
export function graphFile(graph, precision = "fp32") {
  return `${graph}${precision === "fp32" ? "" : "." + precision}.onnx`;
}

/** The precisions whose denoiser the manifest lists (the browser runs ONNX files; FP16 is left out: slow on CPU). */
export function precisions(manifest) {
  return ["fp32", "int8"].filter((p) => graphFile("denoiser", p) in manifest.files);
}

/** Fetch a model file and check it against the manifest; `fetchBytes(name)` → ArrayBuffer or null (missing). */
export async function verifiedFile(manifest, name, fetchBytes) {
  const entry = manifest.files?.[name];
  if (!entry) throw new ModelError(`${name} is not listed in manifest.json; refusing to load it`);
  const bytes = await fetchBytes(name);
  if (bytes == null) throw new ModelError(`model file ${name} is missing`);
  if (bytes.byteLength !== entry.bytes) {
    const word = bytes.byteLength < entry.bytes ? "truncated" : "corrupted";
    throw new ModelError(`model file ${name} is ${word}: ${bytes.byteLength} bytes, the manifest says ${entry.bytes}`);
  }
  if ((await sha256(bytes)) !== entry.sha256) {
    throw new ModelError(`model file ${name} is corrupted: its sha256 does not match the manifest; refusing to run`);
  }
  return bytes;
}

/** A seeded standard-normal source (xorshift128+ and Box–Muller); not numpy's stream, so seeds give other images
 * than the Python runtime's (the self-test feeds numpy's own draws instead). */
export function gaussian(seed) {
  let s0 = (BigInt(seed) * 0x9e3779b97f4a7c15n + 1n) & 0xffffffffffffffffn;
  let s1 = (s0 ^ 0xda3e39cb94b95bdbn) & 0xffffffffffffffffn;
  const next = () => {
    let x = s0;
    const y = s1;
    s0 = y;
    x ^= (x << 23n) & 0xffffffffffffffffn;
    s1 = x ^ y ^ (x >> 17n) ^ (y >> 26n);
    return Number(((s1 + y) & 0xffffffffffffffffn) >> 11n) / 2 ** 53;
  };
  for (let i = 0; i < 8; i++) next();
  return (n) => {
    const out = new Float32Array(n);
    for (let i = 0; i < n; i += 2) {
      const u = 1 - next();
      const v = next();
      const r = Math.sqrt(-2 * Math.log(u));
      out[i] = r * Math.cos(2 * Math.PI * v);
      if (i + 1 < n) out[i + 1] = r * Math.sin(2 * Math.PI * v);
    }
    return out;
  };
}

export class WebPipeline {
  /**
   * ort: the onnxruntime-web module; manifest: the parsed manifest.json; fetchBytes(name) → ArrayBuffer | null.
   * options: precision ("fp32" | "int8"), executionProviders (["wasm"] or ["webgpu", "wasm"]), scheduler (a key
   * of SCHEDULERS, default the model's own), graphOptimizationLevel ("disabled" | "basic" | "extended" | "all"),
   * fixedDims ({graph: {symbolic dimension: size}}: ONNX Runtime's free-dimension overrides, so a session plans for
   * one shape and folds the shape arithmetic of the dynamic axes away), sessionOptions (more ORT session options),
   * onFile(name) called as each file is verified.
   */
  static async load(ort, manifest, fetchBytes, options = {}) {
    const p = new WebPipeline();
    await p.init(ort, manifest, fetchBytes, options);
    return p;
  }

  async init(ort, manifest, fetchBytes, { precision = "fp32", executionProviders = ["wasm"], scheduler = null,
    graphOptimizationLevel = "all", fixedDims = null, sessionOptions = {}, onFile } = {}) {
    if (manifest?.format !== "refine-control-onnx" || manifest.complete !== true || !manifest.files) {
      throw new ModelError("manifest.json is not a complete refine-export manifest");
    }
    const available = precisions(manifest);
    if (!available.includes(precision)) {
      throw new ModelError(`the model has no ${precision} denoiser; available: ${available.join(", ")}`);
    }
    this.ort = ort;
    this.manifest = manifest;
    this.precision = precision;
    const facts = manifest.pipeline ?? {};
    const need = ["latent_channels", "vae_scale_factor", "downsampling", "text_max_length", "cross_attention_dim",
      "resolution", "vae_scaling_factor", "pad_token_id"];
    for (const key of need) if (facts[key] == null) throw new ModelError(`manifest.json lacks pipeline fact ${key}`);
    this.facts = facts;
    this.guidanceEmbedded = facts.guidance_embedding_dim != null;
    this.resolution = facts.resolution;
    this.sizeMultiple = facts.size_multiple ?? facts.vae_scale_factor * facts.downsampling;
    // The model's recommendation (manifest pipeline.recommended_sampling); refine_control/runtime/sampling.py's
    // GUIDED_DEFAULT (20 steps at 3) for a dir exported before recommendations were written.
    const recommended = facts.recommended_sampling ?? { steps: 20, guidance_scale: 3, guidance_range: null };
    this.defaultSteps = recommended.steps;
    this.defaultGuidanceScale = recommended.guidance_scale;
    this.guidanceRange = recommended.guidance_range ?? null;
    this.firstTimestep = recommended.first_timestep ?? null; // LCM only: where sampling starts
    const text = (bytes) => new TextDecoder().decode(bytes);
    this.loadTimings = {}; // ms per phase: fetching + hashing each file, building the tokenizer, each session
    const timed = async (key, work) => {
      const start = performance.now();
      const result = await work();
      this.loadTimings[key] = performance.now() - start;
      return result;
    };
    const check = async (name) => {
      const bytes = await verifiedFile(manifest, name, fetchBytes);
      onFile?.(name);
      return bytes;
    };
    this.schedulerConfig = JSON.parse(text(await check("scheduler.json")));
    this.schedulerName = scheduler;
    makeScheduler(this.schedulerConfig, scheduler); // fail now on an unsupported config
    const tokenizerJson = await timed("tokenizer/tokenizer.json", () => check("tokenizer/tokenizer.json"));
    this.promptEncoder = await timed("tokenizer", async () =>
      new PromptEncoder(JSON.parse(text(tokenizerJson)), facts.text_max_length, facts.pad_token_id));
    this.files = {};
    this.sessions = {};
    this.graphMs = {}; // ms spent in each graph's session.run since the last generate() began
    this.fixedDims = fixedDims;
    for (const graph of GRAPHS) {
      const own = graphFile(graph, precision);
      const name = own in manifest.files ? own : graphFile(graph);
      const bytes = await timed(name, () => check(name));
      this.files[graph] = name;
      try {
        const options = { ...sessionOptions, executionProviders, graphOptimizationLevel };
        if (fixedDims?.[graph]) options.freeDimensionOverrides = fixedDims[graph];
        this.sessions[graph] = await timed(`session ${graph}`, () =>
          ort.InferenceSession.create(new Uint8Array(bytes), options));
      } catch (err) {
        throw new ModelError(`ONNX Runtime Web cannot load ${name}: ${String(err?.message ?? err).slice(0, 300)}`);
      }
      const expected = graph === "denoiser"
        ? [...DENOISER_INPUTS, ...(this.guidanceEmbedded ? ["guidance_scale"] : [])]
        : graph === "text_encoder" ? ["input_ids"] : ["latent_sample"];
      const names = this.sessions[graph].inputNames;
      if (names.join() !== expected.join()) {
        throw new ModelError(`${name} is not this model's ${graph} graph: its inputs are ${names.join(", ")}`);
      }
    }
  }

  /** Why `scale` cannot be used with this model (outside the range it was trained on), or null; as the Python
   * SamplingRecommendation.guidance_error. */
  guidanceError(scale) {
    if (!this.guidanceRange) return null;
    const [low, high] = this.guidanceRange;
    if (low <= scale && scale <= high) return null;
    return `guidance_scale must be between ${low} and ${high} for this model (the range it was trained on)`;
  }

  async run(graph, feeds) {
    const session = this.sessions[graph];
    const start = performance.now();
    const out = await session.run(feeds);
    this.graphMs[graph] = (this.graphMs[graph] ?? 0) + performance.now() - start;
    return out[session.outputNames[0]];
  }

  tensor(data, dims) {
    return new this.ort.Tensor(data instanceof BigInt64Array ? "int64" : "float32", data, dims);
  }

  latentShape(height, width) {
    const k = this.facts.vae_scale_factor;
    return [1, this.facts.latent_channels, height / k, width / k];
  }

  async encodePrompts(prompts) {
    const ids = this.promptEncoder.encode(prompts);
    return this.run("text_encoder", { input_ids: this.tensor(ids, [prompts.length, this.facts.text_max_length]) });
  }

  /** (1, C, h, w) latents → RGBA pixels (Uint8ClampedArray, H × W × 4), as the Python `decode`. */
  async decode(latents, height, width) {
    const shape = this.latentShape(height, width);
    const sf = f(this.facts.vae_scaling_factor);
    const shift = f(this.facts.vae_shift_factor ?? 0);
    const scaled = latents.map((v) => f(f(v / sf) + shift));
    const image = (await this.run("vae_decoder", { latent_sample: this.tensor(scaled, shape) })).data;
    const plane = height * width;
    const rgba = new Uint8ClampedArray(plane * 4);
    for (let i = 0; i < plane; i++) {
      for (let c = 0; c < 3; c++) {
        const v = Math.min(Math.max(f(f(image[c * plane + i] / 2) + 0.5), 0), 1);
        const x = f(v * 255);
        const r = Math.round(x);
        rgba[i * 4 + c] = Math.abs(x % 1) === 0.5 && r % 2 ? r - 1 : r; // numpy rounds half to even
      }
      rgba[i * 4 + 3] = 255;
    }
    return rgba;
  }

  /**
   * Generate one image. control: Float32Array (3 × H × W, the preprocessor's range, channel-first);
   * initialNoise: the unscaled (1, C, h, w) standard normal latents; noise(n): standard normal draws for stochastic
   * schedulers. Returns RGBA pixels. onStep(done, total) after every denoising step.
   */
  async generate({ prompt, negativePrompt = "", control, width, height, steps, guidanceScale, controlnetScale = 1,
    initialNoise, noise, onStep }) {
    width = width ?? this.resolution;
    height = height ?? this.resolution;
    for (const [name, v] of [["width", width], ["height", height]]) {
      if (!Number.isInteger(v) || v < this.sizeMultiple || v % this.sizeMultiple) {
        throw new ModelError(`${name} must be a positive multiple of ${this.sizeMultiple}, got ${v}`);
      }
    }
    steps = steps ?? this.defaultSteps;
    guidanceScale = guidanceScale ?? this.defaultGuidanceScale;
    if (!Number.isFinite(guidanceScale)) throw new ModelError(`guidance_scale must be a finite number, got ${guidanceScale}`);
    const error = this.guidanceError(guidanceScale);
    if (error) throw new ModelError(`${error}, got ${guidanceScale}`);
    if (control.length !== 3 * width * height) throw new ModelError("the control image has the wrong size");
    this.graphMs = {};
    const scheduler = makeScheduler(this.schedulerConfig, this.schedulerName);
    if (scheduler instanceof LCM) scheduler.setTimesteps(steps, this.firstTimestep);
    else scheduler.setTimesteps(steps);
    const guided = guidanceScale > 1 && !this.guidanceEmbedded;
    const prompts = guided ? [negativePrompt, prompt] : [prompt];
    const batch = prompts.length;
    // Inputs are rebuilt for every run from these arrays: with ORT's proxy worker a run takes its inputs' buffers.
    const text = await this.encodePrompts(prompts);
    const textData = text.data.slice();
    const shape = this.latentShape(height, width);
    const size = shape.reduce((a, b) => a * b, 1);
    if (initialNoise.length !== size) throw new ModelError("the initial latents have the wrong size");
    const sigma = f(scheduler.initNoiseSigma);
    let latents = initialNoise.map((v) => f(v * sigma));
    const controlBatch = new Float32Array(batch * control.length);
    for (let b = 0; b < batch; b++) controlBatch.set(control, b * control.length);

    const total = scheduler.timesteps.length;
    for (let i = 0; i < total; i++) {
      const repeated = new Float32Array(batch * size);
      for (let b = 0; b < batch; b++) repeated.set(latents, b * size);
      const feeds = {
        sample: this.tensor(scheduler.scaleModelInput(repeated, i), [batch, ...shape.slice(1)]),
        timestep: this.tensor(new Float32Array(batch).fill(scheduler.timesteps[i]), [batch]),
        encoder_hidden_states: this.tensor(textData.slice(), text.dims),
        controlnet_cond: this.tensor(controlBatch.slice(), [batch, 3, height, width]),
        conditioning_scale: this.tensor(Float32Array.of(controlnetScale), []),
      };
      if (this.guidanceEmbedded) feeds.guidance_scale = this.tensor(new Float32Array(batch).fill(guidanceScale), [batch]);
      let pred = (await this.run("denoiser", feeds)).data;
      if (guided) {
        const g = f(guidanceScale);
        const mixed = new Float32Array(size);
        for (let j = 0; j < size; j++) mixed[j] = f(pred[j] + f(g * f(pred[size + j] - pred[j])));
        pred = mixed;
      }
      latents = scheduler.step(pred, i, latents, noise);
      onStep?.(i + 1, total);
    }
    return this.decode(latents, height, width);
  }
}

/** PSNR in dB between two RGBA (or RGB with channels = 3) pixel arrays, over the RGB channels. */
export function psnr(a, b, channels = 4) {
  let sum = 0;
  let count = 0;
  for (let i = 0; i < a.length; i += channels) {
    for (let c = 0; c < 3; c++) {
      const d = a[i + c] - b[i + c];
      sum += d * d;
      count += 1;
    }
  }
  const mse = sum / count;
  return mse === 0 ? Infinity : 10 * Math.log10((255 * 255) / mse);
}
