"""A worked example of docs/own-data.md on real photos available offline: the sample photographs inside the
scikit-image wheel (local files under `skimage/data/`, read directly: nothing is fetched).

    python benchmarks/own_data_example.py                          # runs/own-data: photos/, run/, model/, sample.png
    python benchmarks/own_data_example.py --format parquet         # the same photos as parquet shards (datasets)

1. Write a captioned photo folder: square crops of the photos, `metadata.jsonl` with a caption per image (or, with
   `--format parquet`, the same rows as a Hugging Face dataset written with `Dataset.to_parquet`).
2. `refine-distill --teacher builtin --labelled PHOTOS --recipe guided` for a few steps: the control maps (Canny by
   default, `--preprocessor`) are made on the fly from the photos.
3. `refine-export RUN -o MODEL` (ONNX with its parity report), then one image from the exported model with the
   Canny map of a photo as the control.

The built-in teacher was trained on 64-px coloured shapes, not on photos, and the run is a few steps long: the
images it makes are meaningless. The example proves the path from a photo folder to an exported model; with your own
teacher, the same commands with `--teacher DIR` and many more images and steps make a real student.
"""

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout without installing
    sys.path.insert(0, str(REPO))

from refine_control.atomic import write_json, write_text  # noqa: E402
from refine_control.cli_utils import offline_env, run_cli  # noqa: E402
from refine_control.errors import ConfigError  # noqa: E402

# Photographs shipped in the scikit-image wheel (skimage/data/), with a caption each. Grey ones become RGB.
PHOTOS = {
    "astronaut.png": "a portrait of an astronaut in a spacesuit in front of a flag",
    "chelsea.png": "a ginger tabby cat looking up",
    "coffee.png": "a cup of coffee on a saucer with a spoon",
    "rocket.jpg": "a rocket on a launch pad under a clear sky",
    "motorcycle_left.png": "a motorcycle parked in a garage",
    "camera.png": "a black and white photo of a man with a camera on a tripod",
    "coins.png": "a black and white photo of old coins on a table",
    "moon.png": "craters on the surface of the moon",
    "hubble_deep_field.jpg": "galaxies in a deep space telescope image",
    "ihc.png": "a microscope image of stained tissue",
    "retina.jpg": "a photograph of the back of a human eye",
    "brick.png": "a close-up photo of a brick wall",
    "grass.png": "a close-up photo of grass",
    "gravel.png": "a close-up photo of gravel",
    "cell.png": "a microscope image of a cell",
    "motorcycle_right.png": "a motorcycle in a garage seen from the right",
}
CROPS = ("centre", "top-left", "top-right", "bottom-left", "bottom-right")


def skimage_photo(name: str) -> np.ndarray:
    """One photo of the scikit-image wheel as (H, W, 3) uint8, read from the installed file (never fetched)."""
    import skimage.data
    from PIL import Image

    path = Path(skimage.data.__file__).parent / name
    if not path.is_file():
        raise ConfigError(f"{path} is not in this scikit-image install", hint="pip install 'scikit-image>=0.22'")
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def square_crop(image: np.ndarray, where: str, size: int) -> np.ndarray:
    """A square crop (side: the shorter side; for the corners 3/4 of it) resized to `size`² with Lanczos."""
    from PIL import Image

    h, w = image.shape[:2]
    side = min(h, w) if where == "centre" else 3 * min(h, w) // 4
    top = {"centre": (h - side) // 2, "top-left": 0, "top-right": 0}.get(where, h - side)
    left = {"centre": (w - side) // 2, "top-left": 0, "bottom-left": 0}.get(where, w - side)
    crop = Image.fromarray(image[top : top + side, left : left + side])
    return np.asarray(crop.resize((size, size), Image.Resampling.LANCZOS))


def write_photo_folder(root: Path, photos: int, crops: int, size: int) -> list[dict[str, str]]:
    """`root`/NNNN.png and `root`/metadata.jsonl (file_name, text): the layout `--labelled` reads."""
    from PIL import Image

    if not 1 <= photos <= len(PHOTOS) or not 1 <= crops <= len(CROPS):
        raise ConfigError(f"--photos must be in 1..{len(PHOTOS)} and --crops in 1..{len(CROPS)}")
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, caption in list(PHOTOS.items())[:photos]:
        image = skimage_photo(name)
        for where in CROPS[:crops]:
            file_name = f"{len(rows):04d}.png"
            Image.fromarray(square_crop(image, where, size)).save(root / file_name)
            rows.append({"file_name": file_name, "text": caption})
    write_text(root / "metadata.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    return rows


def write_parquet(folder: Path, rows: list[dict[str, str]], out: Path) -> Path:
    """The same rows as a Hugging Face dataset written to parquet with `Dataset.to_parquet`, the images embedded as
    bytes (a dataset whose image column holds file paths would write the paths only)."""
    from datasets import Dataset, Features, Image, Value

    features = Features({"image": Image(), "text": Value("string")})
    images = [{"bytes": (folder / r["file_name"]).read_bytes(), "path": r["file_name"]} for r in rows]
    dataset = Dataset.from_dict({"image": images, "text": [r["text"] for r in rows]}, features=features)
    out.mkdir(parents=True, exist_ok=True)
    dataset.to_parquet(str(out / "train-00000-of-00001.parquet"))
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="benchmarks/own_data_example.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("runs/own-data"), help="where everything is written")
    parser.add_argument("--format", choices=("folder", "parquet"), default="folder", help="how the photos are stored")
    parser.add_argument("--photos", type=int, default=len(PHOTOS), help=f"photos used (1..{len(PHOTOS)})")
    parser.add_argument("--crops", type=int, default=len(CROPS), help=f"square crops per photo (1..{len(CROPS)})")
    parser.add_argument("--image-size", type=int, default=128, help="side of the stored crops in pixels")
    parser.add_argument("--steps", type=int, default=40, help="refine-distill --max-steps")
    parser.add_argument("--batch-size", type=int, default=8, help="refine-distill --batch-size")
    parser.add_argument("--student", default="compact-wide", help="refine-distill --student")
    parser.add_argument("--exporter", default="dynamo", help="refine-export --exporter")
    parser.add_argument("--parity-samples", type=int, default=4, help="refine-export --parity-samples")
    parser.add_argument("--threads", type=int, default=None, help="refine-export --threads")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier example in --work")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    offline_env()

    def body() -> int:
        from refine_control.cli import main as distill
        from refine_control.export.cli import main as export

        work = args.work
        photos, run, model = work / "photos", work / "run", work / "model"
        rows = write_photo_folder(photos, args.photos, args.crops, args.image_size)
        print(f"1. {len(rows)} captioned crops of {args.photos} scikit-image photos in {photos}")
        labelled = write_parquet(photos, rows, work / "parquet") if args.format == "parquet" else photos
        common = ["--overwrite"] if args.overwrite else []
        distill_args = ["--teacher", "builtin", "--labelled", str(labelled), "--recipe", "guided", "-o", str(run),
                        "--student", args.student, "--max-steps", str(args.steps), "--batch-size", str(args.batch_size),
                        "--checkpoint-every", str(max(1, args.steps)), "-q", *common]  # fmt: skip
        print("2. refine-distill " + shlex.join(distill_args))
        if distill(distill_args) != 0:
            return 2
        export_args = [str(run), "-o", str(model), "--exporter", args.exporter, "--parity-samples",
                       str(args.parity_samples), "-q", *common]  # fmt: skip
        if args.threads is not None:
            export_args += ["--threads", str(args.threads)]
        if args.format == "parquet":  # the export's calibration and parity samples come from an image folder
            export_args += ["--data", str(photos)]
        print("3. refine-export " + shlex.join(export_args))
        if export(export_args) != 0:
            return 2
        sample = generate_sample(model, photos / rows[0]["file_name"], rows[0]["text"], work / "sample.png")
        summary = {"images": len(rows), "photos": args.photos, "format": args.format, "run": str(run),
                   "model": str(model), "sample": str(sample), "quality": "meaningless: built-in shapes teacher, "
                   f"{args.steps} steps"}  # fmt: skip
        write_json(work / "example.json", summary)
        print(f"   one image from the exported model: {sample} (meaningless: see the docstring)")
        return 0

    return run_cli(body)


def generate_sample(model: Path, photo: Path, prompt: str, out: Path) -> Path:
    """One image from the exported model, the photo's Canny map as the control: `python -m refine_control.runtime
    MODEL --prompt ... --control PHOTO --preprocess -o OUT` (the model's own preprocessor, as in training)."""
    from refine_control.runtime.__main__ import main as runtime

    args = [str(model), "--prompt", prompt, "--control", str(photo), "--preprocess", "-o", str(out), "--threads", "1"]
    print("4. python -m refine_control.runtime " + shlex.join(args))
    if runtime(args) != 0:
        raise ConfigError(f"the exported model in {model} did not generate an image")
    return out


if __name__ == "__main__":
    raise SystemExit(main())
