#!/usr/bin/env bash
# GPU smoke test: a few bf16 distillation steps of an SD1.5-size teacher → student (random weights, 512 px) with
# 1 and 2 processes (DDP, and FSDP2 sharding the student), printing the step time and peak GPU memory of each.
# FSDP2's checkpoints and N→M resume are tested on 2 CPU processes by tests/test_fsdp.py (also run here).
#
#   bash benchmarks/gpu_smoke.sh                 # needs CUDA; 2 processes only with >= 2 GPUs
#   STUDENT=compact-small STEPS=4 BATCH=2 bash benchmarks/gpu_smoke.sh
#
# Nothing is downloaded: the teacher is built from SD1.5's configs with random weights, the data is built-in shapes
# upscaled to 512 px in parquet shards (benchmarks/data.py). Work files go to $WORK (default: a temp dir).
# Not yet run on a GPU machine: record its figures here when one is lent.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
STUDENT=${STUDENT:-compact-wide}
STEPS=${STEPS:-6}
BATCH=${BATCH:-4}
WORKERS=${WORKERS:-4}
WORK=${WORK:-$(mktemp -d -t refine-gpu-smoke-XXXX)}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

GPUS=$(nvidia-smi -L 2>/dev/null | wc -l || true)
if [[ "${GPUS:-0}" -lt 1 ]]; then
    echo "error: no CUDA device (nvidia-smi lists none)" >&2
    exit 2
fi
echo "GPUs: $GPUS; work dir: $WORK"

# 1. A random SD1.5-size teacher (UNet 860 M + ControlNet 361 M params), saved in fp16.
if [[ ! -f "$WORK/teacher/model_index.json" ]]; then
    "$PYTHON" - "$WORK/teacher" <<'EOF'
import sys

import torch
from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, StableDiffusionControlNetPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from refine_control.builtin.tokenizer import build_clip_tokenizer

torch.manual_seed(0)
unet = UNet2DConditionModel.from_config({"cross_attention_dim": 768, "sample_size": 64})
controlnet = ControlNetModel.from_unet(unet)
vae = AutoencoderKL.from_config({
    "block_out_channels": (128, 256, 512, 512), "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4, "latent_channels": 4, "layers_per_block": 2, "sample_size": 512,
})
text = CLIPTextModel(CLIPTextConfig(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu",
))
pipe = StableDiffusionControlNetPipeline(
    vae=vae, text_encoder=text, tokenizer=build_clip_tokenizer(77), unet=unet, controlnet=controlnet,
    scheduler=DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"),
    safety_checker=None, feature_extractor=None, requires_safety_checker=False,
)
pipe.to(torch.float16).save_pretrained(sys.argv[1])
print("teacher saved to", sys.argv[1])
EOF
fi

# 2. Data: 256 built-in shapes as 512 px JPEGs in parquet shards.
if [[ ! -d "$WORK/data/parquet" ]]; then
    "$PYTHON" - "$WORK/data" <<'EOF'
import sys
from pathlib import Path

sys.path.insert(0, "benchmarks")
from data import write_shards

Path(sys.argv[1]).mkdir(parents=True, exist_ok=True)
print("data in", write_shards(Path(sys.argv[1]), 256, 512, 4, 0))
EOF
fi

COMMON=(--teacher "$WORK/teacher" --labelled "$WORK/data/parquet" --student "$STUDENT" --resolution 512
        --mixed-precision bf16 --batch-size "$BATCH" --max-steps "$STEPS" --stage2-steps 0 --log-every 1
        --warmup-steps 0 --checkpoint-every 1000 --num-workers "$WORKERS" --overwrite -q)

report() {  # name, run dir, memory log
    "$PYTHON" - "$@" <<'EOF'
import json, statistics, sys
name, run, mem = sys.argv[1:4]
rows = [json.loads(l) for l in open(f"{run}/metrics.jsonl")]
step = statistics.median(r["sec_per_step"] for r in rows[1:] or rows)
peak = max((int(x.split()[0]) for x in open(mem) if x.strip() and x.split()[0].isdigit()), default=0)
print(f"{name}: {step:.3f} s/step (median after the first), peak GPU memory {peak} MiB over all GPUs' max")
EOF
}

run() {  # name, launcher...
    local name=$1; shift
    local mem="$WORK/$name.mem"
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 > "$mem" &
    local smi=$!
    "$@" -o "$WORK/runs/$name"
    kill "$smi" 2>/dev/null || true
    report "$name" "$WORK/runs/$name" "$mem"
}

# 3. One process, then DDP and FSDP2 on two (FSDP2 on one process where there is one GPU).
FSDP=("$PYTHON" -m accelerate.commands.launch --use_fsdp --fsdp_version 2 --mixed_precision bf16)
run "1-process-bf16" "$PYTHON" -m refine_control.cli "${COMMON[@]}"
if [[ "$GPUS" -ge 2 ]]; then
    run "2-process-ddp-bf16" "$PYTHON" -m accelerate.commands.launch --multi_gpu --num_processes 2 \
        -m refine_control.cli "${COMMON[@]}"
    run "2-process-fsdp2-bf16" "${FSDP[@]}" --num_processes 2 -m refine_control.cli "${COMMON[@]}"
else
    echo "one GPU: the 2-process runs are skipped"
    run "1-process-fsdp2-bf16" "${FSDP[@]}" --num_processes 1 -m refine_control.cli "${COMMON[@]}"
fi
"$PYTHON" -m pytest tests/test_fsdp.py -q
