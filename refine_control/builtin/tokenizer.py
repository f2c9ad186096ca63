"""The real CLIP tokenizer, rebuilt offline from the BPE merges that open_clip ships (MIT, see assets/).

The vocabulary follows CLIP's recipe: the 256 byte-level symbols, the same with `</w>`, one token per merge
(the first 48,894 merge lines), then `<|startoftext|>` and `<|endoftext|>`: 49,408 tokens, identical ids to
openai/clip-vit-large-patch14's tokenizer.
"""

import gzip
from functools import lru_cache
from pathlib import Path

from transformers import CLIPTokenizer

from refine_control.runtime.clip_tokenizer import bytes_to_unicode

BPE_PATH = Path(__file__).with_name("assets") / "bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49152 - 256 - 2


@lru_cache(maxsize=1)
def _vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    with gzip.open(BPE_PATH) as f:
        lines = f.read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def build_clip_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    """A `CLIPTokenizer` equal to CLIP's, built with no download."""
    vocab, merges = _vocab_and_merges()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=model_max_length)
