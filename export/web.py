"""`refine-export ... --web`: a self-contained static folder that runs the exported model in a browser.

The folder holds the page (web/index.html, web/src/*.js), ONNX Runtime Web's own .mjs/.wasm files and the
tokenizer library (copied from web/node_modules, installed from web/package-lock.json), the graphs the browser
runs (FP32, and the INT8 denoiser when the model has one) byte for byte with the model's manifest, the tokenizer
and scheduler, a service worker that caches everything for offline use, and a self-test sample: prompt, control
image, the numpy draws (initial latents and per-step noise) and the image the Python `OnnxControlNetPipeline`
made from exactly those draws. `index.html?selftest=1` regenerates it in the browser and reports the PSNR.

Layout (relative to the folder):

    index.html  style.css  sw.js  _headers  README.txt  web.json  src/*.js
    lib/ort/    ort.min.mjs and the ort-wasm-simd-threaded[.jsep].{mjs,wasm} it loads (no CDN)
    lib/tokenizers.mjs
    model/      manifest.json  scheduler.json  tokenizer/tokenizer.json  *.onnx
    selftest/   sample.json  control.f32  latents.f32  noise.f32  reference.<precision>.rgb  *.png

web.json holds each graph's free-dimension overrides at the model's resolution (`fixed_dims`): the page pins its
sessions to that one shape, so ONNX Runtime Web folds the shape arithmetic of the dynamic axes away at load (a few
percent per image in benchmarks/web_latency.py's A/B; `?fixed=0` turns it off).

WASM threads need a cross-origin isolated page: the server must send `Cross-Origin-Opener-Policy: same-origin`
and `Cross-Origin-Embedder-Policy: require-corp` (`_headers` holds them in the format of static hosts that read
it); without them the page runs one thread and says so.
"""

import argparse
import base64
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from refine_control.atomic import atomic_dir
from refine_control.cli_parser import add_output, add_verbosity, new_parser, verbosity
from refine_control.errors import ConfigError
from refine_control.runtime.layout import MANIFEST, SCHEDULER, TOKENIZER, graph_file

logger = logging.getLogger(__name__)

WEB_SOURCE = Path(__file__).resolve().parent.parent / "web"
INSTALL_HINT = "npm ci --prefix web   (installs ONNX Runtime Web and the tokenizer from web/package-lock.json)"
ORT_FILES = (
    "ort.min.mjs",
    "ort-wasm-simd-threaded.mjs",
    "ort-wasm-simd-threaded.wasm",
    "ort-wasm-simd-threaded.jsep.mjs",  # the WebGPU build (?backend=webgpu)
    "ort-wasm-simd-threaded.jsep.wasm",
)
PAGE_FILES = ("style.css",)
SCRIPTS = ("app.js", "canny.js", "pipeline.js", "schedulers.js", "sha256.js", "tokenizer.js")
IMPORTS = {"@huggingface/tokenizers": "./lib/tokenizers.mjs", "onnxruntime-web": "./lib/ort/ort.min.mjs"}
HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}
SELFTEST_PROMPT = "a red striped circle"
SELFTEST_SEED = 7
# Schedulers that draw fresh noise in a step, and how many draws a run of n steps makes (numpy schedulers).
NOISE_DRAWS = {"lcm": lambda n: n - 1, "euler_ancestral": lambda n: n}


def _source_files(source: Path) -> dict[str, Path]:
    """Folder path → source file, for everything copied from web/ and its node_modules."""
    modules = source / "node_modules"
    files = {"index.html": source / "index.html", "sw.js": source / "sw.js"}
    files.update({name: source / name for name in PAGE_FILES})
    files.update({f"src/{name}": source / "src" / name for name in SCRIPTS})
    files.update({f"lib/ort/{name}": modules / "onnxruntime-web" / "dist" / name for name in ORT_FILES})
    files["lib/tokenizers.mjs"] = modules / "@huggingface" / "tokenizers" / "dist" / "tokenizers.min.mjs"
    return files


def check_web_source(source: Path | None = None) -> dict[str, Path]:
    """The files the web folder is made of (from web/ by default); `ConfigError` (exit 2) naming what is missing,
    with the npm hint."""
    source = WEB_SOURCE if source is None else source
    if not (source / "index.html").is_file():
        raise ConfigError(
            f"the browser runtime's sources are not at {source}",
            hint="run refine-export from a checkout of refine-control (its web/ folder)",
        )
    files = _source_files(source)
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        where = "web/node_modules" if not (source / "node_modules").is_dir() else missing[0]
        raise ConfigError(f"{where} is missing: --web needs ONNX Runtime Web and the tokenizer", hint=INSTALL_HINT)
    return files


def check_web_target(out_dir: Path, overwrite: bool) -> None:
    """Refuse an existing web folder without `overwrite`, and any non-empty dir that is not a web folder."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--web {out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise ConfigError(f"web folder {out_dir} already exists", hint="pass --overwrite to replace it")
        if not (out_dir / "sw.js").is_file() or not (out_dir / "model" / MANIFEST).is_file():
            raise ConfigError(f"{out_dir} is not empty and is not a web folder; refusing to replace it")


def _control_image(resolution: int) -> np.ndarray:
    """A deterministic control image (Canny edges of a drawn circle and bars), (H, W, 3) float32 in [0, 1]."""
    from refine_control.preprocess import get_preprocessor

    yy, xx = np.mgrid[0:resolution, 0:resolution]
    c = resolution / 2
    picture = np.zeros((resolution, resolution, 3), np.uint8)
    picture[(yy - c) ** 2 + (xx - c) ** 2 < (resolution * 0.32) ** 2] = (230, 40, 30)
    picture[((xx + yy) // max(1, resolution // 8)) % 2 == 0] //= 3
    return get_preprocessor("canny")(picture)


def _png(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def fixed_dims(pipe: Any) -> dict[str, dict[str, int]]:
    """Each graph's symbolic input dimensions → their size when the page generates at the model's resolution (ONNX
    Runtime Web's free-dimension overrides): with every shape known, ORT folds the shape arithmetic of the dynamic
    axes (Shape, Gather, Concat, Reshape targets) at load. The batch is pinned only where sampling fixes it: 1 for a
    guidance-embedded denoiser, 2 for a guidance pair whose trained range starts above 1 (no unguided batch-1 pass);
    otherwise it stays dynamic."""
    from refine_control.runtime.session import fixed_dims_for

    geometry, side = pipe.geometry, pipe.resolution
    guidance_range = pipe.sampling.guidance_range
    batch = 1 if geometry.guidance_embedded else 2
    batch_fixed = geometry.guidance_embedded or (guidance_range is not None and guidance_range[0] > 1)
    latents = np.zeros(geometry.latent_shape(side, side, batch), np.float32)
    ids = np.zeros((batch, geometry.text_max_length), np.int64)
    text = np.zeros((batch, geometry.text_max_length, geometry.cross_attention_dim), np.float32)
    control = np.zeros((batch, geometry.control_channels, side, side), np.float32)
    feeds = {
        "text_encoder": {"input_ids": ids},
        "denoiser": geometry.denoiser_feeds(latents, np.zeros(batch, np.float32), text, control, 1.0, 3.0),
        "vae_decoder": {"latent_sample": latents[:1]},
    }
    out = {}
    for graph, graph_feeds in feeds.items():
        dims = fixed_dims_for(pipe.sessions[graph].get_inputs(), graph_feeds)
        if not batch_fixed and graph != "vae_decoder":
            batch_dims = {pipe.sessions[graph].get_inputs()[0].shape[0]}
            dims = {name: size for name, size in dims.items() if name not in batch_dims}
        out[graph] = dims
    return out


def selftest_sample(model_dir: Path, threads: int | None = None) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The reference sample: sample.json facts and its files, the references made by the Python runtime."""
    from refine_control.runtime.pipeline import OnnxControlNetPipeline

    pipe = OnnxControlNetPipeline(model_dir, "fp32", num_threads=threads)
    size = pipe.resolution
    control = _control_image(size)
    steps, guidance = pipe.default_steps, pipe.default_guidance_scale
    # The draws OnnxControlNetPipeline makes for this seed: the initial latents, then one per stochastic step.
    rng = np.random.default_rng(SELFTEST_SEED)
    shape = pipe.geometry.latent_shape(size, size)
    latents = rng.standard_normal(shape, dtype=np.float32)
    draws = NOISE_DRAWS.get(pipe.scheduler_name, lambda n: 0)(steps)
    noise = np.stack([rng.standard_normal(shape, dtype=np.float32) for _ in range(draws)]) if draws else None
    files = {
        "control.f32": np.ascontiguousarray(control.transpose(2, 0, 1), np.float32).tobytes(),
        "latents.f32": latents.tobytes(),
        "noise.f32": b"" if noise is None else noise.tobytes(),
        "control.png": _png((control * 255).round().astype(np.uint8)),
    }
    references = {}
    for precision in [p for p in ("fp32", "int8") if p in pipe.available_precisions]:
        runner = pipe if precision == "fp32" else OnnxControlNetPipeline(model_dir, precision, num_threads=threads)
        image = runner(SELFTEST_PROMPT, control, steps=steps, guidance_scale=guidance, seed=SELFTEST_SEED)
        files[f"reference.{precision}.rgb"] = np.ascontiguousarray(image, np.uint8).tobytes()
        files[f"reference.{precision}.png"] = _png(image)
        references[precision] = f"reference.{precision}.rgb"
    sample = {
        "prompt": SELFTEST_PROMPT,
        "negative_prompt": "",
        "seed": SELFTEST_SEED,
        "steps": steps,
        "guidance_scale": guidance,
        "controlnet_scale": 1.0,
        "width": size,
        "height": size,
        "scheduler": pipe.scheduler_name,
        "noise_draws": draws,
        "references": references,
        "reference_runtime": "refine_control.runtime.OnnxControlNetPipeline (ONNX Runtime, CPU)",
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
        "fixed_dims": fixed_dims(pipe),
    }
    return sample, files


def _importmap() -> str:
    return json.dumps({"imports": IMPORTS}, separators=(",", ":"))


def _csp_hash(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode()


def _headers_file() -> str:
    lines = ["/*", *(f"  {key}: {value}" for key, value in HEADERS.items())]
    return "\n".join(lines) + "\n"


def _readme(sample: dict[str, Any]) -> str:
    headers = "\n".join(f"    {key}: {value}" for key, value in HEADERS.items())
    return f"""The exported model, running in the browser (ONNX Runtime Web); nothing is sent anywhere.

Serve this folder from any static host and open index.html; index.html?selftest=1 regenerates the reference
sample ({sample["width"]}x{sample["height"]}, {sample["steps"]} steps) and compares it with the image the Python
runtime made (PSNR), with the time per image and the backend. WASM threads need these response headers:

{headers}

(_headers holds them for hosts that read that file.) Without them the page runs on one thread and says so.
A service worker keeps a copy for offline use after the first visit (https or localhost only).
Query parameters: precision=int8, backend=webgpu, threads=N, runs=N (self-test timing runs); for speed tests
fixed=0 (dynamic shapes instead of web.json's fixed ones), spin=0 (ONNX Runtime's thread pool without spinning),
opt=basic.
"""


def _readable_by_all(root: Path) -> None:
    """A static server may run as another user: the umask's permissions, not the temp dir's private ones."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [root, *root.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def write_web_folder(
    model_dir: Path,
    out_dir: Path,
    *,
    source: Path | None = None,
    overwrite: bool = False,
    threads: int | None = None,
) -> dict[str, Any]:
    """Write the static folder for the exported model at `model_dir` into `out_dir` (atomically); returns a summary.

    `ConfigError` when web/node_modules is missing (hint: `npm ci --prefix web`), when `out_dir` exists without
    `overwrite`, or when a graph keeps its weights in external data (not supported in the browser folder yet).
    """
    from refine_control.runtime.model_dir import ModelDir

    sources = check_web_source(source)
    check_web_target(out_dir, overwrite)
    model = ModelDir(model_dir)
    model_files = [SCHEDULER, TOKENIZER, *(graph_file(g) for g in ("text_encoder", "denoiser", "vae_decoder"))]
    if model.has(graph_file("denoiser", "int8")):
        model_files.append(graph_file("denoiser", "int8"))
    contents: dict[str, bytes] = {}
    for name in model_files:
        if name.endswith(".onnx") and model.verify_graph(name).data is None:
            raise ConfigError(f"{name} keeps its weights in external data, which the web folder does not carry yet")
        contents[f"model/{name}"] = model.read_verified(name)
    contents[f"model/{MANIFEST}"] = (model_dir / MANIFEST).read_bytes()
    sample, sample_files = selftest_sample(model_dir, threads)
    contents.update({f"selftest/{name}": data for name, data in sample_files.items()})
    contents["selftest/sample.json"] = json.dumps(sample, indent=1).encode()
    contents["web.json"] = json.dumps({"fixed_dims": sample["fixed_dims"], "resolution": sample["width"]}).encode()
    for name, path in sources.items():
        if name not in ("index.html", "sw.js"):
            contents[name] = path.read_bytes()
    importmap = _importmap()
    html = sources["index.html"].read_text("utf-8")
    contents["index.html"] = (
        html.replace("__IMPORTMAP_HASH__", _csp_hash(importmap)).replace("__IMPORTMAP__", importmap).encode()
    )
    contents["_headers"] = _headers_file().encode()
    contents["README.txt"] = _readme(sample).encode()
    cached = sorted({"./", "sw.js", *contents})
    version = hashlib.sha256(
        "".join(f"{n}:{hashlib.sha256(d).hexdigest()}\n" for n, d in sorted(contents.items())).encode()
    ).hexdigest()[:16]
    contents["sw.js"] = (
        sources["sw.js"]
        .read_text("utf-8")
        .replace("__VERSION__", f"refine-web-{version}")
        .replace("__FILES__", json.dumps(cached, indent=1))
        .encode()
    )
    with atomic_dir(out_dir) as tmp:
        for name, data in sorted(contents.items()):
            path = tmp / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        _readable_by_all(tmp)
    total = sum(len(d) for d in contents.values())
    logger.info("web folder written: %s (%d files, %.1f MB)", out_dir, len(contents), total / 1e6)
    return {"path": str(out_dir), "files": len(contents), "bytes": total, "selftest": sample}


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser(
        "python -m refine_control.export.web",
        description="Write the static browser folder of an exported model dir (as refine-export --web does).",
    )
    parser.add_argument("model", metavar="MODEL", type=Path, help="a refine-export model dir")
    add_output(parser, "the web folder to write. Default: the model dir's name + '-web'", "--output-dir",
               dest="output_dir", type=Path, default=None, metavar="DIR")  # fmt: skip
    parser.add_argument("--overwrite", action="store_true", help="replace an existing web folder")
    parser.add_argument(
        "--threads", type=int, default=None, help="ONNX Runtime threads for the reference image. Default: all CPUs"
    )
    add_verbosity(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """`python -m refine_control.export.web MODEL [-o DIR]`: the web folder of an existing model dir."""
    import sys

    from refine_control.cli_utils import offline_env, run_cli, setup_logging

    args = build_parser().parse_args(argv)
    setup_logging(verbosity(args))
    offline_env()

    def body() -> int:
        out = args.output_dir or args.model.with_name(args.model.name + "-web")
        summary = write_web_folder(args.model, out, overwrite=args.overwrite, threads=args.threads)
        sys.stdout.write(f"web folder: {out} ({summary['files']} files, {summary['bytes'] / 1e6:.1f} MB)\n")
        return 0

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(main())
