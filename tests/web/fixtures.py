"""Fixtures for the node tests of web/ (web/test/*.test.mjs), written by the Python runtime's own code.

    python tests/web/fixtures.py DIR     # schedulers.json, canny.json, tokenizer/tokenizer.json, tokenizer_ids.json

`node --test web/test/*.test.mjs` reads them from $REFINE_WEB_FIXTURES (else web/test/fixtures/, which holds the small
ones: schedulers and Canny; the tokenizer test needs the 49,408-token CLIP tokenizer.json written here).
"""

import base64
import json
import sys
from pathlib import Path

import numpy as np

from refine_control.preprocess import get_preprocessor

PROMPTS = [
    "",
    "a red striped circle",
    "A Photo of  TWO cats,   sitting on a mat!",
    "naïve café — déjà vu 🙂 日本語 1234567",
    "it's what they'll've done; don't",
    "a much longer prompt, " * 20,
    "<|startoftext|> literal special tokens <|endoftext|>",
]


def _canny_images() -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    h, w = 48, 64
    yy, xx = np.mgrid[0:h, 0:w]
    shapes = np.zeros((h, w, 3), np.uint8)
    shapes[((yy - 20) ** 2 + (xx - 24) ** 2) < 150] = (220, 40, 30)
    shapes[8:40, 40:58] = (30, 200, 90)
    shapes[(xx + 2 * yy) % 23 < 3] //= 2
    noisy = np.clip(shapes.astype(np.int16) + rng.integers(-40, 40, shapes.shape), 0, 255).astype(np.uint8)
    smooth = (np.stack([xx * 4, yy * 5, (xx * yy) % 256], axis=2) % 256).astype(np.uint8)
    random = rng.integers(0, 256, (17, 23, 3), dtype=np.uint8)
    return [("shapes", shapes), ("noisy", noisy), ("gradients", smooth), ("random", random)]


def write_canny(path: Path) -> Path:
    canny = get_preprocessor("canny")
    cases = []
    for name, image in _canny_images():
        edges = (canny(image)[..., 0] * 255).round().astype(np.uint8)
        cases.append(
            {
                "name": name,
                "width": image.shape[1],
                "height": image.shape[0],
                "rgb": base64.b64encode(image.tobytes()).decode(),
                "edges": base64.b64encode(edges.tobytes()).decode(),
            }
        )
    path.write_text(json.dumps({"cases": cases}))
    return path


def write_tokenizer(directory: Path) -> Path:
    """The real CLIP tokenizer as the exporter writes it, and PromptEncoder's ids for awkward prompts."""
    from refine_control.builtin.tokenizer import build_clip_tokenizer
    from refine_control.runtime.pipeline import PromptEncoder

    tokenizer = build_clip_tokenizer()
    tokenizer.save_pretrained(directory / "tokenizer")
    encoder = PromptEncoder((directory / "tokenizer" / "tokenizer.json").read_bytes(), 77, tokenizer.pad_token_id)
    ids = encoder(PROMPTS)
    record = {"max_length": 77, "pad_id": int(tokenizer.pad_token_id), "prompts": PROMPTS, "ids": ids.tolist()}
    path = directory / "tokenizer_ids.json"
    path.write_text(json.dumps(record, ensure_ascii=False))
    return path


def write_all(directory: Path) -> Path:
    from scheduler_fixtures import write_fixtures

    directory.mkdir(parents=True, exist_ok=True)
    write_fixtures(directory / "schedulers.json")
    write_canny(directory / "canny.json")
    write_tokenizer(directory)
    return directory


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    write_all(Path(sys.argv[1]))
