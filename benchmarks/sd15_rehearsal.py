#!/usr/bin/env python
"""The SD1.5 rehearsal: the real console commands, end to end, on a teacher of SD1.5 geometry with random weights.

    python benchmarks/sd15_rehearsal.py --size 256 --results-name sd15/rehearsal-256
    python benchmarks/sd15_rehearsal.py --size 64 --reduced --workdir runs/sd15-small   # the slow test's size

1. builds the SD1.5 UNet, CLIP ViT-L/14 text encoder, SD VAE and a canny ControlNet (3-channel condition) from
   their published configs (benchmarks/latency/cases.py) with seeded random weights (nothing can be downloaded
   here), and saves them as a diffusers pipeline dir and as single-file checkpoints (`model.safetensors` in the
   original LDM layout, `cn.safetensors`, plus a configs-only dir for `--teacher-config`);
2. writes a few captioned images (`metadata.jsonl`) at `--size`;
3. runs, each as a subprocess, the commands a user would: `refine-distill --teacher DIR` (compact student, fp32 and
   bf16 autocast), `refine-distill --from RUN --few-step`, `refine-export --int8` (its parity report), and
   `refine-serve` with one image generated through `POST /v1/generate`; optionally `refine-distill` again from
   the single-file checkpoints;
4. times one image in ONNX Runtime with the exported SD VAE decoder and with a random-weight `AutoencoderTiny`
   (TAESD's default config) exported to ONNX in its place.

Before each training command the tool's own `--dry-run` memory estimate is read; a command whose estimate plus
`--margin` GiB exceeds the memory available now is skipped and recorded as skipped (the machine is shared).
Each command's peak RSS is the kernel's `ru_maxrss` of that child (`os.wait4`). Random weights: the result proves
the code path, the memory and the time per step, not image quality.

`--reduced` keeps SD1.5's block structure (4 UNet levels, 2 layers per block, cross-attention at 3 levels, VAE
factor 8, 77-token CLIP) with every channel width divided by 10, 8 norm groups and a 2-layer, 64-wide text encoder: a smaller
model, *not* the SD1.5 geometry; the slow test uses it.
"""

import argparse
import base64
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout without installing
    sys.path.insert(0, str(REPO))

from refine_control.cli_utils import run_cli  # noqa: E402
from refine_control.errors import ConfigError  # noqa: E402

GIB = 1 << 30
BIN = Path(sys.executable).parent
PROMPTS = ("a red circle on a blue square", "a yellow triangle", "two green stripes", "a white ring on black")


# ---- 1. the teacher ------------------------------------------------------------------------------------------------
def sd15_configs(reduced: bool) -> dict[str, dict[str, Any]]:
    """The published SD1.5 configs, or the `--reduced` ones (same structure, channels ÷ 10)."""
    from benchmarks.latency.cases import SD15_CONTROLNET, SD15_SCHEDULER, SD15_TEXT, SD15_UNET, SD15_VAE

    configs = {"unet": dict(SD15_UNET), "controlnet": dict(SD15_CONTROLNET), "vae": dict(SD15_VAE),
               "text": dict(SD15_TEXT), "scheduler": dict(SD15_SCHEDULER)}  # fmt: skip
    if reduced:
        text = {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
                "projection_dim": 64}  # fmt: skip
        # 8 groups: at 64 px the lowest level is 1×1, and GroupNorm needs more than one value per group in training.
        denoiser = {"block_out_channels": (32, 64, 128, 128), "cross_attention_dim": 64, "attention_head_dim": 4,
                    "norm_num_groups": 8}  # fmt: skip
        configs["text"] |= text
        configs["unet"] |= denoiser
        configs["controlnet"] |= denoiser | {"conditioning_embedding_out_channels": (16, 16, 32, 32)}
        configs["vae"] |= {"block_out_channels": (32, 64, 128, 128), "norm_num_groups": 8}
    return configs


def build_teacher(out: Path, reduced: bool, single_file: bool) -> None:
    """Save the teacher as `out/teacher` (diffusers) and, with `single_file`, `out/single/{model,cn}.safetensors`
    and `out/single/config` (configs only). Runs in its own process so its memory is returned at once."""
    import torch
    from diffusers import (
        AutoencoderKL,
        ControlNetModel,
        DDIMScheduler,
        StableDiffusionControlNetPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    from refine_control.builtin.tokenizer import build_clip_tokenizer

    c = sd15_configs(reduced)
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(c["unet"])
    controlnet = ControlNetModel.from_config(c["controlnet"])
    # A fresh ControlNet's output convolutions are zero; small random values make the control path carry signal.
    for conv in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
        torch.nn.init.normal_(conv.weight, std=0.02)
    pipeline = StableDiffusionControlNetPipeline(
        vae=AutoencoderKL.from_config(c["vae"]),
        text_encoder=CLIPTextModel(CLIPTextConfig(**c["text"])),
        tokenizer=build_clip_tokenizer(c["text"]["max_position_embeddings"]),
        unet=unet,
        controlnet=controlnet,
        scheduler=DDIMScheduler(**c["scheduler"]),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    tmp = out / "teacher.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    pipeline.save_pretrained(tmp)
    tmp.rename(out / "teacher")
    if single_file:
        from safetensors.torch import save_file

        sys.path.insert(0, str(REPO / "tests"))
        from single_file_models import pipeline_to_original

        single = out / "single"
        shutil.rmtree(single, ignore_errors=True)
        single.mkdir()
        save_file(pipeline_to_original(pipeline), str(single / "model.safetensors"))
        state = {k: v.contiguous() for k, v in controlnet.state_dict().items()}
        save_file(state, str(single / "cn.safetensors"))
        shutil.copytree(out / "teacher", single / "config", ignore=shutil.ignore_patterns("*.safetensors"))


def write_data(folder: Path, size: int, count: int = 4) -> Path:
    """`count` captioned images of simple shapes (edges for the canny preprocessor), metadata.jsonl convention."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        image = Image.new("RGB", (size, size), (20 * i, 40, 90))
        draw = ImageDraw.Draw(image)
        q = size // 8
        draw.ellipse((q * (1 + i % 2), q, size - 2 * q, size - q * (1 + i % 3)), fill=(220, 60 + 40 * i, 40))
        draw.rectangle((q, size // 2, size // 2, size - q), outline=(250, 250, 250), width=max(1, size // 64))
        image.save(folder / f"{i}.png")
        rows.append({"file_name": f"{i}.png", "text": PROMPTS[i % len(PROMPTS)]})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


# ---- measured subprocesses -----------------------------------------------------------------------------------------
def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def run_measured(argv: list[str], log: Path, env: dict[str, str]) -> dict[str, Any]:
    """Run `argv` (niced) to completion; its wall seconds, exit code and peak RSS (the child's ru_maxrss)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log.open("wb") as out:
        proc = subprocess.Popen(["nice", "-n", "10", *argv], stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    result = {
        "command": " ".join(str(a) for a in argv),
        "exit_code": proc.returncode,
        "wall_s": round(time.perf_counter() - start, 1),
        "peak_rss_gib": round(usage.ru_maxrss * 1024 / GIB, 2),
    }
    if proc.returncode != 0:
        result["log_tail"] = log.read_text(errors="replace")[-2000:]
    return result


def memory_estimate(argv: list[str], log: Path, env: dict[str, str]) -> float:
    """The GiB of `refine-distill ... --dry-run`'s memory estimate."""
    result = run_measured([*argv, "--dry-run"], log, env)
    text = log.read_text(errors="replace")
    match = re.search(r"memory estimate: ([0-9.]+) GiB", text)
    if result["exit_code"] != 0 or match is None:
        raise ConfigError(f"the dry run failed: {' '.join(argv)}\n{text[-2000:]}")
    return float(match.group(1))


def train_stage(name: str, argv: list[str], run: Path, work: Path, env: dict[str, str], margin: float) -> dict:
    """One refine-distill command, after its dry-run estimate was checked against the memory available now."""
    estimate = memory_estimate(argv, work / "logs" / f"{name}.dry-run.log", env)
    available = mem_available() / GIB
    record: dict[str, Any] = {"memory_estimate_gib": estimate, "mem_available_gib_before": round(available, 1)}
    if estimate + margin > available:
        record["skipped"] = (
            f"estimate {estimate:.1f} GiB + margin {margin:.0f} GiB > {available:.1f} GiB available now (shared machine)"
        )
        print(f"[rehearsal] {name}: skipped ({record['skipped']})", flush=True)
        return record
    print(f"[rehearsal] {name}: estimate {estimate:.1f} GiB, available {available:.1f} GiB; running", flush=True)
    record |= run_measured(argv, work / "logs" / f"{name}.log", env)
    metrics = run / "metrics.json"
    if record["exit_code"] == 0 and metrics.is_file():
        m = json.loads(metrics.read_text())
        record["sec_per_step_median"] = m.get("sec_per_step_median")
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        record["sec_per_step"] = [round(r["sec_per_step"], 2) for r in rows if "sec_per_step" in r]
        record["trainable_params"] = m.get("trainable_params")
    return record


# ---- serving -------------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http(url: str, body: dict | None = None, timeout: float = 10) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def serve_one_image(model: Path, control: Path, work: Path, env: dict[str, str], timeout: float) -> dict[str, Any]:
    """Start `refine-serve MODEL`, generate one image through `POST /v1/generate`, stop it; times and peak RSS."""
    port = _free_port()
    log = work / "logs" / "serve.log"
    start = time.perf_counter()
    argv = [str(BIN / "refine-serve"), str(model), "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(["nice", "-n", "10", *argv], stdout=out, stderr=subprocess.STDOUT, env=env)
    record: dict[str, Any] = {"command": " ".join(argv)}
    try:
        url = f"http://127.0.0.1:{port}"
        while True:
            if proc.poll() is not None or time.perf_counter() - start > timeout:
                raise ConfigError(f"refine-serve did not come up: {log.read_text(errors='replace')[-2000:]}")
            try:
                if _http(url + "/healthz", timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(2)
        record["startup_s"] = round(time.perf_counter() - start, 1)
        body = {"prompt": PROMPTS[0], "control_image": base64.b64encode(control.read_bytes()).decode(),
                "seed": 0, "response_format": "b64_json"}  # fmt: skip
        tic = time.perf_counter()
        status, reply = _http(url + "/v1/generate", body, timeout=timeout)
        record["request_s"] = round(time.perf_counter() - tic, 2)
        record["http_status"] = status
        if status == 200:
            from PIL import Image

            answer = json.loads(reply)
            image = Image.open(io.BytesIO(base64.b64decode(answer["image"])))
            image.save(work / "served.png")
            record |= {"elapsed_s": answer["elapsed_s"], "steps": answer["steps"], "image_size": list(image.size)}
        else:
            record["error"] = reply[:500].decode(errors="replace")
        models = json.loads(_http(url + "/v1/models")[1])
        record["served"] = {k: models.get(k) for k in ("precision", "sampling") if k in models} or models
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        _, status_code, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status_code)
        record["peak_rss_gib"] = round(usage.ru_maxrss * 1024 / GIB, 2)
        record["exit_code"] = proc.returncode
    return record


# ---- decoders ------------------------------------------------------------------------------------------------------
def export_tiny_decoder(path: Path, latent_shape: tuple[int, ...]) -> Path:
    """A random-weight diffusers `AutoencoderTiny()` (TAESD's default config) decoder as ONNX for `latent_shape`,
    with the input name of the exported VAE decoder so it can stand in for it."""
    import torch
    from diffusers import AutoencoderTiny

    from refine_control.runtime.layout import VAE_DECODER_INPUTS

    torch.manual_seed(0)
    vae = AutoencoderTiny().eval()

    class Decode(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.vae = vae

        def forward(self, latents: torch.Tensor) -> torch.Tensor:
            return self.vae.decode(latents).sample

    latents = torch.zeros(latent_shape)
    with torch.no_grad():
        program = torch.onnx.export(
            Decode(), (latents,), dynamo=True, input_names=list(VAE_DECODER_INPUTS), output_names=["sample"]
        )
    program.save(str(path))
    return path


def time_images(model: Path, work: Path, repeats: int) -> dict[str, Any]:
    """One image through `OnnxControlNetPipeline` (the precision refine-serve picks), with the model's VAE decoder
    and with the tiny decoder's session in its place; the decoders alone as well. Median seconds."""
    import numpy as np
    from PIL import Image

    from refine_control.runtime import OnnxControlNetPipeline
    from refine_control.runtime.session import ort_session
    from refine_control.runtime.timing import measure

    pipe = OnnxControlNetPipeline(model, "auto")
    control = np.asarray(Image.open(work / "data" / "0.png").convert("RGB"))
    size = pipe.resolution
    latents = pipe.initial_noise(0, size, size)
    out: dict[str, Any] = {"precision": pipe.precision, "steps": pipe.default_steps, "resolution": size}
    sd_decoder = pipe.sessions["vae_decoder"]
    tiny = ort_session(str(export_tiny_decoder(work / "tiny_decoder.onnx", latents.shape)), threads=pipe.num_threads)
    out["tiny_decoder_file_mib"] = round((work / "tiny_decoder.onnx").stat().st_size / (1 << 20), 2)
    for name, session in (("sd_vae", sd_decoder), ("tiny_random", tiny)):
        pipe.sessions["vae_decoder"] = session
        image = measure(lambda: pipe(PROMPTS[0], control, seed=0), warmup=1, repeats=repeats)
        decode = measure(lambda: pipe.decode(latents), warmup=1, repeats=repeats)
        out[name] = {"image_s": round(image.median_s, 3), "decode_s": round(decode.median_s, 3),
                     "decode_share": round(decode.median_s / image.median_s, 3)}  # fmt: skip
    pipe.sessions["vae_decoder"] = sd_decoder
    return out


# ---- the rehearsal -------------------------------------------------------------------------------------------------
def _sizes(folder: Path) -> dict[str, float]:
    """MiB of every file under `folder` (relative names)."""
    return {
        str(p.relative_to(folder)): round(p.stat().st_size / (1 << 20), 1)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.stat().st_size > (1 << 20)
    }


def rehearse(args: argparse.Namespace, record: dict[str, Any]) -> dict[str, Any]:
    """Fill `record` step by step (what it holds so far stays valid when a step raises)."""
    work: Path = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    record["mem_available_gib_at_start"] = round(mem_available() / GIB, 1)

    marker = work / "teacher.json"
    want = {"reduced": args.reduced, "single_file": args.single_file}
    if not (marker.is_file() and json.loads(marker.read_text()) == want and (work / "teacher").is_dir()):
        shutil.rmtree(work / "teacher", ignore_errors=True)
        argv = [sys.executable, __file__, "--build-teacher", "--workdir", str(work)]
        argv += ["--reduced"] * args.reduced + ["--single-file"] * args.single_file
        record["build_teacher"] = run_measured(argv, work / "logs" / "build.log", env)
        if record["build_teacher"]["exit_code"] != 0:
            return record
        marker.write_text(json.dumps(want))
    record["teacher_files_mib"] = _sizes(work / "teacher")
    if args.single_file:
        record["single_files_mib"] = {k: v for k, v in _sizes(work / "single").items() if "/" not in k}
    data = write_data(work / "data", args.size)

    distill = str(BIN / "refine-distill")
    common = ["--labelled", str(data), "--resolution", str(args.size), "--batch-size", "1", "--log-every", "1",
              "--checkpoint-every", "100000", "--overwrite", "-q"]  # fmt: skip
    stages: dict[str, Any] = {}
    compact = work / "runs" / "compact-fp32"
    teacher = ["--teacher", str(work / "teacher")]
    base = [distill, *teacher, *common, "--recipe", "guided", "--max-steps", str(args.steps)]
    stages["compact_fp32"] = train_stage("compact_fp32", [*base, "-o", str(compact)], compact, work, env, args.margin)
    if not args.skip_bf16:
        run = work / "runs" / "compact-bf16"
        argv = [*base, "--mixed-precision", "bf16", "-o", str(run)]
        stages["compact_bf16"] = train_stage("compact_bf16", argv, run, work, env, args.margin)
    if args.single_file:
        run = work / "runs" / "compact-single-file"
        single = work / "single"
        argv = [distill, "--teacher", str(single / "model.safetensors"), "--controlnet", str(single / "cn.safetensors"),
                "--teacher-config", str(single / "config"), *common, "--recipe", "guided", "--max-steps", "1",
                "-o", str(run)]  # fmt: skip
        stages["compact_single_file"] = train_stage("compact_single_file", argv, run, work, env, args.margin)
    record["stages"] = stages
    if stages["compact_fp32"].get("exit_code") != 0:
        return record
    few = work / "runs" / "few-step"
    argv = [distill, "--from", str(compact), "--few-step", "--max-steps", str(args.few_step_steps), "--batch-size",
            "1", "--log-every", "1", "--checkpoint-every", "100000", "--overwrite", "-q", "-o", str(few)]  # fmt: skip
    stages["few_step"] = train_stage("few_step", argv, few, work, env, args.margin)
    if stages["few_step"].get("exit_code") != 0:
        return record
    record["student_files_mib"] = _sizes(few / "student")

    model = work / "model"
    argv = [str(BIN / "refine-export"), str(few), "-o", str(model), "--int8", "--calibration-samples",
            str(args.calibration_samples), "--parity-samples", "1", "--overwrite", "--allow-degraded", "-q"]  # fmt: skip
    print(f"[rehearsal] export: {mem_available() / GIB:.1f} GiB available", flush=True)
    record["export"] = run_measured(argv, work / "logs" / "export.log", env)
    if record["export"]["exit_code"] != 0:
        return record
    record["export"]["files_mib"] = _sizes(model)
    parity = json.loads((model / "parity.json").read_text())
    record["export"]["parity"] = parity
    print("[rehearsal] serve", flush=True)
    record["serve"] = serve_one_image(model, data / "0.png", work, env, args.serve_timeout)
    print("[rehearsal] decoders", flush=True)
    record["image_time"] = time_images(model, work, args.repeats)
    return record


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256, help="training, export and image size (px)")
    parser.add_argument("--workdir", type=Path, default=Path("runs/sd15-rehearsal"), help="teacher, data, runs")
    parser.add_argument("--reduced", action="store_true", help="SD1.5 structure with channels / 10 (not SD1.5)")
    parser.add_argument("--single-file", action="store_true", help="also distil from single-file checkpoints")
    parser.add_argument("--skip-bf16", action="store_true", help="no bf16-autocast run of the compact stage")
    parser.add_argument("--steps", type=int, default=3, help="compact-student steps per run")
    parser.add_argument("--few-step-steps", type=int, default=3, help="few-step stage steps")
    parser.add_argument("--calibration-samples", type=int, default=2, help="refine-export --calibration-samples")
    parser.add_argument("--repeats", type=int, default=3, help="timed images per decoder (after one warm-up)")
    parser.add_argument(
        "--margin",
        type=float,
        default=6.0,
        help="GiB kept free beyond a run's memory estimate (peak RSS exceeded the estimate by up to 5.3 GiB in "
        "results/sd15/rehearsal-256.json)",
    )
    parser.add_argument("--serve-timeout", type=float, default=1800.0, help="seconds for start-up and one image")
    parser.add_argument("--results-name", default=None, help="GROUP/NAME of the result file (none: not written)")
    parser.add_argument("--results-root", type=Path, default=Path("results"), help="where result files go")
    parser.add_argument("--json", type=Path, default=None, help="also write the record here")
    parser.add_argument("--build-teacher", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.build_teacher:
        build_teacher(args.workdir, args.reduced, args.single_file)
        return 0

    def body() -> int:
        from refine_control.results import git_state, machine_info, script_command, split_results_name, write_result

        target = split_results_name(args.results_name) if args.results_name else None
        commit, start = git_state(), time.perf_counter()
        record: dict[str, Any] = {}
        try:
            rehearse(args, record)
        finally:
            if args.json:
                args.json.write_text(json.dumps(record, indent=1))
        wall = time.perf_counter() - start
        failed = [k for k, v in {**record.get("stages", {}), **record}.items() if isinstance(v, dict)
                  and v.get("exit_code") not in (None, 0)]  # fmt: skip
        config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "build_teacher"}
        if target:
            path = write_result(
                target, metrics=record, config=config, seed=0, wall_s=wall, commit=commit, root=args.results_root,
                command=script_command("benchmarks/sd15_rehearsal.py", argv),
                machine=machine_info(threads=os.cpu_count()),
                notes="random weights: proves the code path, memory and time per step, not image quality",
            )  # fmt: skip
            print(f"[rehearsal] wrote {path}", flush=True)
        if failed:
            raise ConfigError(f"rehearsal steps failed: {', '.join(failed)} (logs in {args.workdir}/logs)")
        return 0

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(main())
