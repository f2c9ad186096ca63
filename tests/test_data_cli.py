"""`refine-distill` on the datasets data layer: shards streamed by two processes and resumed at the exact sample,
the lazy bad-file policy, and bad data paths reported as one `error:` line with exit code 2."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import write_image_folder, write_parquet_shards

from refine_control.cli import main


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def _args(teacher: Path, data: Path, run: Path, *extra: str) -> list[str]:
    return [
        "--recipe", "guided", "--teacher", str(teacher), "--labelled", str(data), "--output-dir", str(run),
        "--student", "compact-small", "--batch-size", "2", "--stage2-steps", "0", "--log-every", "1", "-q", *extra,
    ]  # fmt: skip


def _rows(run: Path) -> list[dict]:
    return [
        {k: v for k, v in json.loads(line).items() if k != "sec_per_step"}
        for line in (run / "metrics.jsonl").read_text().splitlines()
    ]


def _torchrun(argv: list[str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [*cmd, "-m", "refine_control.cli", *argv], capture_output=True, text=True, timeout=600, env=env
    )


def test_two_processes_stream_parquet_shards_and_resume_at_the_exact_sample(tiny_pipeline_dir, tmp_path):
    """4 shards, 2 processes: each streams its own 2 shards. A run stopped after its step-2 checkpoint and resumed
    (a new pair of processes that reads past the rows already used) ends with the same weights and the same loss
    terms at every step as the run that went straight through."""
    data = write_parquet_shards(tmp_path / "pq", 16, shards=4)
    extra = ("--streaming", "--shuffle-buffer", "4", "--max-steps", "4", "--checkpoint-every", "2")
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    result = _torchrun(_args(tiny_pipeline_dir, data, straight, *extra))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((straight / "metrics.json").read_text())
    assert summary["world_size"] == 2 and summary["replicas_in_sync"] is True
    resolved = json.loads((straight / "config.json").read_text())["resolved"]
    assert resolved["labelled_images"] is None  # streaming: never counted
    shutil.copytree(straight, crashed)
    shutil.rmtree(crashed / "student")
    (crashed / "metrics.json").unlink()
    shutil.rmtree(crashed / "checkpoints" / "step-000004", ignore_errors=True)
    result = _torchrun([*_args(tiny_pipeline_dir, data, crashed, *extra), "--resume"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((crashed / "metrics.json").read_text())["steps"]["resumed_from"] == 2
    assert _rows(crashed) == _rows(straight)
    for name in ("unet", "controlnet"):
        a = load_file(next((straight / "student" / name).glob("*.safetensors")))
        b = load_file(next((crashed / "student" / name).glob("*.safetensors")))
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_a_bad_image_is_skipped_and_named_or_stops_the_run_past_the_fraction(tiny_pipeline_dir, tmp_path, capsys):
    data = write_image_folder(tmp_path / "f", 12)
    (data / "0005.png").write_bytes((data / "0005.png").read_bytes()[:40])
    run = tmp_path / "run"
    # 1 bad image of 12 is 8%: within --max-bad-fraction 0.1, skipped and named.
    assert (
        main(
            _args(tiny_pipeline_dir, data, run, "--max-steps", "6", "--validate", "lazy", "--max-bad-fraction", "0.1")
        )
        == 0
    )
    named = (run / "logs" / "bad_files.txt").read_text().splitlines()
    assert [Path(line.split("\t")[0]).name for line in named] == ["0005.png"]
    # The default 0.1%: the run stops with one error line naming the count and where the files are listed.
    capsys.readouterr()
    code = main(_args(tiny_pipeline_dir, data, tmp_path / "strict", "--max-steps", "6", "--validate", "lazy"))
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "error: 1 of 12 rows are undecodable" in err and "bad_files.txt" in err


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("neither", "is neither an image folder nor parquet / webdataset shards"),
        ("caption_column", "has no caption column 'prompt'"),
        ("schemas", "parquet shards with different schemas"),
        ("streaming_upfront", "`--validate upfront` decodes the whole dataset"),
    ],
)
def test_bad_data_input_gives_one_error_line_and_exit_code_2(tiny_pipeline_dir, tmp_path, capsys, case, message):
    data = write_parquet_shards(tmp_path / "pq", 4)
    extra = ["--max-steps", "1"]
    if case == "neither":
        data = tmp_path / "notes"
        data.mkdir()
        (data / "readme.md").write_text("# not data")
    elif case == "caption_column":
        extra += ["--caption-column", "prompt"]
    elif case == "schemas":
        write_parquet_shards(tmp_path / "other", 2, shards=1, caption_column="prompt")
        (tmp_path / "other" / "train-00000.parquet").rename(data / "train-00009.parquet")
    else:
        extra += ["--streaming", "--validate", "upfront"]
    code = main(_args(tiny_pipeline_dir, data, tmp_path / "run", *extra))
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], err
    assert "hint:" in err and "Traceback" not in err


def test_a_checkpoint_written_by_two_processes_resumes_on_one(tiny_pipeline_dir, tmp_path):
    """2 processes × 1 micro-batch and 1 process × 2 micro-batches (`--grad-accum 2`) draw the same samples with the
    same noise (a sample's data and draws depend on its index in the step's global batch), and DDP averages what
    accumulation sums, so both make the same steps. A run checkpointed at step 2 on 2 processes and resumed on 1 with
    `--grad-accum 2` (allowed: the global batch is unchanged) logs the same terms at steps 3-4 as a run made on 1
    process throughout (1e-5 relative, as for --grad-accum alone; float rounding of the all-reduce)."""
    data = write_image_folder(tmp_path / "f", 12)
    common = ("--max-steps", "4", "--checkpoint-every", "2", "--no-normalize-features", "--learning-rate", "1e-3")
    one, moved = tmp_path / "one", tmp_path / "moved"
    assert main(_args(tiny_pipeline_dir, data, one, *common, "--grad-accum", "2")) == 0
    result = _torchrun(_args(tiny_pipeline_dir, data, moved, *common))
    assert result.returncode == 0, result.stderr[-3000:]
    shutil.rmtree(moved / "student")
    (moved / "metrics.json").unlink()
    assert main([*_args(tiny_pipeline_dir, data, moved, *common, "--grad-accum", "2"), "--resume"]) == 0
    summary = json.loads((moved / "metrics.json").read_text())
    assert summary["world_size"] == 1 and summary["steps"]["resumed_from"] == 2
    a, b = _rows(one)[2:], _rows(moved)[2:]
    assert [r["step"] for r in a] == [r["step"] for r in b] == [3, 4]
    for ra, rb in zip(a, b, strict=True):
        for term in ("task", "output", "feature"):
            assert rb[term] == pytest.approx(ra[term], rel=1e-5), (ra["step"], term)


def test_data_workers_do_not_change_the_run(tiny_pipeline_dir, tmp_path):
    """The same 3 steps with the data loaded in the training process and in 2 data workers (their own
    interpreters): every logged term is identical, since a micro-batch's samples and draws never depend on who
    made it."""
    data = write_parquet_shards(tmp_path / "pq", 8, shards=2)
    runs = {}
    for workers in (0, 2):
        run = tmp_path / f"w{workers}"
        assert main(_args(tiny_pipeline_dir, data, run, "--max-steps", "3", "--num-workers", str(workers))) == 0
        runs[workers] = _rows(run)
    assert len(runs[0]) == 3 and runs[0] == runs[2]
