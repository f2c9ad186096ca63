// Pure parts of the sampling loop's module: the manifest checks of model files, the guidance range, the seeded
// normal draws and PSNR. (The loop itself runs on real graphs in tests/web's headless-Chromium tests.)
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { test } from "node:test";
import { ModelError, WebPipeline, gaussian, graphFile, precisions, psnr, verifiedFile } from "../src/pipeline.js";

const bytes = new TextEncoder().encode("graph bytes");
const entry = { sha256: createHash("sha256").update(bytes).digest("hex"), bytes: bytes.length };
const manifest = { files: { "denoiser.onnx": entry, "denoiser.int8.onnx": entry, "denoiser.fp16.onnx": entry } };

test("a model file is used only when its size and sha256 equal the manifest's", async () => {
  assert.deepEqual(new Uint8Array(await verifiedFile(manifest, "denoiser.onnx", async () => bytes.buffer)), bytes);
  const refuse = (name, data, pattern) =>
    assert.rejects(verifiedFile(manifest, name, async () => data), (err) => err instanceof ModelError && pattern.test(err.message));
  await refuse("denoiser.onnx", null, /^model file denoiser\.onnx is missing$/);
  await refuse("denoiser.onnx", bytes.slice(1).buffer, /denoiser\.onnx is truncated/);
  const altered = bytes.slice();
  altered[3] ^= 1;
  await refuse("denoiser.onnx", altered.buffer, /denoiser\.onnx is corrupted: its sha256 does not match/);
  await refuse("vae_decoder.onnx", bytes.buffer, /not listed in manifest\.json/);
});

test("file names and precisions follow serve/runtime/layout.py", () => {
  assert.equal(graphFile("denoiser"), "denoiser.onnx");
  assert.equal(graphFile("denoiser", "int8"), "denoiser.int8.onnx");
  assert.deepEqual(precisions(manifest), ["fp32", "int8"]); // FP16 is not offered in the browser
});

test("guidance outside the trained range is refused, as the Python runtime", () => {
  const check = (range, scale) => WebPipeline.prototype.guidanceError.call({ guidanceRange: range }, scale);
  assert.equal(check(null, 30), null);
  assert.equal(check([1, 8], 3), null);
  assert.match(check([1, 8], 9), /guidance_scale must be between 1 and 8 for this model/);
});

test("seeded normal draws: reproducible, about N(0, 1)", () => {
  const a = gaussian(3)(100001);
  assert.deepEqual(a.slice(0, 10), gaussian(3)(10));
  assert.notDeepEqual(a.slice(0, 10), gaussian(4)(10));
  const mean = a.reduce((s, v) => s + v, 0) / a.length;
  const variance = a.reduce((s, v) => s + (v - mean) ** 2, 0) / a.length;
  assert.ok(Math.abs(mean) < 0.01 && Math.abs(variance - 1) < 0.02, `${mean} ${variance}`);
});

test("PSNR over the RGB channels", () => {
  const a = new Uint8ClampedArray([10, 20, 30, 255, 40, 50, 60, 255]);
  assert.equal(psnr(a, a), Infinity);
  const b = new Uint8ClampedArray([11, 20, 30, 0, 40, 50, 60, 0]); // alpha is ignored
  assert.ok(Math.abs(psnr(a, b) - 10 * Math.log10(255 ** 2 / (1 / 6))) < 1e-9);
});
