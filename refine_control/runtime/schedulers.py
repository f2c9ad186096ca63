"""Noise schedulers in numpy, step for step equal to diffusers' (tests compare them on the same inputs).

Each scheduler is built from a diffusers `scheduler_config.json` dict (`from_config`), then used as:

    scheduler.set_timesteps(steps)
    latents = rng.standard_normal(shape) * scheduler.init_noise_sigma
    for i, t in enumerate(scheduler.timesteps):
        model_in = scheduler.scale_model_input(latents, i)
        latents = scheduler.step(model(model_in, t), i, latents, rng=rng)

Steps are addressed by their index `i` (diffusers looks the index up from the timestep value). Stochastic
schedulers (Euler ancestral, LCM) draw their noise from `rng`, or take it explicitly as `noise=`.
"""

import math
from typing import Any, ClassVar

import numpy as np

from refine_control.errors import ConfigError

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def _betas_for_alpha_bar(n: int, max_beta: float = 0.999) -> np.ndarray:
    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return np.array([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)], np.float32)


def _rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """arXiv 2305.08891, Algorithm 1 (as diffusers' `rescale_zero_terminal_snr`)."""
    alphas_bar_sqrt = np.sqrt(np.cumprod(1.0 - betas, dtype=np.float32))
    first, last = alphas_bar_sqrt[0].copy(), alphas_bar_sqrt[-1].copy()
    alphas_bar_sqrt = (alphas_bar_sqrt - last) * (first / (first - last))
    alphas_bar = alphas_bar_sqrt**2
    alphas = np.concatenate([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
    return (1.0 - alphas).astype(np.float32)


def _alphas_cumprod(config: dict[str, Any]) -> np.ndarray:
    n = int(config.get("num_train_timesteps", 1000))
    start, end = float(config.get("beta_start", 0.0001)), float(config.get("beta_end", 0.02))
    schedule = config.get("beta_schedule", "linear")
    if config.get("trained_betas") is not None:
        betas = np.asarray(config["trained_betas"], np.float32)
    elif schedule == "linear":
        betas = np.linspace(start, end, n, dtype=np.float64).astype(np.float32)
    elif schedule == "scaled_linear":
        betas = (np.linspace(start**0.5, end**0.5, n, dtype=np.float64).astype(np.float32)) ** 2
    elif schedule == "squaredcos_cap_v2":
        betas = _betas_for_alpha_bar(n)
    else:
        raise ConfigError(f"scheduler beta_schedule {schedule!r} is not supported by the numpy schedulers")
    if config.get("rescale_betas_zero_snr", False):
        betas = _rescale_zero_terminal_snr(betas)
    return np.cumprod(1.0 - betas, dtype=np.float32)


def _spaced_timesteps(config: dict[str, Any], steps: int) -> np.ndarray:
    """Timesteps (descending, float64) for `timestep_spacing` leading / trailing / linspace, as diffusers."""
    n = int(config.get("num_train_timesteps", 1000))
    spacing = config.get("timestep_spacing", "leading")
    if spacing == "linspace":
        return np.linspace(0, n - 1, steps)[::-1].copy()
    if spacing == "leading":
        ratio = n // steps
        return (np.arange(0, steps) * ratio).round()[::-1].astype(np.float64) + int(config.get("steps_offset", 0))
    if spacing == "trailing":
        return np.round(np.arange(n, 0, -n / steps)).astype(np.float64) - 1
    raise ConfigError(f"scheduler timestep_spacing {spacing!r} is not supported; use leading, trailing or linspace")


class NumpyScheduler:
    """Shared state: the training noise schedule and the inference timesteps."""

    name: ClassVar[str]
    stochastic: ClassVar[bool] = False

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = dict(config)
        self.prediction_type = self.config.get("prediction_type", "epsilon")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ConfigError(f"scheduler prediction_type {self.prediction_type!r} is not supported")
        if self.config.get("thresholding", False):
            raise ConfigError(f"{self.name}: dynamic thresholding is not supported by the numpy schedulers")
        self.num_train_timesteps = int(self.config.get("num_train_timesteps", 1000))
        self.alphas_cumprod = _alphas_cumprod(self.config)
        self.timesteps = np.zeros(0, np.float32)
        self.init_noise_sigma = 1.0

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "NumpyScheduler":
        return cls(config)

    def set_timesteps(self, steps: int) -> None:
        if not 1 <= steps <= self.num_train_timesteps:
            raise ConfigError(f"`steps` must be in 1..{self.num_train_timesteps}, got {steps}")
        self.num_inference_steps = steps
        self.timesteps = _spaced_timesteps(self.config, steps).astype(np.float32)

    def scale_model_input(self, sample: np.ndarray, index: int) -> np.ndarray:
        return sample

    def step(
        self,
        model_output: np.ndarray,
        index: int,
        sample: np.ndarray,
        rng: np.random.Generator | None = None,
        noise: np.ndarray | None = None,
    ) -> np.ndarray:
        raise NotImplementedError

    def _original_sample(self, model_output: np.ndarray, sample: np.ndarray, alpha_prod: float) -> np.ndarray:
        beta_prod = 1.0 - alpha_prod
        if self.prediction_type == "epsilon":
            return (sample - beta_prod**0.5 * model_output) / alpha_prod**0.5
        if self.prediction_type == "v_prediction":
            return alpha_prod**0.5 * sample - beta_prod**0.5 * model_output
        return model_output

    def _clip(self, x: np.ndarray) -> np.ndarray:
        if self.config.get("clip_sample", False):
            limit = float(self.config.get("clip_sample_range", 1.0))
            return np.clip(x, -limit, limit)
        return x

    @staticmethod
    def _noise(shape: tuple[int, ...], rng: np.random.Generator | None, noise: np.ndarray | None) -> np.ndarray:
        if noise is not None:
            return noise.astype(np.float32, copy=False)
        if rng is None:
            raise ValueError("a stochastic scheduler step needs `rng` or `noise`")
        return rng.standard_normal(shape, dtype=np.float32)


class DDIM(NumpyScheduler):
    """diffusers `DDIMScheduler` with eta = 0 (deterministic)."""

    name = "DDIMScheduler"

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        set_alpha_to_one = self.config.get("set_alpha_to_one", True)
        self.final_alpha_cumprod = 1.0 if set_alpha_to_one else float(self.alphas_cumprod[0])

    def set_timesteps(self, steps: int) -> None:
        super().set_timesteps(steps)
        self.timesteps = self.timesteps.round().astype(np.int64).astype(np.float32)

    def step(self, model_output, index, sample, rng=None, noise=None):
        t = int(self.timesteps[index])
        prev_t = t - self.num_train_timesteps // self.num_inference_steps
        alpha_prod = float(self.alphas_cumprod[t])
        alpha_prod_prev = float(self.alphas_cumprod[prev_t]) if prev_t >= 0 else self.final_alpha_cumprod
        original = self._original_sample(model_output, sample, alpha_prod)
        if self.prediction_type == "epsilon":
            epsilon = model_output
        elif self.prediction_type == "v_prediction":
            epsilon = alpha_prod**0.5 * model_output + (1.0 - alpha_prod) ** 0.5 * sample
        else:
            epsilon = (sample - alpha_prod**0.5 * original) / (1.0 - alpha_prod) ** 0.5
        original = self._clip(original)
        prev = alpha_prod_prev**0.5 * original + (1.0 - alpha_prod_prev) ** 0.5 * epsilon
        return prev.astype(np.float32, copy=False)


class EulerDiscrete(NumpyScheduler):
    """diffusers `EulerDiscreteScheduler` (linear sigma interpolation, no churn)."""

    name = "EulerDiscreteScheduler"

    def __init__(self, config: dict[str, Any]) -> None:
        config = {"timestep_spacing": "linspace", **config}
        super().__init__(config)
        for key in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"):
            if self.config.get(key):
                raise ConfigError(f"{self.name}: `{key}` is not supported by the numpy schedulers")
        if self.config.get("interpolation_type", "linear") != "linear":
            raise ConfigError(f"{self.name}: only interpolation_type 'linear' is supported")
        if self.config.get("timestep_type", "discrete") != "discrete":
            raise ConfigError(f"{self.name}: only timestep_type 'discrete' is supported")
        if self.config.get("rescale_betas_zero_snr", False):
            self.alphas_cumprod[-1] = 2.0**-24
        self.train_sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5  # float32, as diffusers
        self.sigmas = np.append(self.train_sigmas[::-1], 0.0).astype(np.float32)
        self._update_init_sigma()

    def _update_init_sigma(self) -> None:
        max_sigma = float(self.sigmas.max())
        spacing = self.config.get("timestep_spacing")
        self.init_noise_sigma = max_sigma if spacing in ("linspace", "trailing") else (max_sigma**2 + 1) ** 0.5

    def set_timesteps(self, steps: int) -> None:
        super().set_timesteps(steps)
        sigmas = np.interp(self.timesteps.astype(np.float64), np.arange(len(self.train_sigmas)), self.train_sigmas)
        final = self.config.get("final_sigmas_type", "zero")
        if final == "sigma_min":
            last = float(self.train_sigmas[0])
        elif final == "zero":
            last = 0.0
        else:
            raise ConfigError(f"{self.name}: final_sigmas_type must be zero or sigma_min, got {final!r}")
        self.sigmas = np.concatenate([sigmas, [last]]).astype(np.float32)
        self._update_init_sigma()

    def scale_model_input(self, sample: np.ndarray, index: int) -> np.ndarray:
        sigma = self.sigmas[index]
        return (sample / ((sigma**2 + 1) ** 0.5)).astype(np.float32, copy=False)

    def _denoised(self, model_output: np.ndarray, sample: np.ndarray, sigma: np.float32) -> np.ndarray:
        if self.prediction_type == "epsilon":
            return sample - sigma * model_output
        if self.prediction_type == "v_prediction":
            return model_output * (-sigma / (sigma**2 + 1) ** 0.5) + sample / (sigma**2 + 1)
        return model_output

    def step(self, model_output, index, sample, rng=None, noise=None):
        sigma = self.sigmas[index]
        derivative = (sample - self._denoised(model_output, sample, sigma)) / sigma
        return (sample + derivative * (self.sigmas[index + 1] - sigma)).astype(np.float32, copy=False)


class EulerAncestral(EulerDiscrete):
    """diffusers `EulerAncestralDiscreteScheduler`."""

    name = "EulerAncestralDiscreteScheduler"
    stochastic = True

    def step(self, model_output, index, sample, rng=None, noise=None):
        sigma_from, sigma_to = self.sigmas[index], self.sigmas[index + 1]
        sigma_up = (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
        sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
        derivative = (sample - self._denoised(model_output, sample, sigma_from)) / sigma_from
        prev = sample + derivative * (sigma_down - sigma_from)
        prev = prev + self._noise(sample.shape, rng, noise) * sigma_up
        return prev.astype(np.float32, copy=False)


class LCM(NumpyScheduler):
    """diffusers `LCMScheduler` (latent consistency models; noise is re-injected between steps)."""

    name = "LCMScheduler"
    stochastic = True

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.final_alpha_cumprod = 1.0 if self.config.get("set_alpha_to_one", True) else float(self.alphas_cumprod[0])
        self.original_steps = int(self.config.get("original_inference_steps", 50))
        self.timestep_scaling = float(self.config.get("timestep_scaling", 10.0))

    def grid(self, first_timestep: int | None = None) -> np.ndarray:
        """The timesteps the student was distilled on (diffusers' `lcm_origin_timesteps`), descending; those at or
        below `first_timestep` when given (a model recommends one: `lcm_start_timestep`)."""
        k = self.num_train_timesteps // self.original_steps
        grid = (np.arange(1, self.original_steps + 1) * k - 1)[::-1].copy()
        return grid if first_timestep is None else grid[grid <= first_timestep]

    def set_timesteps(self, steps: int, first_timestep: int | None = None) -> None:
        """LCM's spacing (every len/steps-th timestep) over `grid(first_timestep)`."""
        origin = self.grid(first_timestep)
        if not 1 <= steps <= len(origin):
            raise ConfigError(f"`steps` must be in 1..{len(origin)} for this model's LCM schedule, got {steps}")
        self.num_inference_steps = steps
        indices = np.floor(np.linspace(0, len(origin), num=steps, endpoint=False)).astype(np.int64)
        self.timesteps = origin[indices].astype(np.float32)

    def step(self, model_output, index, sample, rng=None, noise=None):
        t = int(self.timesteps[index])
        prev_t = int(self.timesteps[index + 1]) if index + 1 < len(self.timesteps) else t
        alpha_prod = float(self.alphas_cumprod[t])
        alpha_prod_prev = float(self.alphas_cumprod[prev_t]) if prev_t >= 0 else self.final_alpha_cumprod
        scaled = t * self.timestep_scaling
        c_skip = 0.25 / (scaled**2 + 0.25)
        c_out = scaled / (scaled**2 + 0.25) ** 0.5
        original = self._clip(self._original_sample(model_output, sample, alpha_prod))
        denoised = c_out * original + c_skip * sample
        if index == self.num_inference_steps - 1:
            return denoised.astype(np.float32, copy=False)
        fresh = self._noise(sample.shape, rng, noise)
        return (alpha_prod_prev**0.5 * denoised + (1.0 - alpha_prod_prev) ** 0.5 * fresh).astype(np.float32)


# A few-step student starts sampling at the highest grid timestep whose signal coefficient √ᾱ_t is at least this.
# Sampling from t = 999 of the built-in teacher's linear schedule (√ᾱ = 0.006: the latents are pure noise to the
# student) collapses at 1-2 steps; on validation shapes, starting at 759 (√ᾱ = 0.054) kept the teacher's strict edge
# F1 at 2 steps (results/few_step/timesteps-val.json). The threshold is set to reproduce that start; it is not a
# published value. On SD1.5's scaled-linear schedule √ᾱ_999 = 0.068, so it keeps LCM's own start at 999.
MIN_START_SIGNAL = 0.05


def lcm_start_timestep(config: dict[str, Any], min_signal: float = MIN_START_SIGNAL) -> int:
    """The highest timestep of the LCM grid of this noise schedule with √ᾱ_t >= `min_signal` (the lowest grid
    timestep when none reaches it)."""
    lcm = LCM(config)
    grid = lcm.grid()
    strong = grid[np.sqrt(lcm.alphas_cumprod[grid]) >= min_signal]
    return int(strong[0] if len(strong) else grid[-1])


SCHEDULERS: dict[str, type[NumpyScheduler]] = {
    "ddim": DDIM,
    "euler": EulerDiscrete,
    "euler_ancestral": EulerAncestral,
    "lcm": LCM,
}
_BY_CLASS = {cls.name: key for key, cls in SCHEDULERS.items()}


def scheduler_key(class_name: str) -> str | None:
    """Our key for a diffusers scheduler class name, or None when there is no numpy version of it."""
    return _BY_CLASS.get(class_name)


def make_scheduler(config: dict[str, Any], name: str | None = None) -> NumpyScheduler:
    """Build the numpy scheduler `name` (a key of SCHEDULERS) from a diffusers scheduler config.

    With `name=None` the config's own class is used; `ConfigError` if it has no numpy version.
    """
    if name is None:
        class_name = str(config.get("_class_name"))
        name = scheduler_key(class_name)
        if name is None:
            raise ConfigError(
                f"the model's scheduler {class_name} has no numpy implementation",
                hint=f"choose one of: {', '.join(SCHEDULERS)} (built from the same noise schedule)",
            )
    if name not in SCHEDULERS:
        raise ConfigError(f"unknown scheduler {name!r}; choose one of: {', '.join(SCHEDULERS)}")
    return SCHEDULERS[name].from_config(config)
