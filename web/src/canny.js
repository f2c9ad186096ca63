// Canny edges for uploaded photos, as refine_control/preprocess.py's `canny` (OpenCV `cv2.Canny(rgb, 100, 200)`):
// 3×3 Sobel per channel (border replicated), per pixel the channel with the largest L1 gradient, non-maximum
// suppression in four directions (OpenCV's tan 22.5° test in 15-bit fixed point), then hysteresis with
// 8-connectivity. web/test/canny.test.mjs compares it with OpenCV's output on fixture images.

const SHIFT = 15;
const TG22 = Math.round(0.4142135623730950488016887242097 * (1 << SHIFT));

/** rgba: Uint8ClampedArray / Uint8Array of width × height × `channels` (RGBA from a canvas: 4; RGB: 3).
 * Returns a Uint8Array of width × height with 255 on edges, 0 elsewhere. */
export function canny(pixels, width, height, low = 100, high = 200, channels = 4) {
  if (low > high) [low, high] = [high, low];
  low = Math.floor(low);
  high = Math.floor(high);
  const n = width * height;
  const mag = new Int32Array(n);
  const gx = new Int32Array(n);
  const gy = new Int32Array(n);
  const at = (x, y, c) => {
    const xx = x < 0 ? 0 : x >= width ? width - 1 : x;
    const yy = y < 0 ? 0 : y >= height ? height - 1 : y;
    return pixels[(yy * width + xx) * channels + c];
  };
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      let best = -1;
      let bx = 0;
      let by = 0;
      for (let c = 0; c < 3; c++) {
        const dx =
          at(x + 1, y - 1, c) - at(x - 1, y - 1, c) + 2 * (at(x + 1, y, c) - at(x - 1, y, c)) + at(x + 1, y + 1, c) -
          at(x - 1, y + 1, c);
        const dy =
          at(x - 1, y + 1, c) - at(x - 1, y - 1, c) + 2 * (at(x, y + 1, c) - at(x, y - 1, c)) + at(x + 1, y + 1, c) -
          at(x + 1, y - 1, c);
        const m = Math.abs(dx) + Math.abs(dy);
        if (m > best) {
          best = m;
          bx = dx;
          by = dy;
        }
      }
      const i = y * width + x;
      mag[i] = best;
      gx[i] = bx;
      gy[i] = by;
    }
  }
  const m = (x, y) => (x < 0 || y < 0 || x >= width || y >= height ? 0 : mag[y * width + x]);
  // 0: candidate (weak local maximum), 1: not an edge, 2: edge
  const map = new Uint8Array(n).fill(1);
  const stack = [];
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const i = y * width + x;
      const v = mag[i];
      if (!(v > low)) continue;
      const xs = gx[i];
      const ys = gy[i];
      const ax = Math.abs(xs);
      const ay = Math.abs(ys) * (1 << SHIFT);
      const tg22x = ax * TG22;
      let isMax;
      if (ay < tg22x) isMax = v > m(x - 1, y) && v >= m(x + 1, y);
      else {
        const tg67x = tg22x + ax * (1 << (SHIFT + 1));
        if (ay > tg67x) isMax = v > m(x, y - 1) && v >= m(x, y + 1);
        else {
          const s = (xs < 0) !== (ys < 0) ? -1 : 1;
          isMax = v > m(x - s, y - 1) && v > m(x + s, y + 1);
        }
      }
      if (!isMax) continue;
      if (v > high) {
        map[i] = 2;
        stack.push(i);
      } else map[i] = 0;
    }
  }
  while (stack.length) {
    const i = stack.pop();
    const x = i % width;
    const y = (i - x) / width;
    for (let dy = -1; dy <= 1; dy++) {
      for (let dx = -1; dx <= 1; dx++) {
        const xx = x + dx;
        const yy = y + dy;
        if (xx < 0 || yy < 0 || xx >= width || yy >= height) continue;
        const j = yy * width + xx;
        if (map[j] === 0) {
          map[j] = 2;
          stack.push(j);
        }
      }
    }
  }
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = map[i] === 2 ? 255 : 0;
  return out;
}

/** Edges → the control tensor (1, 3, H, W) float32 in [0, 1], as `_gray3` + the pipeline's layout. */
export function edgesToControl(edges, width, height) {
  const plane = width * height;
  const out = new Float32Array(3 * plane);
  for (let i = 0; i < plane; i++) out[i] = out[plane + i] = out[2 * plane + i] = edges[i] / 255;
  return out;
}
