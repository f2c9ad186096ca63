// The JS Canny against OpenCV's (refine_control/preprocess.py `canny`, thresholds 100/200) on fixture images.
// Expected: the same edge map, pixel for pixel.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { canny, edgesToControl } from "../src/canny.js";

const path = process.env.REFINE_WEB_FIXTURES
  ? `${process.env.REFINE_WEB_FIXTURES}/canny.json`
  : new URL("./fixtures/canny.json", import.meta.url);
const { cases } = JSON.parse(readFileSync(path, "utf8"));

for (const c of cases) {
  test(`canny ${c.name} (${c.width}×${c.height}) equals OpenCV`, () => {
    const rgb = Buffer.from(c.rgb, "base64");
    const expected = Buffer.from(c.edges, "base64");
    const edges = canny(rgb, c.width, c.height, 100, 200, 3);
    let differ = 0;
    for (let i = 0; i < expected.length; i++) differ += edges[i] !== expected[i];
    const lit = expected.reduce((n, v) => n + (v > 0), 0);
    assert.equal(differ, 0, `${differ} of ${expected.length} pixels differ (OpenCV marks ${lit} edge pixels)`);
  });
}

test("RGBA input and the control layout", () => {
  const c = cases[0];
  const rgb = Buffer.from(c.rgb, "base64");
  const rgba = new Uint8ClampedArray(c.width * c.height * 4);
  for (let i = 0; i < c.width * c.height; i++) {
    rgba.set(rgb.subarray(3 * i, 3 * i + 3), 4 * i);
    rgba[4 * i + 3] = 255;
  }
  const edges = canny(rgba, c.width, c.height);
  assert.deepEqual(edges, canny(rgb, c.width, c.height, 100, 200, 3));
  const control = edgesToControl(edges, c.width, c.height);
  const plane = c.width * c.height;
  assert.equal(control.length, 3 * plane);
  for (let i = 0; i < plane; i++) assert.ok(control[i] === edges[i] / 255 && control[2 * plane + i] === control[i]);
});
