"""Run a command under `strace -f` and read back what it tried on the network and where it wrote files.

The audit hook of `tests/serve/audit_run.py` sees only Python-level sockets; library telemetry runs in native
threads (ONNX Runtime's resolves its events host from C++), so the privacy tests check at the system-call level:
every `connect`/`sendto`/`sendmsg`/`sendmmsg` of every thread and child, and every file opened for writing,
created, renamed or linked.
"""

import ipaddress
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

TRACED = "%network,openat,?open,?creat,?mkdir,mkdirat,?rename,renameat,?renameat2,?link,linkat,?symlink,symlinkat"
_SEND = re.compile(r"^(connect|sendto|sendmsg|sendmmsg)\((.*)$")
_INET = re.compile(r'sin_port=htons\((\d+)\), sin_addr=inet_addr\("([^"]+)"\)')
_INET6 = re.compile(r'sin6_port=htons\((\d+)\).*?inet_pton\(AF_INET6, "([^"]+)"')
_WRITE_FLAGS = ("O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC")
_OPEN = re.compile(r'^(openat|open|creat)\((?:(AT_FDCWD|\d+)[^,]*, )?"([^"]*)"(.*)$')
_PATH_CALL = re.compile(r"^(mkdir|mkdirat|rename|renameat|renameat2|link|linkat|symlink|symlinkat)\((.*)$")
_QUOTED = re.compile(r'"([^"]*)"')


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
