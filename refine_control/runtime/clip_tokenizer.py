"""CLIP's byte-level BPE tokenizer in pure Python, read from the `tokenizer.json` that `refine-export` writes, so
that the device install needs neither the `tokenizers` library nor what it pulls in (huggingface_hub, hf-xet, ...).

It implements exactly the layout that CLIP's fast tokenizer saves (checked field by field in `supports`):
added tokens `<|startoftext|>` / `<|endoftext|>` matched on the raw text; NFC, runs of white space to one space,
per-character lower case; the CLIP split (specials, contractions, letter runs, single digits, other runs) and the
GPT-2 byte-level split and byte→unicode map; BPE with `</w>` ending each word; `<|startoftext|>` … `<|endoftext|>`
around the ids; truncation on the right and padding to a fixed length. Character classes follow the Unicode
tables of Python's `unicodedata`. `refine-export` checks the ids against transformers' tokenizer on every export,
and tests/export/test_clip_tokenizer.py against the `tokenizers` library.
"""

import itertools
import re
import unicodedata
from functools import lru_cache
from typing import Any

# Unicode White_Space, what `\s` matches in the tokenizer's regular expressions (str.isspace adds U+001C..U+001F).
_WHITE_SPACE = frozenset(
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)
_CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")
_SPECIAL_PATTERNS = ("<|startoftext|>", "<|endoftext|>")
_NORMALIZER = {
    "type": "Sequence",
    "normalizers": [
        {"type": "NFC"},
        {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "},
        {"type": "Lowercase"},
    ],
}
_CLIP_SPLIT = "<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+"


@lru_cache(maxsize=4096)
def _kind(ch: str) -> str:
    """'s' white space, 'L' letter, 'N' number, 'P' anything else."""
    if ch in _WHITE_SPACE:
        return "s"
    category = unicodedata.category(ch)[0]
    return category if category in ("L", "N") else "P"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable characters."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


_BYTE_CHARS = bytes_to_unicode()


def _split(text: str) -> list[str]:
    """CLIP's split of normalised text, white space dropped: the special patterns, contractions, letter runs, single
    digits, runs of anything else. The byte-level split that follows leaves such pieces whole, except that it cuts
    a special pattern (one typed in another case) into `<|`, the word and `|>`."""
    pieces: list[str] = []
    i, n = 0, len(text)
    while i < n:
        fixed = next((s for s in (*_SPECIAL_PATTERNS, *_CONTRACTIONS) if text.startswith(s, i)), None)
        if fixed is not None:
            pieces.extend([fixed[:2], fixed[2:-2], fixed[-2:]] if fixed in _SPECIAL_PATTERNS else [fixed])
            i += len(fixed)
            continue
        kind = _kind(text[i])
        end = i + 1
        if kind != "N":  # a digit stands alone; white space, letters and the rest run on
            while end < n and _kind(text[end]) == kind:
                end += 1
        if kind != "s":
            pieces.append(text[i:end])
        i = end
    return pieces


class ClipTokenizer:
    """Token ids of CLIP's tokenizer from its `tokenizer.json` (parsed), padded / truncated to `max_length`."""

    def __init__(self, spec: dict[str, Any], max_length: int, pad_id: int) -> None:
        model = spec["model"]
        self.vocab: dict[str, int] = model["vocab"]
        merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        self.ranks: dict[tuple[str, str], int] = {pair: rank for rank, pair in enumerate(merges)}  # type: ignore[misc]
        self.specials = {t["content"]: t["id"] for t in spec["added_tokens"]}
        self.unk_id = self.vocab[model["unk_token"]]
        post = spec["post_processor"]
        self.bos_id, self.eos_id = post["cls"][1], post["sep"][1]
        self.max_length, self.pad_id = max_length, pad_id
        self._cache: dict[str, list[int]] = {}

    @staticmethod
    def supports(spec: dict[str, Any]) -> bool:
        """Whether a parsed tokenizer.json has exactly the layout this class implements."""
        model, post = spec.get("model") or {}, spec.get("post_processor") or {}
        pre = (spec.get("pre_tokenizer") or {}).get("pretokenizers") or [{}, {}]
        specials = {t.get("content"): t for t in spec.get("added_tokens") or []}
        return (
            model.get("type") == "BPE"
            and model.get("end_of_word_suffix") == "</w>"
            and not model.get("continuing_subword_prefix")
            and model.get("dropout") is None
            and not model.get("byte_fallback")
            and not model.get("ignore_merges")
            and not model.get("fuse_unk")
            and model.get("unk_token") in model.get("vocab", {})
            and spec.get("normalizer") == _NORMALIZER
            and len(pre) == 2
            and pre[0].get("type") == "Split"
            and pre[0].get("pattern") == {"Regex": _CLIP_SPLIT}
            and pre[0].get("behavior") == "Removed"
            and pre[0].get("invert") is True
            and pre[1].get("type") == "ByteLevel"
            and pre[1].get("add_prefix_space") is False
            and pre[1].get("use_regex") is True
            and post.get("type") == "RobertaProcessing"
            and set(specials) == set(_SPECIAL_PATTERNS)
            and all(not t.get("normalized") and not t.get("lstrip") and not t.get("rstrip") for t in specials.values())
            and all(not t.get("single_word") for t in specials.values())
            and [post.get("cls", [None])[0], post.get("sep", [None])[0]] == list(_SPECIAL_PATTERNS)
        )

    def _bpe(self, word: str) -> list[int]:
        """Ids of one byte-level word: merge the lowest-ranked adjacent pair until none is left."""
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        symbols = [*word[:-1], word[-1] + "</w>"]
        while len(symbols) > 1:
            ranked = [(self.ranks.get(pair, -1), i) for i, pair in enumerate(itertools.pairwise(symbols))]
            ranked = [(r, i) for r, i in ranked if r >= 0]
            if not ranked:
                break
            _, i = min(ranked)
            symbols[i : i + 2] = [symbols[i] + symbols[i + 1]]
        ids = [self.vocab.get(s, self.unk_id) for s in symbols]
        if len(self._cache) < 65536:
            self._cache[word] = ids
        return ids

    def _encode_text(self, text: str) -> list[int]:
        text = unicodedata.normalize("NFC", text)
        text = re.sub(" +", " ", "".join(" " if ch in _WHITE_SPACE else ch for ch in text))
        text = "".join(ch.lower() for ch in text)  # per character, as the library does (no final-sigma rule)
        ids: list[int] = []
        for word in _split(text):
            ids.extend(self._bpe("".join(_BYTE_CHARS[b] for b in word.encode("utf-8"))))
        return ids

    def encode(self, text: str) -> list[int]:
        """`max_length` ids: start, the text's tokens (truncated), end, padding."""
        ids: list[int] = []
        start = 0
        while True:  # the special tokens are matched on the raw text, before normalisation
            found = [(text.find(s, start), s) for s in self.specials]
            found = [(at, s) for at, s in found if at >= 0]
            if not found:
                ids.extend(self._encode_text(text[start:]))
                break
            at, special = min(found)
            ids.extend(self._encode_text(text[start:at]))
            ids.append(self.specials[special])
            start = at + len(special)
        ids = [self.bos_id, *ids[: max(0, self.max_length - 2)], self.eos_id][: self.max_length]
        return ids + [self.pad_id] * (self.max_length - len(ids))
