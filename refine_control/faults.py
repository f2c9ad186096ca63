"""Named fault points for crash tests: `fault_point("export.graphs")` kills the process there when asked to.

The exporter and `atomic_dir` call `fault_point(name)` at each phase boundary. When the environment variable
`REFINE_CONTROL_FAULT_AT` names that point, the process sends itself SIGKILL on the spot: no `finally`, no
`atexit`, no cleanup, exactly like `kill -9` or a power cut at that moment, but at a known phase instead of at
a random time (tests/export/test_export_faults.py). Unset, a fault point costs one dictionary lookup.
"""

import os
import signal

FAULT_ENV = "REFINE_CONTROL_FAULT_AT"


def fault_point(name: str) -> None:
    """SIGKILL this process if `REFINE_CONTROL_FAULT_AT` equals `name`."""
    if os.environ.get(FAULT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
