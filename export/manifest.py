"""`manifest.json`: every file with its sha256 and size, each graph's inputs/outputs, opset, precision, the
source run and the parity verdict, marked `"complete": true`. It is the last file an export writes, after
parity; while exporting, the runtime loads the temp dir with a provisional manifest held in memory, never on
disk. So a dir whose manifest is missing or not complete is not a finished export, and the runtime refuses it;
it checks every file against the manifest before loading.
"""

import datetime
import hashlib
import importlib.metadata
from pathlib import Path
from typing import Any

from refine_control.atomic import write_json
from refine_control.runtime.layout import FORMAT, FORMAT_VERSION, GRAPHS, MANIFEST, MODEL_FORMATS, PRECISIONS
from refine_control.runtime.layout import graph_file as layout_graph_file
from refine_control.runtime.model_dir import sha256_file
from refine_control.runtime.session import ort_session

VERSIONED = ("refine-control", "torch", "diffusers", "transformers", "onnx", "onnxscript", "onnxruntime")


def file_entry(path: Path) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def list_files(model_dir: Path) -> dict[str, dict[str, Any]]:
    """Every regular file under `model_dir` (POSIX relative names) except the manifest and hidden temp files."""
    files = {}
    for path in sorted(model_dir.rglob("*")):
        name = path.relative_to(model_dir).as_posix()
        if path.is_file() and name != MANIFEST and not any(part.startswith(".") for part in name.split("/")):
            files[name] = file_entry(path)
    return files


def graph_io(path: Path) -> dict[str, Any]:
    """Inputs and outputs (name, element type, shape with symbolic dims) as ONNX Runtime sees them."""
    session = ort_session(path, threads=1, optimization="none")

    def describe(args: Any) -> list[dict[str, Any]]:
        return [{"name": a.name, "type": a.type, "shape": list(a.shape)} for a in args]

    return {"inputs": describe(session.get_inputs()), "outputs": describe(session.get_outputs())}


def onnx_opsets(path: Path) -> dict[str, int]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {(o.domain or "ai.onnx"): int(o.version) for o in model.opset_import}


def versions() -> dict[str, str]:
    out = {}
    for name in VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def describe_graphs(model_dir: Path, details: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """graph → precision → format → {file, inputs, outputs, opset, ...}, for every graph file present."""
    graphs: dict[str, Any] = {}
    for graph in GRAPHS:
        for precision in PRECISIONS:
            for model_format in MODEL_FORMATS:
                name = layout_graph_file(graph, precision, model_format)
                path = model_dir / name
                if not path.is_file():
                    continue
                entry: dict[str, Any] = {"file": name, **graph_io(path)}
                if model_format == "onnx":
                    entry["opset"] = onnx_opsets(path)
                entry.update(details.get(name, {}))
                graphs.setdefault(graph, {}).setdefault(precision, {})[model_format] = entry
    return graphs


def source_run(run: Path, config: dict[str, Any]) -> dict[str, Any]:
    weights = {}
    for part in ("unet", "controlnet"):
        for path in sorted((run / "student" / part).glob("*.safetensors")):
            weights[f"student/{part}/{path.name}"] = sha256_file(path)
    config_path = run / "config.json"
    return {
        "path": str(run.resolve()),
        "config_sha256": hashlib.sha256(config_path.read_bytes()).hexdigest() if config_path.is_file() else None,
        "teacher": config.get("teacher"),
        "student": config.get("student"),
        "preprocessor": config.get("preprocessor"),
        "weights_sha256": weights,
    }


def build_manifest(
    model_dir: Path,
    *,
    pipeline: dict[str, Any],
    source: dict[str, Any],
    export: dict[str, Any],
    details: dict[str, dict[str, Any]] | None = None,
    complete: bool = False,
) -> dict[str, Any]:
    """Describe and hash everything now in `model_dir`. Only the final manifest is `complete` (and written)."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "complete": complete,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "source_run": source,
        "export": export,
        "pipeline": pipeline,
        "graphs": describe_graphs(model_dir, details or {}),
        "files": list_files(model_dir),
    }


def write_manifest(model_dir: Path, manifest: dict[str, Any]) -> None:
    """Write `manifest.json` atomically: the last file of an export (the runtime refuses a dir without it)."""
    if manifest.get("complete") is not True:
        raise ValueError("only a complete manifest is ever written")
    write_json(model_dir / MANIFEST, manifest)
