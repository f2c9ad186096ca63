"""Run `refine-serve` with an audit hook (PEP 578) on every socket connect, DNS lookup and UDP send.

A non-loopback one is recorded and blocked (PermissionError), so nothing leaves the machine even if something
tries. At exit the JSON report goes to $AUDIT_REPORT: the refused addresses, and whether torch was imported.
Used by the privacy and lifecycle tests; importing this module installs the hook before anything else loads.
"""

import atexit
import ipaddress
import json
import os
import sys

events: dict[str, list] = {"connect": [], "getaddrinfo": [], "sendto": []}
LOCAL_NAMES = {None, "", "localhost", "127.0.0.1", "::1", b"localhost", b"127.0.0.1", b"::1"}


def _is_local(host) -> bool:
    if host in LOCAL_NAMES:
        return True
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


def hook(event: str, args: tuple) -> None:
    if event in ("socket.connect", "socket.sendto"):
        address = args[1]
        if isinstance(address, tuple) and not _is_local(address[0]):
            events[event.split(".")[1]].append(repr(address))
            raise PermissionError(f"audit hook: outbound {event} refused")
    elif event == "socket.getaddrinfo" and not _is_local(args[0]):
        events["getaddrinfo"].append(repr(args[0]))
        raise PermissionError("audit hook: DNS lookup refused")


sys.addaudithook(hook)


def report() -> None:
    data = {**events, "torch_imported": "torch" in sys.modules, "diffusers_imported": "diffusers" in sys.modules}
    with open(os.environ["AUDIT_REPORT"], "w") as f:
        json.dump(data, f)


atexit.register(report)

if __name__ == "__main__":
    from refine_control.serve.cli import main

    code = main(sys.argv[1:])
    report()
    sys.exit(code)
