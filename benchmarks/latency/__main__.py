"""`python -m benchmarks.latency` (from the repository root) = `python benchmarks/latency.py`."""

import sys

from .cli import main

sys.exit(main())
