"""`node --test web/test/*.test.mjs`: the JS schedulers, tokenizer, Canny and SHA-256 against fixtures written just now by the
Python runtime's own code (tests/web/fixtures.py). Needs node and web/node_modules (`npm ci --prefix web`)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import NODE_MODULES_HINT, WEB, node_modules_present

NODE = shutil.which("node")


@pytest.mark.skipif(NODE is None, reason="needs node (Node.js 20+) for the web runtime's unit tests")
def test_node_unit_tests_against_python_fixtures(tmp_path: Path) -> None:
    if not node_modules_present():
        pytest.skip(NODE_MODULES_HINT)
    sys.path.insert(0, str(Path(__file__).parent))
    from fixtures import write_all

    fixtures = write_all(tmp_path / "fixtures")
    result = subprocess.run(
        [NODE, "--test", *sorted(str(p.relative_to(WEB)) for p in (WEB / "test").glob("*.test.mjs"))],
        cwd=WEB,
        env={**os.environ, "REFINE_WEB_FIXTURES": str(fixtures)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = result.stdout + result.stderr
    assert result.returncode == 0, report[-4000:]
    assert "# fail 0" in report and "# skipped 0" in report, report[-2000:]
    assert "# pass 0" not in report
