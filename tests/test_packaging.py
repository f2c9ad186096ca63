import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the backport, from the dev extra
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    mapping = config["package-dir"]
    found = set()
    for package, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / folder).parts
            name = ".".join((package, *parts))
            if not any(
                name.startswith(other + ".") or name == other
                for other in mapping
                if other != package and other.startswith(package + ".")
            ):
                found.add(name)
    assert found == listed


def _modules_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_weaklabel_imports_no_diffusers():
    assert "diffusers" not in _modules_after("import refine_control.weaklabel")


def test_cli_help_path_imports_no_heavy_libraries():
    loaded = _modules_after("import refine_control.cli")
    assert not {"diffusers", "onnxruntime", "torch"} & loaded
