// Noise schedulers, step for step equal to the numpy ones in refine_control/runtime/schedulers.py (which equal diffusers').
//
// numpy computes in float32 where an array (or a float32 scalar) is involved and in float64 for Python floats;
// `f` (Math.fround) marks every place numpy rounds to float32, so the results agree to about one float32 ulp
// (web/test/schedulers.test.mjs compares them with fixtures written by the numpy schedulers).
//
//   const s = makeScheduler(config);          // config: the model's scheduler.json
//   s.setTimesteps(steps);
//   latents = scale(noise, s.initNoiseSigma);
//   for (let i = 0; i < s.timesteps.length; i++) {
//     const modelIn = s.scaleModelInput(latents, i);
//     latents = s.step(model(modelIn, s.timesteps[i]), i, latents, () => gaussianNoise(latents.length));
//   }

const f = Math.fround;
export const PREDICTION_TYPES = ["epsilon", "v_prediction", "sample"];

export class SchedulerError extends Error {}

function numpyLinspace(start, stop, num, endpoint = true) {
  const div = endpoint ? num - 1 : num;
  const step = (stop - start) / div;
  const out = new Float64Array(num);
  for (let i = 0; i < num; i++) out[i] = i * step + start;
  if (endpoint && num > 1) out[num - 1] = stop;
  return out;
}

function numpyArange(start, stop, step) {
  // numpy fills a[i] = start + i * delta with delta = (start + step) - start
  const n = Math.max(0, Math.ceil((stop - start) / step));
  const out = new Float64Array(n);
  const delta = start + step - start;
  for (let i = 0; i < n; i++) out[i] = start + i * delta;
  return out;
}

/** Round half to even, as numpy's round. */
export function roundHalfEven(x) {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

function betasForAlphaBar(n, maxBeta = 0.999) {
  const alphaBar = (t) => Math.cos(((t + 0.008) / 1.008) * Math.PI / 2) ** 2;
  const betas = new Float32Array(n);
  for (let i = 0; i < n; i++) betas[i] = Math.min(1 - alphaBar((i + 1) / n) / alphaBar(i / n), maxBeta);
  return betas;
}

function cumprod32(values) {
  const out = new Float32Array(values.length);
  let acc = 1;
  for (let i = 0; i < values.length; i++) out[i] = acc = i === 0 ? f(values[0]) : f(acc * values[i]);
  return out;
}

function rescaleZeroTerminalSnr(betas) {
  const sqrtBar = cumprod32(betas.map((b) => f(1 - b))).map((a) => f(Math.sqrt(a)));
  const first = sqrtBar[0];
  const last = sqrtBar[sqrtBar.length - 1];
  const k = f(first / f(first - last));
  const bar = sqrtBar.map((a) => {
    const v = f(f(a - last) * k);
    return f(v * v);
  });
  const out = new Float32Array(bar.length);
  for (let i = 0; i < bar.length; i++) out[i] = f(1 - (i === 0 ? bar[0] : f(bar[i] / bar[i - 1])));
  return out;
}

export function alphasCumprod(config) {
  const n = Number(config.num_train_timesteps ?? 1000);
  const start = Number(config.beta_start ?? 0.0001);
  const end = Number(config.beta_end ?? 0.02);
  const schedule = config.beta_schedule ?? "linear";
  let betas;
  if (config.trained_betas != null) betas = Float32Array.from(config.trained_betas);
  else if (schedule === "linear") betas = Float32Array.from(numpyLinspace(start, end, n));
  else if (schedule === "scaled_linear") {
    betas = Float32Array.from(numpyLinspace(Math.sqrt(start), Math.sqrt(end), n)).map((b) => f(b * b));
  } else if (schedule === "squaredcos_cap_v2") betas = betasForAlphaBar(n);
  else throw new SchedulerError(`scheduler beta_schedule ${schedule} is not supported`);
  if (config.rescale_betas_zero_snr) betas = rescaleZeroTerminalSnr(betas);
  return cumprod32(betas.map((b) => f(1 - b)));
}

function spacedTimesteps(config, steps) {
  const n = Number(config.num_train_timesteps ?? 1000);
  const spacing = config.timestep_spacing ?? "leading";
  if (spacing === "linspace") return numpyLinspace(0, n - 1, steps).reverse();
  if (spacing === "leading") {
    const ratio = Math.floor(n / steps);
    const offset = Number(config.steps_offset ?? 0);
    const out = new Float64Array(steps);
    for (let i = 0; i < steps; i++) out[steps - 1 - i] = roundHalfEven(i * ratio) + offset;
    return out;
  }
  if (spacing === "trailing") return numpyArange(n, 0, -n / steps).map((t) => roundHalfEven(t) - 1);
  throw new SchedulerError(`scheduler timestep_spacing ${spacing} is not supported; use leading, trailing or linspace`);
}

class Scheduler {
  constructor(config) {
    this.config = { ...config };
    this.predictionType = this.config.prediction_type ?? "epsilon";
    if (!PREDICTION_TYPES.includes(this.predictionType)) {
      throw new SchedulerError(`scheduler prediction_type ${this.predictionType} is not supported`);
    }
    if (this.config.thresholding) throw new SchedulerError("dynamic thresholding is not supported");
    this.numTrainTimesteps = Number(this.config.num_train_timesteps ?? 1000);
    this.alphasCumprod = alphasCumprod(this.config);
    this.timesteps = new Float32Array(0);
    this.initNoiseSigma = 1;
  }

  get stochastic() {
    return false;
  }

  setTimesteps(steps) {
    if (!(Number.isInteger(steps) && steps >= 1 && steps <= this.numTrainTimesteps)) {
      throw new SchedulerError(`steps must be in 1..${this.numTrainTimesteps}, got ${steps}`);
    }
    this.numInferenceSteps = steps;
    this.timesteps = Float32Array.from(spacedTimesteps(this.config, steps));
  }

  scaleModelInput(sample, index) {
    return sample;
  }

  /** x0 from the model output, in numpy's float32 arithmetic (alphaProd is a Python float there). */
  originalSample(out, sample, alphaProd) {
    const res = new Float32Array(sample.length);
    const sb = f(Math.sqrt(1 - alphaProd));
    const sa = f(Math.sqrt(alphaProd));
    for (let j = 0; j < res.length; j++) {
      if (this.predictionType === "epsilon") res[j] = f(f(sample[j] - f(sb * out[j])) / sa);
      else if (this.predictionType === "v_prediction") res[j] = f(f(sa * sample[j]) - f(sb * out[j]));
      else res[j] = out[j];
    }
    return res;
  }

  clip(x) {
    if (!this.config.clip_sample) return x;
    const limit = f(Number(this.config.clip_sample_range ?? 1));
    return x.map((v) => Math.min(Math.max(v, -limit), limit));
  }
}

export class DDIM extends Scheduler {
  static className = "DDIMScheduler";

  constructor(config) {
    super(config);
    this.finalAlphaCumprod = (this.config.set_alpha_to_one ?? true) ? 1 : this.alphasCumprod[0];
  }

  setTimesteps(steps) {
    super.setTimesteps(steps);
    this.timesteps = this.timesteps.map((t) => roundHalfEven(t));
  }

  step(out, index, sample) {
    const t = Math.trunc(this.timesteps[index]);
    const prevT = t - Math.floor(this.numTrainTimesteps / this.numInferenceSteps);
    const alphaProd = this.alphasCumprod[t];
    const alphaPrev = prevT >= 0 ? this.alphasCumprod[prevT] : this.finalAlphaCumprod;
    let original = this.originalSample(out, sample, alphaProd);
    const sa = f(Math.sqrt(alphaProd));
    const sb = f(Math.sqrt(1 - alphaProd));
    const epsilon = new Float32Array(sample.length);
    for (let j = 0; j < sample.length; j++) {
      if (this.predictionType === "epsilon") epsilon[j] = out[j];
      else if (this.predictionType === "v_prediction") epsilon[j] = f(f(sa * out[j]) + f(sb * sample[j]));
      else epsilon[j] = f(f(sample[j] - f(sa * original[j])) / sb);
    }
    original = this.clip(original);
    const pa = f(Math.sqrt(alphaPrev));
    const pb = f(Math.sqrt(1 - alphaPrev));
    const prev = new Float32Array(sample.length);
    for (let j = 0; j < sample.length; j++) prev[j] = f(f(pa * original[j]) + f(pb * epsilon[j]));
    return prev;
  }
}

function interp(x, fp) {
  // numpy.interp(x, arange(len(fp)), fp) in float64
  const n = fp.length;
  if (x <= 0) return fp[0];
  if (x >= n - 1) return fp[n - 1];
  const j = Math.floor(x);
  const slope = fp[j + 1] - fp[j];
  return slope * (x - j) + fp[j];
}

export class EulerDiscrete extends Scheduler {
  static className = "EulerDiscreteScheduler";

  constructor(config) {
    super({ timestep_spacing: "linspace", ...config });
    for (const key of ["use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"]) {
      if (this.config[key]) throw new SchedulerError(`${key} is not supported`);
    }
    if ((this.config.interpolation_type ?? "linear") !== "linear") {
      throw new SchedulerError("only interpolation_type 'linear' is supported");
    }
    if ((this.config.timestep_type ?? "discrete") !== "discrete") {
      throw new SchedulerError("only timestep_type 'discrete' is supported");
    }
    if (this.config.rescale_betas_zero_snr) this.alphasCumprod[this.alphasCumprod.length - 1] = 2 ** -24;
    this.trainSigmas = this.alphasCumprod.map((a) => f(Math.sqrt(f(f(1 - a) / a))));
    const sigmas = new Float32Array(this.trainSigmas.length + 1);
    sigmas.set(this.trainSigmas.slice().reverse());
    this.sigmas = sigmas;
    this.updateInitSigma();
  }

  updateInitSigma() {
    let max = -Infinity;
    for (const s of this.sigmas) max = Math.max(max, s);
    const spacing = this.config.timestep_spacing;
    this.initNoiseSigma = spacing === "linspace" || spacing === "trailing" ? max : Math.sqrt(max ** 2 + 1);
  }

  setTimesteps(steps) {
    super.setTimesteps(steps);
    const final = this.config.final_sigmas_type ?? "zero";
    let last;
    if (final === "sigma_min") last = this.trainSigmas[0];
    else if (final === "zero") last = 0;
    else throw new SchedulerError(`final_sigmas_type must be zero or sigma_min, got ${final}`);
    const sigmas = new Float32Array(steps + 1);
    for (let i = 0; i < steps; i++) sigmas[i] = interp(this.timesteps[i], this.trainSigmas);
    sigmas[steps] = last;
    this.sigmas = sigmas;
    this.updateInitSigma();
  }

  scaleModelInput(sample, index) {
    const sigma = this.sigmas[index];
    const d = f(Math.sqrt(f(f(sigma * sigma) + 1)));
    return sample.map((v) => f(v / d));
  }

  denoised(out, sample, sigma) {
    const res = new Float32Array(sample.length);
    const s2 = f(f(sigma * sigma) + 1);
    const c = f(-sigma / f(Math.sqrt(s2)));
    for (let j = 0; j < res.length; j++) {
      if (this.predictionType === "epsilon") res[j] = f(sample[j] - f(sigma * out[j]));
      else if (this.predictionType === "v_prediction") res[j] = f(f(out[j] * c) + f(sample[j] / s2));
      else res[j] = out[j];
    }
    return res;
  }

  derivative(out, sample, sigma) {
    const den = this.denoised(out, sample, sigma);
    return sample.map((v, j) => f(f(v - den[j]) / sigma));
  }

  step(out, index, sample) {
    const sigma = this.sigmas[index];
    const dt = f(this.sigmas[index + 1] - sigma);
    const d = this.derivative(out, sample, sigma);
    return sample.map((v, j) => f(v + f(d[j] * dt)));
  }
}

export class EulerAncestral extends EulerDiscrete {
  static className = "EulerAncestralDiscreteScheduler";

  get stochastic() {
    return true;
  }

  step(out, index, sample, noise) {
    const from = this.sigmas[index];
    const to = this.sigmas[index + 1];
    const from2 = f(from * from);
    const to2 = f(to * to);
    const up = f(Math.sqrt(f(f(to2 * f(from2 - to2)) / from2)));
    const down = f(Math.sqrt(f(to2 - f(up * up))));
    const d = this.derivative(out, sample, from);
    const dt = f(down - from);
    const fresh = noise(sample.length);
    return sample.map((v, j) => f(f(v + f(d[j] * dt)) + f(fresh[j] * up)));
  }
}

export class LCM extends Scheduler {
  static className = "LCMScheduler";

  constructor(config) {
    super(config);
    this.finalAlphaCumprod = (this.config.set_alpha_to_one ?? true) ? 1 : this.alphasCumprod[0];
    this.originalSteps = Number(this.config.original_inference_steps ?? 50);
    this.timestepScaling = Number(this.config.timestep_scaling ?? 10);
  }

  get stochastic() {
    return true;
  }

  // LCM's spacing over its grid, or over the grid's part at or below firstTimestep (a few-step model's
  // recommended start, refine_control/runtime/schedulers.py lcm_start_timestep).
  setTimesteps(steps, firstTimestep = null) {
    const k = Math.floor(this.numTrainTimesteps / this.originalSteps);
    const origin = [];
    for (let i = this.originalSteps; i >= 1; i--) {
      if (firstTimestep == null || i * k - 1 <= firstTimestep) origin.push(i * k - 1);
    }
    if (!(Number.isInteger(steps) && steps >= 1 && steps <= origin.length)) {
      throw new SchedulerError(`steps must be in 1..${origin.length} for this model's LCM schedule, got ${steps}`);
    }
    this.numInferenceSteps = steps;
    const idx = numpyLinspace(0, origin.length, steps, false).map(Math.floor);
    this.timesteps = Float32Array.from(idx, (i) => origin[i]);
  }

  step(out, index, sample, noise) {
    const t = Math.trunc(this.timesteps[index]);
    const prevT = index + 1 < this.timesteps.length ? Math.trunc(this.timesteps[index + 1]) : t;
    const alphaProd = this.alphasCumprod[t];
    const alphaPrev = prevT >= 0 ? this.alphasCumprod[prevT] : this.finalAlphaCumprod;
    const scaled = t * this.timestepScaling;
    const cSkip = f(0.25 / (scaled ** 2 + 0.25));
    const cOut = f(scaled / Math.sqrt(scaled ** 2 + 0.25));
    const original = this.clip(this.originalSample(out, sample, alphaProd));
    const denoised = original.map((v, j) => f(f(cOut * v) + f(cSkip * sample[j])));
    if (index === this.numInferenceSteps - 1) return denoised;
    const fresh = noise(sample.length);
    const pa = f(Math.sqrt(alphaPrev));
    const pb = f(Math.sqrt(1 - alphaPrev));
    return denoised.map((v, j) => f(f(pa * v) + f(pb * fresh[j])));
  }
}

export const SCHEDULERS = { ddim: DDIM, euler: EulerDiscrete, euler_ancestral: EulerAncestral, lcm: LCM };

/** Our key for a diffusers scheduler class name, or null when there is no JS version (as scheduler_key). */
export function schedulerKey(className) {
  for (const [key, cls] of Object.entries(SCHEDULERS)) if (cls.className === className) return key;
  return null;
}

/** The scheduler `name` (a key of SCHEDULERS), or the config's own class; DDIM when that has no JS version,
 * as OnnxControlNetPipeline picks it. */
export function makeScheduler(config, name = null) {
  const key = name ?? schedulerKey(String(config._class_name)) ?? "ddim";
  const cls = SCHEDULERS[key];
  if (!cls) throw new SchedulerError(`unknown scheduler ${key}; choose one of: ${Object.keys(SCHEDULERS).join(", ")}`);
  return new cls(config);
}
