"""`export_model(cfg)`: run dir → model dir, every step inside one atomic directory write.

The model dir is built in a sibling temp dir (`atomic_dir`) and takes MODEL's place only when everything is
written and, unless `--allow-degraded`, parity passed. `manifest.json` (hashes, the parity verdict,
`"complete": true`) is the last file written; until then the runtime checks the temp dir against a provisional
manifest held in memory. So a killed export leaves MODEL as it was (the old dir or none; never a missing one
where there was one), and its temp dir has no manifest: it cannot be loaded, and the next export removes it.
Each phase ends with a `fault_point` (refine_control/faults.py) so tests kill the exporter at every one.
"""

import json
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from refine_control.atomic import atomic_dir, write_json
from refine_control.cli_utils import check_output
from refine_control.errors import ConfigError, ExportError, ParityError
from refine_control.export.manifest import build_manifest, source_run, write_manifest
from refine_control.export.mobile import REQUIRED_OPERATORS, mobile_usability, write_required_operators
from refine_control.export.onnx_export import (
    Student,
    export_graphs,
    load_student,
)
from refine_control.export.ort_format import convert_to_ort
from refine_control.export.parity import (
    RecordingPipeline,
    SamplingSettings,
    Variant,
    check_parity,
    generate,
    int8_image_check,
)
from refine_control.export.quantize import Int8Options, convert_fp16, count_ops, quantize_int8
from refine_control.export.samples import Sample, load_samples, run_data_dir
from refine_control.faults import fault_point
from refine_control.models.pipeline_dir import read_recommendation
from refine_control.models.tiny_decoder_dir import load_tiny_decoder
from refine_control.runtime.cpu import cpu_info, decide_reduce_range
from refine_control.runtime.layout import MANIFEST, PARITY, SCHEDULER, TOKENIZER, graph_file
from refine_control.runtime.pipeline import PromptEncoder
from refine_control.runtime.sampling import recommendation_or_default
from refine_control.runtime.session import default_threads
from refine_control.training.config import read_run_config

if TYPE_CHECKING:
    from refine_control.export.cli import ExportConfig

logger = logging.getLogger(__name__)


@dataclass
class ExportResult:
    output_dir: Path
    manifest: dict[str, Any]
    parity: dict[str, Any]


def check_output_dir(cfg: "ExportConfig") -> None:
    """Refuse to touch an existing MODEL dir without --overwrite, and any dir that is not a model dir."""
    out = cfg.output_dir
    check_output(out)  # a dir that cannot be created there fails now, not after the export
    if not out.exists():
        return
    if not out.is_dir():
        raise ConfigError(f"-o {out} exists and is not a directory")
    occupied = any(out.iterdir())
    if occupied and not cfg.overwrite:
        raise ConfigError(f"model dir {out} already exists", hint="pass --overwrite to replace it (only on success)")
    if occupied and not (out / MANIFEST).is_file():
        raise ConfigError(
            f"-o {out} is not empty and is not a refine-export model dir; refusing to replace it",
            hint="choose a new or empty directory",
        )


def _pipeline_facts(student: Student, preprocessor: str) -> dict[str, Any]:
    pipe = student.pipeline
    facts = {
        **student.geometry.to_facts(),
        "vae_scaling_factor": float(pipe.vae.config.scaling_factor),
        "vae_shift_factor": getattr(pipe.vae.config, "shift_factor", None),
        "pad_token_id": int(pipe.tokenizer.pad_token_id),
        "preprocessor": preprocessor,
        "scheduler": type(pipe.scheduler).__name__,
    }
    own = read_recommendation(student.run / "student")
    facts["recommended_sampling"] = recommendation_or_default(
        None if own is None else own.to_json(), f"the student of {student.run}"
    ).to_json()
    if not preprocessor.startswith("aux:"):
        from refine_control.preprocess import get_preprocessor

        facts["control_value_range"] = list(get_preprocessor(preprocessor).value_range)
    return facts


def _write_tokenizer_and_scheduler(student: Student, tmp: Path, prompts: list[str]) -> None:
    pipe = student.pipeline
    pipe.tokenizer.save_pretrained(tmp / "tokenizer")
    if not (tmp / TOKENIZER).is_file():
        raise ExportError("the student's tokenizer did not save a tokenizer.json (a fast tokenizer is needed)")
    write_json(tmp / SCHEDULER, json.loads(pipe.scheduler.to_json_string()))
    # The runtime tokenises without transformers (refine_control/runtime/clip_tokenizer.py); it must give the ids they give.
    encoder = PromptEncoder(
        (tmp / TOKENIZER).read_bytes(), pipe.tokenizer.model_max_length, pipe.tokenizer.pad_token_id
    )
    texts = ["", *prompts, "a much longer prompt, " * 20]
    expected = pipe.tokenizer(texts, padding="max_length", max_length=encoder.max_length, truncation=True).input_ids
    if not np.array_equal(encoder(texts), np.asarray(expected)):
        raise ExportError("the exported tokenizer.json does not reproduce the student's tokenizer ids")


def _finish_tree(root: Path) -> None:
    """Give every file and dir the permissions the umask allows (temp files start private), then fsync them."""
    umask = os.umask(0)
    os.umask(umask)
    for path in sorted(root.rglob("*")):
        if path.is_file():
            path.chmod(0o666 & ~umask)
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        elif path.is_dir():
            path.chmod(0o777 & ~umask)
    root.chmod(0o777 & ~umask)
    for directory in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _calibration_run(
    tmp: Path, manifest: dict[str, Any], samples: list[Sample], settings: SamplingSettings, threads: int
) -> tuple[list[Any], list[np.ndarray]]:
    """Denoiser inputs captured while the exported FP32 pipeline runs on the calibration samples, and its images
    (the reference the INT8 candidates' images are checked against)."""
    recorder = RecordingPipeline(tmp, "fp32", num_threads=threads, manifest=manifest)
    images = generate(recorder, samples, settings)
    return recorder.records["denoiser"], images


def quiet_exporter_logs(verbose: bool = False) -> None:
    """torch configures its loggers when imported; keep the exporter's advisory warnings out of normal runs."""
    level = logging.DEBUG if verbose else logging.ERROR
    for name in ("torch.onnx", "torch._dynamo", "torch.export", "torch.fx", "onnxscript", "onnx_ir"):
        logging.getLogger(name).setLevel(level)
    if not verbose:
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx.*")


def export_model(cfg: "ExportConfig", verbose: bool = False) -> ExportResult:
    """Export `cfg.run` to `cfg.output_dir`; see the module docstring. Raises `ParityError` on failed parity."""
    quiet_exporter_logs(verbose)
    # 1. Cheap checks first: the run, the output dir, the data.
    config = read_run_config(cfg.run)
    check_output_dir(cfg)
    data_dir = run_data_dir(cfg.run, config, cfg.data)
    threads = cfg.threads or default_threads()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _export(cfg, config, data_dir, threads)
    finally:
        torch.set_num_threads(previous_threads)


def _export(cfg: "ExportConfig", config: dict[str, Any], data_dir: Path, threads: int) -> ExportResult:
    preprocessor = str(config.get("preprocessor", "canny"))

    # 2. The student and real inputs from its data (calibration and parity samples are disjoint).
    student = load_student(cfg.run, config)
    if cfg.vae_decoder is not None:  # still before anything is written: a decoder that does not fit writes nothing
        student.pipeline.vae = load_tiny_decoder(cfg.vae_decoder, student.pipeline.vae.config)
    n_cal = cfg.calibration_samples if cfg.int8 else 0
    samples = load_samples(data_dir, preprocessor, student.geometry.resolution, n_cal + cfg.parity_samples)
    calibration, parity_samples = samples[:n_cal], samples[n_cal:]
    facts = _pipeline_facts(student, preprocessor)
    recommended = facts["recommended_sampling"]  # calibration and parity sample as the model recommends
    settings = SamplingSettings(
        cfg.steps or recommended["steps"],
        recommended["guidance_scale"] if cfg.guidance_scale is None else cfg.guidance_scale,
    )
    source = source_run(cfg.run, config)
    export_info = {"config": cfg.to_json(), "exporter": cfg.exporter, "opset": cfg.opset}
    export_info["vae_decoder"] = {
        "class": type(student.pipeline.vae).__name__,
        "from": "the student" if cfg.vae_decoder is None else str(cfg.vae_decoder),
        "scaling_factor": facts["vae_scaling_factor"],
    }
    details: dict[str, dict[str, Any]] = {}

    stages = ["graphs", *(["int8"] if cfg.int8 else []), *(["fp16"] if cfg.fp16 else [])]
    stages += [*(["ort"] if cfg.ort else []), "parity"]
    bar = tqdm(total=len(stages), desc="refine-export", unit="stage", disable=None)
    with atomic_dir(cfg.output_dir) as tmp:
        # 3. FP32 graphs, tokenizer, scheduler; a provisional manifest (in memory) lets the runtime load them.
        bar.set_postfix_str("exporting graphs")
        export_graphs(student, tmp, cfg.exporter, cfg.opset)
        _write_tokenizer_and_scheduler(student, tmp, [s.prompt for s in samples])
        provisional = build_manifest(tmp, pipeline=facts, source=source, export=export_info)
        bar.update()
        fault_point("export.graphs")

        # 4. INT8: calibration inputs from real pipeline runs, then per-node selection judged by images.
        if cfg.int8:
            bar.set_postfix_str("int8")
            started = time.perf_counter()
            feeds, reference = _calibration_run(tmp, provisional, calibration, settings, threads)
            reduce_range, reason = decide_reduce_range(cfg.int8_reduce_range)
            options = Int8Options(cfg.int8_calibration, reduce_range, reason, anyway=cfg.int8_anyway)
            check = int8_image_check(tmp, provisional, calibration, settings, reference, preprocessor, threads)
            int8_path = tmp / graph_file("denoiser", "int8")
            report = quantize_int8(
                tmp / graph_file("denoiser"),
                int8_path,
                feeds,
                feeds[len(feeds) // 2],
                check=check,
                op_types=cfg.int8_op_types,
                options=options,
                threads=threads,
            )
            report["cpu"] = cpu_info().to_json()
            elapsed = time.perf_counter() - started
            if report["written"]:
                ops = count_ops(int8_path)
                report["qdq_nodes"] = {k: v for k, v in ops.items() if k in ("QuantizeLinear", "DequantizeLinear")}
                details[int8_path.name] = {"precision": "int8", "quantization": report}
                logger.info(
                    "INT8 denoiser: %d of its nodes (%s) quantised, from %d calibration inputs (%.1f s)%s",
                    report["quantized_nodes"],
                    ", ".join(report["op_types"]),
                    len(feeds),
                    elapsed,
                    "" if report["faster_than_fp32"] is not False else "; not faster than FP32 (--int8-anyway)",
                )
            else:
                export_info["int8_not_written"] = report
                logger.warning(
                    "no INT8 node set of this denoiser is both faster than FP32 on this CPU and accurate (images "
                    "within the bars of refine_control/export/parity.py); no INT8 file written (%.1f s). "
                    "Pass --int8-anyway to write one anyway (the fastest accurate set, else the smallest)",
                    elapsed,
                )
            bar.update()
            fault_point("export.int8")
        # 5. FP16 (size format on CPU; the note says how many casts the CPU provider adds).
        if cfg.fp16:
            bar.set_postfix_str("fp16")
            fp16_path = tmp / graph_file("denoiser", "fp16")
            details[fp16_path.name] = {
                "precision": "fp16",
                "conversion": convert_fp16(tmp / graph_file("denoiser"), fp16_path),
            }
            logger.info("FP16: %s", details[fp16_path.name]["conversion"]["note"])
            bar.update()
            fault_point("export.fp16")
        # 6. Mobile readiness of every ONNX graph; with --ort, the ORT-format files and the minimal build's
        # operator list.
        bar.set_postfix_str("mobile check")
        for onnx_file in sorted(tmp.glob("*.onnx")):
            details.setdefault(onnx_file.name, {})["mobile"] = mobile_usability(onnx_file, tmp)
        if cfg.ort:
            bar.set_postfix_str("ort format")
            for onnx_file in sorted(tmp.glob("*.onnx")):
                convert_to_ort(onnx_file, onnx_file.with_suffix(".ort"))
            write_required_operators(sorted(tmp.glob("*.ort")), tmp / REQUIRED_OPERATORS)
            bar.update()
            fault_point("export.ort")
        provisional = build_manifest(tmp, pipeline=facts, source=source, export=export_info, details=details)

        # 7. Parity against the PyTorch student, then the final manifest: the last file written.
        bar.set_postfix_str("parity")
        int8_written = (tmp / graph_file("denoiser", "int8")).is_file()
        precisions = ["fp32", *(["int8"] if int8_written else []), *(["fp16"] if cfg.fp16 else [])]
        formats = ["onnx", *(["ort"] if cfg.ort else [])]
        variants = [Variant(p, f) for f in formats for p in precisions]
        started = time.perf_counter()
        report = check_parity(
            tmp, student, parity_samples, settings, variants, None, threads, preprocessor, manifest=provisional
        )
        logger.info("parity: %d variants checked (%.1f s)", len(variants), time.perf_counter() - started)
        parity = report.to_json()
        write_json(tmp / PARITY, parity)
        fault_point("export.parity")
        export_info["parity_passed"] = report.passed
        manifest = build_manifest(
            tmp, pipeline=facts, source=source, export=export_info, details=details, complete=True
        )
        bar.update()
        bar.close()
        if report.passed or cfg.allow_degraded:
            write_manifest(tmp, manifest)
            _finish_tree(tmp)  # permissions and fsync of every file, before the dir takes MODEL's place
            fault_point("export.manifest")
        if not report.passed:
            message = "parity check failed: " + "; ".join(report.failures())
            if not cfg.allow_degraded:
                from refine_control.export.parity import format_summary

                logger.error("%s", format_summary(parity))
                raise ParityError(message, hint="pass --allow-degraded to keep the export anyway")
            logger.warning("%s (kept: --allow-degraded)", message)
    logger.info("model dir written: %s", cfg.output_dir)
    return ExportResult(cfg.output_dir, manifest, parity)
