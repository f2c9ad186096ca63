"""The runtime's pure-Python CLIP tokenizer gives the `tokenizers` library's ids (the device install carries only
the former; `[train]` brings the latter with transformers).

Measured (Python 3.11, Unicode 14 tables; tokenizers 0.23): equal on every prompt below; on random strings of
assigned code points, equal on all but 1 of 20,000 (a separate run) and all but 2 of the 3,000 tested here, each
time two adjacent combining marks that Python's NFC puts in canonical order and the library leaves as they are.
Characters unassigned in Python's Unicode tables (added in later versions) may also differ.
"""

import itertools
import json
import random
import unicodedata
from pathlib import Path

import pytest

from refine_control.runtime.clip_tokenizer import ClipTokenizer
from refine_control.runtime.model_dir import ModelDirError
from refine_control.runtime.pipeline import PromptEncoder

tokenizers = pytest.importorskip("tokenizers")

TOKENIZER_JSON = Path(__file__).resolve().parents[2] / "refine_control/builtin/teacher/tokenizer/tokenizer.json"
PROMPTS = [
    "",
    "a red square",
    "A Blue, striped CIRCLE! " * 12,  # longer than 77 tokens: truncated
    "word " * 100,
    "it's a dog's life, isn't it? they'll've I'M",
    "''''s !!'s 's' ’s",
    "Crème brûlée 🍮 at 3:45pm, 12345 $100.00 -7.5e3",
    "東京タワー の 夜景, 서울의 밤",
    "ΣΟΦΊΑ σοφίας ΟΔΟΣ",  # final sigma: lower-cased per character
    "İstanbul ǅemal ß STRASSE ﬁ ﬀ",
    "tab\there\nnewline\u00a0nbsp\u3000ideographic  double \u2028 line sep",
    "x\x1cy\x1fz",  # separators that str.isspace() calls space and Unicode White_Space does not
    "e\u0301 combining, zero\u200bwidth\u200djoiner 👨‍👩‍👧",
    "٣٤ arabic digits ½ Ⅻ ²",
    "under_score snake_case-kebab/slash\\back",
    "ＦＵＬＬ ｗｉｄｔｈ",
    "a <|endoftext|> b <|startoftext|>c",  # special tokens in the text
    "<|StartOfText|> in another case is text",
    "<|endoftext|>" * 80,
    "a" * 300,
]


@pytest.fixture(scope="module")
def both() -> tuple[ClipTokenizer, "tokenizers.Tokenizer"]:
    raw = TOKENIZER_JSON.read_text(encoding="utf-8")
    library = tokenizers.Tokenizer.from_str(raw)
    library.enable_truncation(77)
    library.enable_padding(length=77, pad_id=49407)
    spec = json.loads(raw)
    assert ClipTokenizer.supports(spec)
    return ClipTokenizer(spec, 77, 49407), library


def test_equal_ids_on_prompts(both):
    ours, library = both
    for prompt in PROMPTS:
        assert ours.encode(prompt) == library.encode(prompt).ids, prompt


def test_equal_ids_on_random_unicode(both):
    ours, library = both
    rng = random.Random(0)
    mismatches = []
    for _ in range(3000):
        chars: list[str] = []
        while len(chars) < rng.randint(1, 30):
            ch = chr(rng.randrange(0, 0x30000) if rng.random() < 0.5 else rng.randrange(0x20, 0x2500))
            if unicodedata.category(ch) not in ("Cn", "Cs"):
                chars.append(ch)
        text = "".join(chars)
        if ours.encode(text) != library.encode(text).ids:
            mismatches.append(text)
    # The only differences seen: runs of combining marks that Python's NFC puts in canonical order (2 here)
    marks = [
        t
        for t in mismatches
        if any(unicodedata.combining(a) and unicodedata.combining(b) for a, b in itertools.pairwise(t))
    ]
    assert len(mismatches) <= 3 and marks == mismatches, [[hex(ord(c)) for c in t] for t in mismatches]


def test_prompt_encoder_uses_it_and_refuses_other_layouts_without_the_library(monkeypatch):
    raw = TOKENIZER_JSON.read_bytes()
    encoder = PromptEncoder(raw, 77, 49407)
    assert encoder(["a red square"]).shape == (1, 77)
    other = json.loads(raw)
    other["normalizer"] = None  # not CLIP's layout: the library is needed
    library_ids = PromptEncoder(json.dumps(other).encode(), 77, 49407)(["A Red Square"])
    assert library_ids[0, 1] != encoder(["A Red Square"])[0, 1]  # no lower-casing: other ids
    monkeypatch.setitem(__import__("sys").modules, "tokenizers", None)
    with pytest.raises(ModelDirError, match="not CLIP's tokenizer layout") as err:
        PromptEncoder(json.dumps(other).encode(), 77, 49407)
    assert err.value.hint == "pip install tokenizers"
    with pytest.raises(ModelDirError, match="not JSON"):
        PromptEncoder(b"{", 77, 49407)
