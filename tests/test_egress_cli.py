"""Zero egress of the training-side commands at the system-call level, and the tracer's own controls.

`refine-distill` (a few steps on the tiny teacher), `refine-eval` and the default `refine-export` (the dynamo
exporter) run under `strace -f` as `refine-serve` does in tests/serve/test_serve_egress.py: a fresh HOME, TMPDIR
and cwd, no telemetry or offline switch in the environment (the package sets its own). Checked: no connection or
send to a non-loopback address and none to port 53 from any thread or child; no file written outside the output
paths; HOME and TMPDIR hold nothing afterwards. The controls show that the parser and the tracer recognise what
these checks look for, so that an empty list means nothing was tried.
"""

import shutil
import sys
from pathlib import Path

import pytest
from syscall_trace import (
    DELIBERATE,
    DELIBERATE_CONNECT,
    RUNTIME_WRITES,
    TORCH_TMP_WRITES,
    assert_no_egress,
    files_under,
    parse_trace,
    run_traced,
    script,
    strace_usable,
)
from tiny_models import write_image_folder

needs_strace = pytest.mark.skipif(not strace_usable(), reason="needs strace (`apt-get install -y strace`)")

# strace lines as it writes them (`-e trace=%network,...`), one per kind the parser must tell apart.
LINES = """\
connect(3, {sa_family=AF_INET, sin_port=htons(443), sin_addr=inet_addr("20.42.65.92")}, 16) = -1 EINPROGRESS
sendto(5, "x", 1, MSG_NOSIGNAL, {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("127.0.0.53")}, 16) = 1
connect(6, {sa_family=AF_INET6, sin6_port=htons(80), sin6_flowinfo=htonl(0), inet_pton(AF_INET6, "2001:db8::1", &sin6_addr), sin6_scope_id=0}, 28) = -1 ENETUNREACH
connect(7, {sa_family=AF_INET, sin_port=htons(8000), sin_addr=inet_addr("127.0.0.1")}, 16) = 0
connect(8, {sa_family=AF_INET6, sin6_port=htons(8000), sin6_flowinfo=htonl(0), inet_pton(AF_INET6, "::ffff:127.0.0.1", &sin6_addr), sin6_scope_id=0}, 28) = 0
connect(9, {sa_family=AF_UNIX, sun_path="/run/some.sock"}, 110) = 0
openat(AT_FDCWD, "/data/out/model.onnx", O_WRONLY|O_CREAT|O_TRUNC|O_CLOEXEC, 0666) = 10
openat(AT_FDCWD, "/data/in/x.png", O_RDONLY|O_CLOEXEC) = 11
openat(AT_FDCWD, "/data/out/failed", O_WRONLY|O_CREAT, 0666) = -1 EACCES (Permission denied)
"""


def test_parse_trace_tells_egress_dns_loopback_and_writes_apart(tmp_path):
    (tmp_path / "t.123").write_text(LINES)
    trace = parse_trace(tmp_path / "t", tmp_path)
    assert trace.egress == ["connect 20.42.65.92:443", "connect 2001:db8::1:80"]
    assert trace.dns == ["sendto 127.0.0.53:53"]  # DNS counts at any address, the local stub resolver included
    assert trace.network_calls == 6
    assert trace.writes == ["/data/out/model.onnx"]  # not the read, not the failed open


@needs_strace
def test_tracer_sees_non_loopback_and_dns_attempts_of_a_real_process(tmp_path):
    """UDP connects (they send nothing) to TEST-NET-1 from a thread, to port 53 there, and to loopback: the trace
    holds the first two and not the third."""
    dns_connect = DELIBERATE_CONNECT.replace(repr(DELIBERATE), repr((DELIBERATE[0], 53)))
    loopback = "import socket\nwith socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s: s.connect(('127.0.0.1', 9))"
    program = "\n".join([DELIBERATE_CONNECT, dns_connect, loopback])
    trace, _ = run_traced([sys.executable, "-c", program], tmp_path)
    assert trace.egress == ["connect {}:{}".format(*DELIBERATE)]
    assert trace.dns == [f"connect {DELIBERATE[0]}:53"]
    assert trace.network_calls >= 3


def _check(trace, what: str, cwd: Path, root: Path, outputs: list[Path]) -> None:
    assert_no_egress(trace, what)
    tmp = root / "tmp"
    allowed = RUNTIME_WRITES + tuple(f"^{tmp}{p}" for p in TORCH_TMP_WRITES)
    assert trace.writes_outside(outputs, allowed) == [] and trace.unresolved == []
    assert files_under(root / "home", tmp, cwd) == []


@needs_strace
def test_distill_makes_no_network_attempt(tiny_pipeline_dir, tmp_path):
    data = write_image_folder(tmp_path / "data", 4)
    run = tmp_path / "out" / "run"
    args = ["--teacher", str(tiny_pipeline_dir), "--labelled", str(data), "-o", str(run), "--student", "compact-small"]
    # One stage (the default recipe's first, the compact student): the later stages run the same trainer, and all
    # of them under strace take ten minutes.
    args += ["--recipe", "guided", "--max-steps", "2", "--stage2-steps", "0", "--batch-size", "2", "-q"]
    trace, cwd = run_traced([*script("refine-distill"), *args], tmp_path / "distill")
    assert (run / "student" / "model_index.json").is_file()
    _check(trace, "refine-distill", cwd, tmp_path / "distill", [tmp_path / "out"])


@needs_strace
def test_eval_makes_no_network_attempt(tiny_run_dir, tmp_path):
    """Writes the report and, in RUN/eval/, the judge it trains and caches (declared outputs)."""
    run = shutil.copytree(tiny_run_dir, tmp_path / "run")
    report = tmp_path / "out" / "metrics.json"
    data = write_image_folder(tmp_path / "data", 64, size=16)
    args = [str(run), "--data", str(data), "--json", str(report), "--num-samples", "64", "--batch-size", "64"]
    args += ["--steps", "1", "--teacher-steps", "1", "--oracle-steps", "3", "-q"]
    trace, cwd = run_traced([*script("refine-eval"), *args], tmp_path / "eval")
    assert report.is_file()
    _check(trace, "refine-eval", cwd, tmp_path / "eval", [tmp_path / "out", run / "eval"])


@pytest.mark.slow  # the dynamo exporter under strace: minutes
@needs_strace
def test_default_export_makes_no_network_attempt(tiny_run_dir, tmp_path):
    """`refine-export RUN -o MODEL` as README gives it: the dynamo exporter (onnxscript), FP32."""
    model = tmp_path / "out" / "model"
    args = [str(tiny_run_dir), "-o", str(model), "--parity-samples", "1", "--steps", "2", "-q"]
    trace, cwd = run_traced([*script("refine-export"), *args], tmp_path / "export")
    assert (model / "manifest.json").is_file()
    _check(trace, "refine-export", cwd, tmp_path / "export", [tmp_path / "out"])
