// The JS schedulers against fixtures written by the numpy ones (tests/web/scheduler_fixtures.py).
// Tolerances: tables and timesteps exact up to 1 float32 ulp (2e-7 relative); trajectory values within
// 1e-6 + 1e-5 relative of numpy's (JS rounds the same float32 operations; pow(x, 0.5) and sqrt may differ by an ulp).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { makeScheduler, schedulerKey } from "../src/schedulers.js";

const path = process.env.REFINE_WEB_FIXTURES
  ? `${process.env.REFINE_WEB_FIXTURES}/schedulers.json`
  : new URL("./fixtures/schedulers.json", import.meta.url);
const { cases } = JSON.parse(readFileSync(path, "utf8"));

function close(actual, expected, atol, rtol, what) {
  assert.equal(actual.length, expected.length, `${what}: length`);
  for (let i = 0; i < expected.length; i++) {
    const err = Math.abs(actual[i] - expected[i]);
    if (!(err <= atol + rtol * Math.abs(expected[i]))) {
      assert.fail(`${what}[${i}]: ${actual[i]} vs numpy ${expected[i]} (|diff| ${err})`);
    }
  }
}

test("fixtures hold every scheduler", () => {
  const keys = new Set(cases.map((c) => c.key));
  for (const name of ["DDIM", "LCM", "EulerDiscrete", "EulerAncestral"]) assert.ok(keys.has(name), name);
});

for (const c of cases) {
  test(`scheduler ${c.name} (${c.steps} steps) equals numpy`, () => {
    const s = makeScheduler(c.config);
    assert.equal(s.constructor.name, c.key);
    assert.equal(schedulerKey(c.config._class_name) !== null, true);
    close(s.alphasCumprod, c.alphas_cumprod, 0, 2.4e-7, "alphas_cumprod");
    s.setTimesteps(c.steps, c.first_timestep);
    close(s.timesteps, c.timesteps, 0, 0, "timesteps");
    if (c.sigmas) close(s.sigmas, c.sigmas, 0, 2.4e-7, "sigmas");
    close([s.initNoiseSigma], [c.init_noise_sigma], 0, 1e-12, "init_noise_sigma");
    assert.equal(s.stochastic, c.stochastic);
    c.trajectory.forEach((t, i) => {
      const sample = Float32Array.from(t.sample);
      close(s.scaleModelInput(sample, i), t.model_input, 1e-6, 1e-5, `step ${i} model_input`);
      let drawn = 0;
      const noise = (n) => {
        drawn += 1;
        assert.equal(n, t.noise.length);
        return Float32Array.from(t.noise);
      };
      const prev = s.step(Float32Array.from(t.model_output), i, sample, noise);
      close(prev, t.prev, 1e-6, 1e-5, `step ${i} prev`);
      const last = i === c.trajectory.length - 1;
      const expectDraw = c.key === "EulerAncestral" || (c.key === "LCM" && !last);
      assert.equal(drawn, expectDraw ? 1 : 0, `step ${i}: noise drawn`);
    });
  });
}

test("an unknown scheduler class falls back to DDIM, as the Python pipeline", () => {
  const s = makeScheduler({ _class_name: "PNDMScheduler" });
  assert.equal(s.constructor.name, "DDIM");
  assert.throws(() => makeScheduler({}, "nope"), /unknown scheduler/);
  assert.throws(() => makeScheduler({ beta_schedule: "sigmoid" }), /not supported/);
});
