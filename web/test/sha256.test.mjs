// The plain SHA-256 (used where WebCrypto is absent) against node's crypto, on lengths around block edges.
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { test } from "node:test";
import { sha256, sha256Plain } from "../src/sha256.js";

test("sha256Plain equals node's crypto", async () => {
  for (const n of [0, 1, 3, 55, 56, 63, 64, 65, 119, 120, 127, 128, 1000, 70001]) {
    const data = randomBytes(n);
    const expected = createHash("sha256").update(data).digest("hex");
    assert.equal(sha256Plain(data), expected, `length ${n}`);
    assert.equal(sha256Plain(data.buffer.slice(data.byteOffset, data.byteOffset + n)), expected);
    assert.equal(await sha256(new Uint8Array(data)), expected);
  }
});
