"""A `refine-export` model directory, checked before anything in it is parsed by ONNX Runtime.

Layout (names are fixed here; nothing is looked up from paths written inside the files):

    manifest.json                      format, versions, pipeline facts, sha256 + size of every file below, the
                                       parity verdict; written last, `"complete": true` (else refused)
    text_encoder.onnx  denoiser.onnx  vae_decoder.onnx      FP32 graphs
    denoiser.int8.onnx  denoiser.fp16.onnx                  other precisions, when exported
    *.ort                              the same graphs in ONNX Runtime's mobile format (`--ort`)
    tokenizer/tokenizer.json           loads with the `tokenizers` library alone
    scheduler.json                     the diffusers scheduler config
    parity.json                        the export's parity report

Loading a graph checks, in order: it is a regular file inside the dir (no symlink), its size and sha256 equal
the manifest's, it parses, it imports only standard operator domains (no custom ops), and every external-data
location it names resolves inside the dir to a regular, singly linked file that the manifest also lists.
The session is then created from the very bytes that were hashed.
"""

import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refine_control.errors import ConfigError
from refine_control.runtime.layout import FORMAT, FORMAT_VERSION, MANIFEST, PRECISIONS, graph_file
from refine_control.runtime.onnx_proto import ProtoError, read_model_facts

# Standard ONNX, ONNX-ML and ONNX Runtime's built-in contrib ops; anything else would be a custom op.
ALLOWED_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "com.ms.internal.nhwc"}
_MAX_MANIFEST_BYTES = 4 << 20
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)?$")


class ModelDirError(ConfigError):
    """The model dir is incomplete, corrupted or unsafe to load (exit code 2)."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class VerifiedGraph:
    """A graph file whose bytes matched the manifest; `data` is None when it must load by path (external data)."""

    path: Path
    data: bytes | None


class ModelDir:
    """A model dir whose manifest has been read; files are verified one by one as they are used."""

    def __init__(self, path: str | os.PathLike[str], manifest: dict[str, Any] | None = None) -> None:
        """`manifest`: only for the exporter, which checks its temp dir with the provisional manifest it holds in
        memory (the one on disk is written last, marked complete); everyone else reads `manifest.json`."""
        self.path = Path(path).expanduser()
        if not self.path.is_dir():
            raise ModelDirError(f"model dir {self.path} does not exist or is not a directory")
        self.root = Path(os.path.realpath(self.path))
        self.manifest = (
            self._check_manifest(manifest, self.path / MANIFEST) if manifest is not None else self._read_manifest()
        )
        self.files: dict[str, dict[str, Any]] = self.manifest["files"]

    def _read_manifest(self) -> dict[str, Any]:
        path = self.path / MANIFEST
        if not path.is_file():
            raise ModelDirError(
                f"{self.path} has no {MANIFEST}: not a complete refine-export model dir",
                hint="export it with `refine-export RUN -o MODEL` (the manifest is its last file)",
            )
        if path.stat().st_size > _MAX_MANIFEST_BYTES:
            raise ModelDirError(f"{path} is larger than {_MAX_MANIFEST_BYTES} bytes; refusing to read it")
        try:
            manifest = json.loads(path.read_text("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ModelDirError(f"{path} is not valid JSON ({err})") from err
        manifest = self._check_manifest(manifest, path)
        if manifest.get("complete") is not True:
            raise ModelDirError(
                f"{path} is not marked complete: an interrupted export, or one by an older refine-export",
                hint="export the model again with `refine-export RUN -o MODEL`",
            )
        return manifest

    def _check_manifest(self, manifest: Any, path: Path) -> dict[str, Any]:
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise ModelDirError(f"{path} is not a refine-control model manifest (format must be {FORMAT!r})")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ModelDirError(
                f"{path} has format_version {manifest.get('format_version')!r}; this runtime reads {FORMAT_VERSION}"
            )
        files = manifest.get("files")
        if not isinstance(files, dict) or not files:
            raise ModelDirError(f"{path} lists no files")
        for name, entry in files.items():
            if not _SAFE_NAME.match(name) or ".." in name.split("/"):
                raise ModelDirError(f"{path} lists an unsafe file name {name!r}")
            if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str) and "bytes" in entry):
                raise ModelDirError(f"{path}: entry for {name!r} needs `sha256` and `bytes`")
        return manifest

    @property
    def pipeline(self) -> dict[str, Any]:
        return dict(self.manifest.get("pipeline", {}))

    def has(self, name: str) -> bool:
        return name in self.files

    def quantization(self) -> dict[str, Any]:
        """The INT8 denoiser's quantisation record (settings, the CPU it was chosen on), or {}."""
        graph = self.manifest.get("graphs", {}).get("denoiser", {}).get("int8", {}).get("onnx", {})
        record = graph.get("quantization") if isinstance(graph, dict) else None
        return record if isinstance(record, dict) else {}

    def precisions(self, model_format: str = "onnx") -> list[str]:
        """Precisions whose denoiser was exported in `model_format`."""
        return [p for p in PRECISIONS if self.has(graph_file("denoiser", p, model_format))]

    def fastest_precision(self, model_format: str = "onnx") -> str:
        """INT8 when its denoiser was written, passed parity and was measured faster than FP32 at export; else FP32.

        `refine-export` writes an INT8 denoiser only when a node set is both faster and accurate (unless
        `--int8-anyway`, which records `faster_than_fp32`); the manifest exists only when parity passed (or with
        `--allow-degraded`, which records `parity_passed: false`)."""
        passed = (self.manifest.get("export") or {}).get("parity_passed", True) is not False
        faster = self.quantization().get("faster_than_fp32") is not False
        return "int8" if "int8" in self.precisions(model_format) and passed and faster else "fp32"

    def _check_regular(self, name: str, path: Path) -> os.stat_result:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            raise ModelDirError(f"model file {name} is missing from {self.path}") from None
        if not stat.S_ISREG(st.st_mode):
            raise ModelDirError(f"model file {name} in {self.path} is not a regular file (symlinks are refused)")
        real = Path(os.path.realpath(path))
        if self.root not in real.parents:
            raise ModelDirError(f"model file {name} resolves outside the model dir {self.path}")
        return st

    def _expect(self, name: str) -> dict[str, Any]:
        entry = self.files.get(name)
        if entry is None:
            raise ModelDirError(f"{name} is not listed in {self.path / MANIFEST}; refusing to load it")
        return entry

    def _check_size(self, name: str, actual: int, entry: dict[str, Any]) -> None:
        if actual != entry["bytes"]:
            word = "truncated" if actual < entry["bytes"] else "corrupted"
            raise ModelDirError(
                f"model file {name} is {word}: {actual} bytes, the manifest says {entry['bytes']}",
                hint="export the model again (or copy the whole model dir again)",
            )

    def _check_hash(self, name: str, digest: str, entry: dict[str, Any]) -> None:
        if digest != entry["sha256"]:
            raise ModelDirError(
                f"model file {name} is corrupted: its sha256 does not match the manifest",
                hint="export the model again (or copy the whole model dir again)",
            )

    def verify(self, name: str) -> Path:
        """Check a (non-graph) file against the manifest by streaming it; returns its path."""
        entry = self._expect(name)
        path = self.path / name
        st = self._check_regular(name, path)
        self._check_size(name, st.st_size, entry)
        self._check_hash(name, sha256_file(path), entry)
        return path

    def read_verified(self, name: str) -> bytes:
        """The bytes of a file, after checking them against the manifest."""
        entry = self._expect(name)
        path = self.path / name
        st = self._check_regular(name, path)
        self._check_size(name, st.st_size, entry)
        data = path.read_bytes()
        self._check_size(name, len(data), entry)
        self._check_hash(name, hashlib.sha256(data).hexdigest(), entry)
        return data

    def verify_graph(self, name: str) -> VerifiedGraph:
        """Verify a graph file (and its external data); see the module docstring for the checks."""
        data = self.read_verified(name)
        if name.endswith(".ort"):
            return VerifiedGraph(self.path / name, data)  # flatbuffers; ORT format holds no external data
        try:
            facts = read_model_facts(data)
        except ProtoError as err:
            raise ModelDirError(f"model file {name} is not a valid ONNX model ({err})") from err
        custom = sorted(facts.node_domains - ALLOWED_DOMAINS)
        if custom:
            raise ModelDirError(
                f"model file {name} uses custom operator domains {custom}; custom ops are never loaded"
            )
        if not facts.external:
            return VerifiedGraph(self.path / name, data)
        for location in sorted({t.location or "" for t in facts.external}):
            self._verify_external(name, location)
        return VerifiedGraph(self.path / name, None)

    def _verify_external(self, graph: str, location: str) -> None:
        if not location:
            raise ModelDirError(f"model file {graph} has an external tensor without a location")
        relative = location.replace("\\", "/")
        target = Path(os.path.realpath(self.path / relative))
        if os.path.isabs(relative) or self.root not in target.parents:
            raise ModelDirError(
                f"model file {graph} points to external data {location!r} outside the model dir; refusing to load it"
            )
        name = target.relative_to(self.root).as_posix()
        st = self._check_regular(name, self.path / name)
        if st.st_nlink != 1:
            raise ModelDirError(f"external data {name} of {graph} is hard-linked elsewhere; refusing to load it")
        self.verify(name)
