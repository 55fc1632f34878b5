"""benchmarks/_results.py: claims merge into one JSON file; RESULTS.md lists them."""

from __future__ import annotations

import json

import _results  # benchmarks/ is on pytest's pythonpath (setup.cfg)
import pytest
import results_md


def test_record_merges_and_replaces(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    monkeypatch.setenv("DUALSTAGE_BENCH_RESULTS", str(path))
    assert _results.results_path() == path
    _results.record("a_ratio", 0.95, 0.9, "bare s / real s", images=8)
    _results.record("b_speedup", 0.8, 1.0, "x", op=">")
    first = json.loads(path.read_text())
    assert set(first) == {"a_ratio", "b_speedup"}
    assert first["a_ratio"]["measured"] == 0.95 and first["a_ratio"]["met"] is True
    assert first["a_ratio"]["images"] == 8 and first["a_ratio"]["unit"] == "bare s / real s"
    assert first["b_speedup"]["met"] is False and first["b_speedup"]["op"] == ">"
    _results.record("a_ratio", 0.5, 0.9, "bare s / real s")  # again: replaced, b kept
    second = json.loads(path.read_text())
    assert second["a_ratio"]["measured"] == 0.5 and second["a_ratio"]["met"] is False
    assert "images" not in second["a_ratio"] and second["b_speedup"] == first["b_speedup"]
    assert not list(tmp_path.glob(".*.tmp"))  # atomic: no temporary file left


def test_record_explicit_path_and_bad_op(tmp_path):
    path = tmp_path / "sub" / "r.json"
    _results.record("c", 1.0, 1.0, "u", path=path)
    assert json.loads(path.read_text())["c"]["met"] is True  # >= by default
    with pytest.raises(ValueError, match="op"):
        _results.record("c", 1.0, 1.0, "u", op="~", path=path)


def test_results_md_table(tmp_path):
    path = tmp_path / "results.json"
    _results.record("x_ratio", 0.7, 0.9, "bare s / real s", path=path, note="2 cores shared")
    text = results_md.render(_results.load(path), _results.machine(), "2024-01-01")
    assert "| x_ratio | 0.7 | >= 0.9 | bare s / real s | **no** |" in text
    assert "Machine:" in text and "2 cores shared" in text


def test_alternate_interleaves():
    order = []
    times = _results.alternate({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, rounds=2)
    assert order == ["a", "b", "a", "b", "a", "b"] and len(times["a"]) == len(times["b"]) == 2
