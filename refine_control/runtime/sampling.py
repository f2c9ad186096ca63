"""The one recommendation of how a model samples: steps, scheduler, guidance scale, the guidance range it was
trained for and, for a few-step (LCM) student, the timestep sampling starts from.

Training writes it beside the student (`student/sampling.json`), the export copies it into `manifest.json`
(`pipeline.recommended_sampling`), and it is the default of every consumer: `refine-eval`, the export's calibration
and parity runs, `OnnxControlNetPipeline`, `python -m refine_control.runtime`, `refine-serve`, its page and
the browser runtime. A request may override the steps and the scale, the scale only within `guidance_range`.
"""

import logging
import math
from dataclasses import dataclass
from typing import Any

from refine_control.runtime.schedulers import LCM

logger = logging.getLogger(__name__)

SAMPLING_FILE = "sampling.json"  # in a student (pipeline) dir


@dataclass(frozen=True)
class SamplingRecommendation:
    steps: int
    guidance_scale: float
    scheduler: str | None = None  # a diffusers scheduler class name; None: the model's own
    # The scales a guidance-distilled student was trained to take as input; None: any scale (classifier-free
    # guidance as a batch of 2 extrapolates to any scale, with the usual loss of quality far from the trained one).
    guidance_range: tuple[float, float] | None = None
    # LCM only: sampling spaces its steps over the grid timesteps at or below this one (`lcm_start_timestep`);
    # None: the whole grid, from t = T - 1, as diffusers' LCMScheduler.
    first_timestep: int | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.steps <= 1000:
            raise ValueError(f"steps must be in 1..1000, got {self.steps}")
        if not (math.isfinite(self.guidance_scale) and self.guidance_scale >= 0):
            raise ValueError(f"guidance_scale must be a finite number >= 0, got {self.guidance_scale}")
        if self.guidance_range is not None:
            low, high = self.guidance_range
            if not (math.isfinite(low) and math.isfinite(high) and 0 <= low <= high):
                raise ValueError(f"guidance_range must be MIN <= MAX, got {self.guidance_range}")
            if self.guidance_error(self.guidance_scale):
                raise ValueError(
                    f"guidance_scale {self.guidance_scale} lies outside guidance_range {self.guidance_range}"
                )
        if self.first_timestep is not None:
            if self.scheduler != "LCMScheduler":
                raise ValueError(f"first_timestep applies to the LCMScheduler only, not to {self.scheduler}")
            if not 0 <= self.first_timestep < 1000:
                raise ValueError(f"first_timestep must be in 0..999, got {self.first_timestep}")

    def guidance_error(self, scale: float) -> str | None:
        """Why `scale` cannot be used with this model (outside its trained range), or None."""
        if self.guidance_range is None:
            return None
        low, high = self.guidance_range
        if low <= scale <= high:
            return None
        return f"guidance_scale must be between {low:g} and {high:g} for this model (the range it was trained on)"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"steps": self.steps, "guidance_scale": self.guidance_scale}
        if self.scheduler is not None:
            out["scheduler"] = self.scheduler
        out["guidance_range"] = None if self.guidance_range is None else list(self.guidance_range)
        if self.first_timestep is not None:
            out["first_timestep"] = self.first_timestep
        return out

    @classmethod
    def from_json(cls, data: Any) -> "SamplingRecommendation":
        """Parse a recommendation; ValueError (with the reason) when it is malformed."""
        if not isinstance(data, dict):
            raise ValueError("a sampling recommendation is a JSON object")
        try:
            span = data.get("guidance_range")
            scheduler = data.get("scheduler")
            first = data.get("first_timestep")
            return cls(
                steps=int(data["steps"]),
                guidance_scale=float(data["guidance_scale"]),
                scheduler=None if scheduler is None else str(scheduler),
                guidance_range=None if span is None else (float(span[0]), float(span[1])),
                first_timestep=None if first is None else int(first),
            )
        except (KeyError, TypeError, IndexError) as err:
            raise ValueError(f"malformed sampling recommendation ({err!r})") from err

    def timesteps(self, scheduler_config: dict[str, Any], steps: int) -> list[int] | None:
        """The timesteps of `steps` steps from `first_timestep` on this noise schedule (what a diffusers pipeline
        takes as `timesteps=`); None when the scheduler's own spacing applies."""
        if self.first_timestep is None:
            return None
        scheduler = LCM(scheduler_config)
        scheduler.set_timesteps(steps, self.first_timestep)
        return [int(t) for t in scheduler.timesteps]


# What a guided (20-step, classifier-free guidance) student or teacher is evaluated at on the built-in benchmark, and
# what a model dir without a recommendation (an export older than recommendations) falls back to, with a warning.
GUIDED_DEFAULT = SamplingRecommendation(steps=20, guidance_scale=3.0)


def recommendation_or_default(data: Any, where: str) -> SamplingRecommendation:
    """The recommendation in `data` (a dict or None); for None the documented default, with a warning naming `where`."""
    if data is None:
        logger.warning(
            "%s holds no sampling recommendation (made before recommendations were written); using the documented "
            "default of %d steps at guidance scale %g",
            where,
            GUIDED_DEFAULT.steps,
            GUIDED_DEFAULT.guidance_scale,
        )
        return GUIDED_DEFAULT
    return SamplingRecommendation.from_json(data)
