#!/usr/bin/env python
"""`python benchmarks/latency.py ...`: runs the latency benchmark, the package `benchmarks/latency/` (see its
docstring for what is measured, and `--help` for the flags). Kept as a script so the commands in README,
docs/benchmark.md, the Makefile and `make demo` stay as they are."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0]).resolve() == REPO / "benchmarks":
    sys.path.pop(0)  # this file's folder: `latency` there must not shadow the package's own modules
sys.path.insert(0, str(REPO))

from benchmarks.latency.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
