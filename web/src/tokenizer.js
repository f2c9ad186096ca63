// Prompt → token ids, as the Python runtime's PromptEncoder (the `tokenizers` library with truncation to the text
// encoder's length and padding with the manifest's pad id). The tokenizer itself is @huggingface/tokenizers
// reading the exported tokenizer/tokenizer.json; web/test/tokenizer.test.mjs compares the ids with Python's.
import { Tokenizer } from "@huggingface/tokenizers";

export class PromptEncoder {
  /** tokenizerJson: the parsed tokenizer.json; maxLength / padId: the manifest's text_max_length / pad_token_id. */
  constructor(tokenizerJson, maxLength, padId) {
    this.tokenizer = new Tokenizer(tokenizerJson, {});
    this.maxLength = maxLength;
    this.padId = padId;
    // What the post-processor wraps around every prompt (CLIP: start and end of text), measured on "".
    const withSpecials = this.tokenizer.encode("").ids;
    const bare = this.tokenizer.encode("", { add_special_tokens: false }).ids;
    if (bare.length !== 0) throw new Error("the tokenizer encodes the empty prompt to tokens");
    this.prefix = withSpecials.slice(0, 1);
    this.suffix = withSpecials.slice(1);
  }

  /** One prompt → maxLength ids (truncated keeping the special tokens, then padded), as numbers. */
  ids(prompt) {
    const body = this.tokenizer.encode(prompt, { add_special_tokens: false }).ids.map(Number);
    const room = this.maxLength - this.prefix.length - this.suffix.length;
    const ids = [...this.prefix, ...body.slice(0, Math.max(0, room)), ...this.suffix].slice(0, this.maxLength);
    while (ids.length < this.maxLength) ids.push(this.padId);
    return ids;
  }

  /** Prompts → (B × maxLength) BigInt64Array, the text encoder's int64 input. */
  encode(prompts) {
    const out = new BigInt64Array(prompts.length * this.maxLength);
    prompts.forEach((p, b) => this.ids(p).forEach((id, j) => (out[b * this.maxLength + j] = BigInt(id))));
    return out;
  }
}
