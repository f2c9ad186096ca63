"""Run a command under `strace -f` and read back what it tried on the network and where it wrote files.

The audit hook of `tests/serve/audit_run.py` sees only Python-level sockets; library telemetry runs in native
threads (ONNX Runtime's resolves its events host from C++), so the privacy tests check at the system-call level:
every `connect`/`sendto`/`sendmsg`/`sendmmsg` of every thread and child, and every file opened for writing,
created, renamed or linked.
"""

import ipaddress
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from refine_control import NO_TELEMETRY_ENV

TRACED = "%network,openat,?open,?creat,?mkdir,mkdirat,?rename,renameat,?renameat2,?link,linkat,?symlink,symlinkat"
_SEND = re.compile(r"^(connect|sendto|sendmsg|sendmmsg)\((.*)$")
_INET = re.compile(r'sin_port=htons\((\d+)\), sin_addr=inet_addr\("([^"]+)"\)')
_INET6 = re.compile(r'sin6_port=htons\((\d+)\).*?inet_pton\(AF_INET6, "([^"]+)"')
_WRITE_FLAGS = ("O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC")
_OPEN = re.compile(r'^(openat|open|creat)\((?:(AT_FDCWD|\d+)[^,]*, )?"([^"]*)"(.*)$')
_PATH_CALL = re.compile(r"^(mkdir|mkdirat|rename|renameat|renameat2|link|linkat|symlink|symlinkat)\((.*)$")
_QUOTED = re.compile(r'"([^"]*)"')

# What the Python runtime and torch write on their own, none of it data: bytecode caches of stale sources, POSIX
# semaphores in shared memory (multiprocessing), tempfile's one-off probe file in TMPDIR (created and removed at
# once) and torch's empty compile-cache dir (`torchinductor_<user>`, created when the exporter imports torch).
RUNTIME_WRITES = (r"/__pycache__/[^/]+\.pyc(\.\d+)?$", r"^/dev/shm/sem\.", r"^/dev/null$")
TORCH_TMP_WRITES = (r"/[a-z0-9_]{8}$", r"/torchinductor_[^/]+$")

# A deliberate non-loopback connection for the controls: a UDP `connect` only sets the socket's peer and sends
# no packet, and 192.0.2.1 is TEST-NET-1 (RFC 5737), reserved for documentation, never routed to anyone. Run in a
# thread of its own, as library telemetry is.
DELIBERATE = ("192.0.2.1", 9)
DELIBERATE_CONNECT = f"""
import socket, threading
def _connect():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect({DELIBERATE!r})
        except OSError:
            pass  # no route (a network namespace): the attempt is in the trace all the same
_t = threading.Thread(target=_connect)
_t.start()
_t.join()
"""


def strace_usable() -> bool:
    """strace is installed and may trace a child here (containers can forbid ptrace)."""
    if shutil.which("strace") is None:
        return False
    done = subprocess.run(["strace", "-f", "-qq", "-o", "/dev/null", "true"], capture_output=True, check=False)
    return done.returncode == 0


def netns_usable() -> bool:
    """`unshare -n` works: a command can run in a network namespace where nothing it sends can leave."""
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True, check=False).returncode == 0


def strace_command(command: list[str], prefix: Path) -> list[str]:
    """`command` under strace: every thread and child, one trace file per process (`prefix.PID`)."""
    return ["strace", "-ff", "-qq", "-o", str(prefix), "-e", f"trace={TRACED}", *command]


@dataclass
class Trace:
    """What a traced process tried: network sends to non-loopback hosts, DNS queries (port 53, any host), and
    every path it wrote, created, renamed or linked (successful calls only)."""

    egress: list[str] = field(default_factory=list)
    dns: list[str] = field(default_factory=list)
    network_calls: int = 0
    writes: list[str] = field(default_factory=list)
    unresolved: list[str] = field(default_factory=list)

    def writes_outside(self, allowed: list[Path], patterns: tuple[str, ...] = ()) -> list[str]:
        """Written paths under none of `allowed` (and matching none of the regex `patterns`)."""
        roots = [str(p) for p in allowed]
        out = []
        for path in self.writes:
            if any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots):
                continue
            if any(re.search(p, path) for p in patterns):
                continue
            out.append(path)
        return out


def _is_loopback(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback or address.is_unspecified


def parse_trace(prefix: Path, cwd: Path) -> Trace:
    """Parse the `prefix.PID` files of `strace_command`; relative paths resolve against `cwd`."""
    trace = Trace()
    files = sorted(prefix.parent.glob(prefix.name + ".*"))
    if not files:
        raise FileNotFoundError(f"no trace files {prefix}.*")
    lines = [line for f in files for line in f.read_text(errors="replace").splitlines()]
    for line in lines:
        send = _SEND.match(line)
        if send is not None:
            trace.network_calls += 1
            args = send.group(2)
            for port, host in [*_INET.findall(args), *_INET6.findall(args)]:
                if int(port) == 53:
                    trace.dns.append(f"{send.group(1)} {host}:{port}")
                elif not _is_loopback(host):
                    trace.egress.append(f"{send.group(1)} {host}:{port}")
            continue
        if " = -1 " in line:
            continue  # a failed call wrote nothing
        opened = _OPEN.match(line)
        if opened is not None:
            call, dirfd, name, rest = opened.groups()
            flags = rest.split(")", 1)[0]
            if call != "creat" and not any(flag in flags for flag in _WRITE_FLAGS):
                continue
            _add(trace, name, dirfd, cwd, line)
            continue
        other = _PATH_CALL.match(line)
        if other is not None:
            for name in _QUOTED.findall(other.group(2).split(")", 1)[0]):
                _add(trace, name, "AT_FDCWD", cwd, line)
    return trace


def _add(trace: Trace, name: str, dirfd: str | None, cwd: Path, line: str) -> None:
    if name.startswith("/"):
        trace.writes.append(name)
    elif dirfd in (None, "AT_FDCWD"):
        trace.writes.append(str(cwd / name))
    else:  # relative to a directory fd whose path the trace does not name: reported as such
        trace.unresolved.append(line.strip())


def bare_env(root: Path) -> tuple[dict[str, str], Path]:
    """The test's environment without any telemetry/offline switch, HOME and TMPDIR fresh under `root`; returns
    it and a fresh cwd."""
    for sub in ("home", "tmp", "cwd"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    dropped = {*NO_TELEMETRY_ENV, "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "XDG_CACHE_HOME", "XDG_DATA_HOME"}
    env = {k: v for k, v in os.environ.items() if k not in dropped and not k.startswith("REFINE_SERVE_")}
    env.update(HOME=str(root / "home"), TMPDIR=str(root / "tmp"), PYTHONUNBUFFERED="1")
    return env, root / "cwd"


def files_under(*roots: Path) -> list[str]:
    return sorted(str(p) for root in roots for p in root.rglob("*") if p.is_file() or p.is_symlink())


_MODULES = {
    "refine-distill": "refine_control.cli",
    "refine-eval": "refine_control.evaluation.cli",
    "refine-export": "refine_control.export.cli",
    "refine-serve": "refine_control.serve.cli",
}


def script(name: str) -> list[str]:
    """A console script of this environment (the real entry point), or its module as a fallback."""
    path = Path(sys.executable).parent / name
    if path.is_file():
        return [str(path)]
    return [sys.executable, "-c", f"import sys; from {_MODULES[name]} import main; sys.exit(main())"]


def assert_no_egress(trace: Trace, what: str) -> None:
    assert trace.egress == [], f"{what}: non-loopback network attempts {trace.egress[:5]}"
    assert trace.dns == [], f"{what}: DNS attempts {trace.dns[:5]}"


def run_traced(command: list[str], root: Path, timeout: float = 600) -> tuple[Trace, Path]:
    """Run `command` under strace in `bare_env(root)`; assert exit code 0; return its trace and its cwd."""
    env, cwd = bare_env(root)
    with open(root / "log", "wb") as log:
        done = subprocess.run(
            strace_command(command, root / "t"),
            env=env,
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=timeout,
        )
    assert done.returncode == 0, (root / "log").read_text(errors="replace")[-5000:]
    return parse_trace(root / "t", cwd), cwd
