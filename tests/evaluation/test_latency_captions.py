"""Words that rendered latency and INT8 tables use for what was measured: the INT8 selection's considered node
types, and ratios against a run's A-vs-A noise floor."""

from refine_control.evaluation.device_tables import _considered_types
from refine_control.evaluation.latency_tables import floor_sentence, ratio_cell


def _quantization(speedups: dict[str, float], considered: list[str]) -> dict:
    by_type = {op: {"speedup": s, "nodes": 1, "int8_ms": 1.0} for op, s in speedups.items()}
    return {"by_type": by_type, "min_speedup": 1.05, "op_types_considered": considered}


def test_types_faster_alone_are_named_as_such():
    q = _quantization({"Conv": 1.4, "Gemm": 1.1, "MatMul": 0.9}, ["Conv", "Gemm"])
    assert (
        _considered_types(q)
        == "node types faster alone (≥ 1.05× in the quantiser's timing) and so considered: Conv, Gemm"
    )


def test_the_fallback_to_every_type_is_not_called_faster():
    """The committed built-in INT8 run: no type reached 1.05× alone, so the quantiser considered all of them."""
    q = _quantization({"Conv": 0.984, "Gemm": 1.0, "MatMul": 0.969}, ["Conv", "MatMul", "Gemm"])
    text = _considered_types(q)
    assert "faster alone and so" not in text
    assert text.startswith("no node type was faster alone by the 1.05× bar") and "Conv 0.98×, Gemm 1.00×" in text
    assert text.endswith("so all were considered: Conv, MatMul, Gemm")


def test_ratios_are_claims_only_beyond_the_noise_floor():
    floor = {"factor": 1.2, "percent": 20.0, "model": "student", "runtime": "ort-fp32"}
    assert ratio_cell(2.6, floor) == "2.6×" and ratio_cell(0.5, floor, digits=2) == "0.50×"
    assert ratio_cell(1.1, floor) == "≈ 1 (1.10, noise)" and ratio_cell(0.9, floor) == "≈ 1 (0.90, noise)"
    assert ratio_cell(2.6, None) == "2.6 (no floor)"
    assert "±20.0%" in floor_sentence({"metrics": {"noise_floor": floor}})
    assert "predates the timing protocol" in floor_sentence({"metrics": {}})
