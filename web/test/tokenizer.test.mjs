// PromptEncoder (web/src/tokenizer.js) against the Python runtime's ids for the same CLIP tokenizer.json.
// Needs the fixtures of tests/web/fixtures.py in $REFINE_WEB_FIXTURES (the 3.6 MB tokenizer.json is not committed);
// tests/web/test_web_node.py writes them and runs this file.
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { test } from "node:test";
import { PromptEncoder } from "../src/tokenizer.js";

const dir = process.env.REFINE_WEB_FIXTURES;
const present = dir && existsSync(`${dir}/tokenizer_ids.json`);

test("token ids equal the Python PromptEncoder's", { skip: present ? false : "REFINE_WEB_FIXTURES not set" }, () => {
  const tokenizer = JSON.parse(readFileSync(`${dir}/tokenizer/tokenizer.json`, "utf8"));
  const expected = JSON.parse(readFileSync(`${dir}/tokenizer_ids.json`, "utf8"));
  const encoder = new PromptEncoder(tokenizer, expected.max_length, expected.pad_id);
  expected.prompts.forEach((prompt, i) => assert.deepEqual(encoder.ids(prompt), expected.ids[i], JSON.stringify(prompt)));
  const batch = encoder.encode(expected.prompts.slice(0, 2));
  assert.equal(batch.length, 2 * expected.max_length);
  assert.deepEqual(Array.from(batch.subarray(expected.max_length), Number), expected.ids[1]);
});
