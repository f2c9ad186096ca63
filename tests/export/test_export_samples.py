"""Where the export finds the run's data for calibration and parity."""

import json
from pathlib import Path

import pytest

from refine_control.errors import ConfigError
from refine_control.export.samples import run_data_dir


def _run(path: Path, from_run: Path | None = None, data: bool = False) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"labelled": None, "from_run": from_run and str(from_run)}))
    if data:
        (path / "data" / "labelled").mkdir(parents=True)
        (path / "data" / "labelled" / "metadata.jsonl").write_text("")
    return path


def test_generated_shapes_are_found_in_the_recipe_stage_or_the_run_a_stage_started_from(tmp_path: Path):
    recipe = _run(tmp_path / "recipe")  # a default-recipe run: the compact stage generated the shapes
    _run(recipe / "stages" / "compact", data=True)
    assert run_data_dir(recipe, {}) == recipe / "stages" / "compact" / "data" / "labelled"
    first = _run(tmp_path / "first", data=True)  # `--from` chains: tiny decoder <- few-step <- first
    few = _run(tmp_path / "few", from_run=first)
    tiny = _run(tmp_path / "tiny", from_run=few)
    assert run_data_dir(tiny, json.loads((tiny / "config.json").read_text())) == first / "data" / "labelled"
    assert run_data_dir(tiny, {}, override=tmp_path / "mine") == tmp_path / "mine"
    assert run_data_dir(tiny, {"labelled": "given"}) == Path("given")


def test_a_run_without_data_is_one_error_with_a_hint(tmp_path: Path):
    loop = _run(tmp_path / "a", from_run=tmp_path / "a")  # a chain that points at itself ends too
    with pytest.raises(ConfigError, match="cannot find the data") as err:
        run_data_dir(loop, {})
    assert "--data" in (err.value.hint or "")
