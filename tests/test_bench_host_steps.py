"""benchmarks/bench_host_steps.py runs (small sizes) and writes every step's forms."""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def test_bench_host_steps_small(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    sys.modules.pop("bench_host_steps", None)
    import bench_host_steps

    assert bench_host_steps.main(["-n", "40", "--features", "30", "--channels", "3", "--repeat", "1",
                                  "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("host-steps-*.json")
    points = json.loads(path.read_text())["points"]
    assert {p["step"] for p in points} == {"validate", "stats", "columns", "arrow", "first_touch"}
    assert len(points) == 10 and all(p["us_per_object"] > 0 for p in points)
