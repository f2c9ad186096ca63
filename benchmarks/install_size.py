"""The device install's size: a fresh venv with only `pip install refine-control` (the torch-free runtime; `--extra
serve` adds the web server), measured as site-packages megabytes per installed distribution.

The venv is made without pip, and pip installs into it from outside (`pip --python VENV`): pip, and setuptools on
Python < 3.12, are the venv's own tools, not the runtime's. A plain `python -m venv` is measured beside it, so the
result also says what they would add.

    python benchmarks/install_size.py --results-name install/runtime
    python benchmarks/install_size.py --extra serve --results-name install/serve

Installs from the package index this machine reaches (the versions pinned in constraints.txt), into --workdir.
"""

import argparse
import json
import shutil
import subprocess
import sys
import time
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout without installing
    sys.path.insert(0, str(REPO))

from refine_control.cli_utils import run_cli  # noqa: E402
from refine_control.results import script_command, split_results_name  # noqa: E402

# Run inside the new venv: bytes per distribution, from each one's RECORD.
SIZES = """
import importlib.metadata as m, json, pathlib
out = {}
for d in m.distributions():
    total = 0
    for f in d.files or []:
        p = pathlib.Path(d.locate_file(f))
        if p.is_file():
            total += p.stat().st_size
    out[d.metadata["Name"]] = total
print(json.dumps(out))
"""


def _tree_mb(root: Path) -> float:
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) / 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/install_size.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--extra", default=None, help="an extra to install with the runtime, e.g. serve")
    parser.add_argument("--workdir", type=Path, default=Path("runs/install-size"), help="where the venv is made")
    parser.add_argument("--results-name", default=None, help="write results/<group>/<name>.json, e.g. install/serve")
    args = parser.parse_args(argv)

    def body() -> int:
        # (group, name) of the result file, parsed before the run so that a malformed name is refused early
        target = split_results_name(args.results_name) if args.results_name is not None else None
        from refine_control.results import git_state, write_result

        commit = git_state()
        started = time.perf_counter()
        if args.workdir.exists():
            shutil.rmtree(args.workdir)
        env_dir, source = args.workdir / "venv", args.workdir / "src"
        venv.EnvBuilder(with_pip=True).create(args.workdir / "plain-venv")
        plain_venv = _tree_mb(next((args.workdir / "plain-venv" / "lib").glob("python3*/site-packages")))
        venv.EnvBuilder(with_pip=False).create(env_dir)
        python = str(env_dir / "bin" / "python")
        site = next((env_dir / "lib").glob("python3*/site-packages"))
        ignore = shutil.ignore_patterns(".*", "runs", "build", "*.egg-info", "__pycache__", "results")
        shutil.copytree(REPO, source, ignore=ignore)
        requirement = f"{source}[{args.extra}]" if args.extra else str(source)
        pip = [sys.executable, "-m", "pip", "--python", python]
        subprocess.run([*pip, "install", "-q", "-c", str(REPO / "constraints.txt"), requirement], check=True)
        has_torch = subprocess.run([python, "-c", "import torch"], capture_output=True).returncode == 0
        sizes = json.loads(subprocess.run([python, "-c", SIZES], check=True, capture_output=True, text=True).stdout)
        mb = {name: round(b / 1e6, 1) for name, b in sorted(sizes.items(), key=lambda kv: -kv[1])}
        total = _tree_mb(site)
        metrics = {
            "site_packages_mb": round(total, 1),
            "plain_venv_mb": round(plain_venv, 1),
            "torch_importable": has_torch,
            "distributions_mb": mb,
        }
        for name, size in mb.items():
            print(f"{name:<28} {size:8.1f} MB")
        print(
            f"site-packages: {total:.1f} MB (a plain venv's own pip and setuptools would add {plain_venv:.1f} MB); "
            f"torch importable: {has_torch}"
        )
        if target is not None:
            write_result(
                target,
                metrics=metrics,
                config={"extra": args.extra, "python": sys.version.split()[0], "pip_in_venv": False},
                seed=None,
                command=script_command("benchmarks/install_size.py", argv),
                wall_s=time.perf_counter() - started,
                commit=commit,
            )
        return 0

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(main())
