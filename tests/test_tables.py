"""Result files (refine_control.results) and the table renderer (benchmarks/tables.py).

The first test is the guard the project relies on: every marked table in README.md and docs/*.md equals what
the committed result files produce.
"""

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

from refine_control import results
from refine_control.errors import ConfigError
from refine_control.results import (
    TABLES,
    ResultsError,
    Table,
    markdown_table,
    read_results,
    register_table,
    write_result,
)

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "tables.py"


@pytest.fixture(scope="module")
def tables():
    spec = importlib.util.spec_from_file_location("tables_renderer", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_rendered_table_in_the_repository_matches_its_result_files(tables, capsys):
    code = tables.main(["--check"])
    assert code == 0, capsys.readouterr().err


# ---- a tiny results tree -------------------------------------------------------------------------------------


def _write(root: Path, name: str, acc: float, seed: int = 0) -> Path:
    return write_result(
        ("tiny", name), metrics={"acc": acc}, config={"arm": name}, seed=seed, command=f"run {name}",
        wall_s=30, root=root, commit=("abc1234def", False), machine={"cpu": "test"},
    )  # fmt: skip


def _tiny_table(root: Path) -> Table:
    rows = read_results("tiny", root)
    body = markdown_table(["arm", "acc"], [[r["config"]["arm"], f"{r['metrics']['acc']:.3f}"] for r in rows])
    return Table(body, results.provenance(rows))


@pytest.fixture
def tiny_repo(tmp_path, monkeypatch):
    monkeypatch.setitem(TABLES, "tiny", _tiny_table)
    root = tmp_path / "results"
    _write(root, "a", 0.5)
    _write(root, "b", 0.25, seed=1)
    (tmp_path / "docs").mkdir()
    doc = "# Doc\n\nBefore.\n\n<!-- table:tiny -->\nstale\n<!-- /table:tiny -->\n\nAfter.\n"
    (tmp_path / "docs" / "x.md").write_text(doc)
    (tmp_path / "README.md").write_text("# Readme without tables\n")
    return tmp_path


def test_render_writes_the_table_and_then_check_passes(tables, tiny_repo, capsys):
    assert tables.main(["--check", "--repo", str(tiny_repo)]) == 1
    assert "docs/x.md: table 'tiny' differs" in capsys.readouterr().err
    assert tables.main(["--repo", str(tiny_repo)]) == 0
    text = (tiny_repo / "docs" / "x.md").read_text()
    expected_table = "| arm | acc |\n|---|---|\n| a | 0.500 |\n| b | 0.250 |"
    caption = "*Rendered from 2 result files in results/tiny/ (seeds 0–1; commit abc1234; 1.0 min of runs in total).*"
    assert (
        text
        == f"# Doc\n\nBefore.\n\n<!-- table:tiny -->\n{expected_table}\n\n{caption}\n<!-- /table:tiny -->\n\nAfter.\n"
    )
    assert tables.main(["--check", "--repo", str(tiny_repo)]) == 0
    assert tables.main(["--repo", str(tiny_repo)]) == 0  # idempotent
    assert (tiny_repo / "docs" / "x.md").read_text() == text


def test_a_number_changed_in_a_result_file_fails_the_check(tables, tiny_repo, capsys):
    assert tables.main(["--repo", str(tiny_repo)]) == 0
    path = tiny_repo / "results" / "tiny" / "b.json"
    obj = json.loads(path.read_text())
    obj["metrics"]["acc"] = 0.26
    path.write_text(json.dumps(obj))
    assert tables.main(["--check", "--repo", str(tiny_repo)]) == 1
    assert "docs/x.md: table 'tiny' differs from what the result files produce" in capsys.readouterr().err


def test_a_number_edited_in_the_document_fails_the_check(tables, tiny_repo):
    assert tables.main(["--repo", str(tiny_repo)]) == 0
    doc = tiny_repo / "docs" / "x.md"
    doc.write_text(doc.read_text().replace("0.250", "0.260"))
    assert tables.main(["--check", "--repo", str(tiny_repo)]) == 1


def test_unknown_table_name_is_named_and_nothing_is_written(tables, tiny_repo, capsys):
    readme = tiny_repo / "README.md"
    readme.write_text("<!-- table:nosuch -->\nx\n<!-- /table:nosuch -->\n")
    doc_before = (tiny_repo / "docs" / "x.md").read_text()
    assert tables.main(["--repo", str(tiny_repo)]) == 1
    assert "README.md: unknown table 'nosuch'" in capsys.readouterr().err
    assert (tiny_repo / "docs" / "x.md").read_text() == doc_before


def test_a_malformed_result_file_is_named(tables, tiny_repo, capsys):
    bad = tiny_repo / "results" / "tiny" / "c.json"
    bad.write_text(json.dumps({"group": "tiny", "name": "c", "metrics": {}}))
    assert tables.main(["--check", "--repo", str(tiny_repo)]) == 1
    err = capsys.readouterr().err
    assert "cannot be rendered" in err and "c.json: missing required key(s) config, seed, commit" in err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<!-- table:a -->\nx\n", "never closed"),
        ("x\n<!-- /table:a -->\n", "without its opening marker"),
        ("<!-- table:a -->\n<!-- table:b -->\n<!-- /table:b -->\n<!-- /table:a -->\n", "opens inside"),
        ("<!-- table:a -->\n<!-- /table:b -->\n", "without its opening marker"),
    ],
)
def test_broken_markers_are_errors(tables, text, message):
    with pytest.raises(ConfigError, match=message):
        tables.find_blocks(text, "doc.md")


def test_bad_arguments_exit_2_with_one_line(tables, capsys):
    assert tables.main(["--frobnicate"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")


# ---- the results library --------------------------------------------------------------------------------------


def test_write_result_fills_provenance_and_reads_back(tmp_path):
    path = write_result(
        ("g/sub", "run-1"), metrics={"acc": 0.9, "nan": float("nan")}, config={"lr": 1e-3, "dims": (1, 2)},
        seed=3, command="python x.py --seed 3", wall_s=12.345678, root=tmp_path, notes="n",
    )  # fmt: skip
    assert path == tmp_path / "g" / "sub" / "run-1.json"
    [obj] = read_results("g/sub", tmp_path)
    assert obj["metrics"] == {"acc": 0.9, "nan": None} and obj["config"]["dims"] == [1, 2]
    assert obj["seed"] == 3 and obj["wall_s"] == 12.346 and obj["notes"] == "n"
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert obj["commit"] == head and isinstance(obj["dirty"], bool)
    assert obj["date"][:2] == "20" and obj["date"].endswith("+00:00")
    assert obj["machine"]["logical_cpus"] >= 1


def test_write_result_accepts_a_path_under_the_root(tmp_path):
    path = write_result(
        tmp_path / "weak" / "x" / "r.json", metrics={}, config={}, seed=None, command="c", wall_s=0, root=tmp_path
    )
    assert json.loads(path.read_text())["group"] == "weak/x"


def test_without_git_the_commit_is_unknown(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no git executable
    assert results.git_state() == ("unknown", "unknown")
    write_result(("g", "r"), metrics={}, config={}, seed=None, command="c", wall_s=0, root=tmp_path)
    obj = json.loads((tmp_path / "g" / "r.json").read_text())
    assert obj["commit"] == "unknown" and obj["dirty"] == "unknown"


@pytest.mark.parametrize(
    ("group", "name"), [("../up", "x"), ("g", "a/b"), ("g", "x.json"), ("", "x"), ("g", ".hidden")]
)
def test_unsafe_group_or_name_is_refused(tmp_path, group, name):
    with pytest.raises(ValueError, match="must match"):
        write_result((group, name), metrics={}, config={}, seed=0, command="c", wall_s=0, root=tmp_path)


def test_read_results_names_the_bad_file(tmp_path):
    _write(tmp_path, "ok", 0.1)
    (tmp_path / "tiny" / "broken.json").write_text("{not json")
    with pytest.raises(ResultsError, match=r"broken\.json: not a readable JSON"):
        read_results("tiny", tmp_path)
    (tmp_path / "tiny" / "broken.json").write_text(json.dumps({"group": "tiny", "name": "broken"}))
    with pytest.raises(ResultsError, match=r"broken\.json: missing required key\(s\) metrics, config"):
        read_results("tiny", tmp_path)
    moved = json.loads((tmp_path / "tiny" / "ok.json").read_text())
    (tmp_path / "tiny" / "broken.json").write_text(json.dumps(moved))  # claims to be tiny/ok
    with pytest.raises(ResultsError, match="stored as tiny/broken"):
        read_results("tiny", tmp_path)
    with pytest.raises(ResultsError, match="does not exist"):
        read_results("nosuch", tmp_path)


def test_register_table_refuses_a_second_owner(monkeypatch):
    monkeypatch.setattr(results, "TABLES", {})

    @register_table("t1")
    def first(root):  # pragma: no cover - never rendered
        return Table("x")

    with pytest.raises(ValueError, match="already registered"):
        register_table("t1")(lambda root: Table("y"))
