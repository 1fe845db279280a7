"""benchmarks/pyspy_summary.py: py-spy's raw stacks (with --subprocesses) summed per process."""

from __future__ import annotations

import sys

from .conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import pyspy_summary  # noqa: E402

PARENT = 'process 10:"python -m scip_gpu +dataset=zarr"'
CHILD = 'process 11:"python -c from multiprocessing.spawn import spawn_main; spawn_main(tracker_fd=3)"'


def test_samples_per_process_and_function(tmp_path):
    raw = tmp_path / "stacks.txt"
    raw.write_text("\n".join([
        f"{PARENT};main (scip_gpu/cli.py:10);run (scip_gpu/pipeline.py:20);write (pyarrow/parquet.py:5) 30",
        f"{PARENT};main (scip_gpu/cli.py:11);run (scip_gpu/pipeline.py:21) 10",
        f"{PARENT};{CHILD};thread 1;process_partition (scip_gpu/pipeline.py:400);stage (scip_gpu/batch.py:9) 50",
        f"{PARENT};{CHILD} 7",  # (the child without a Python frame)
        "not a stack line",
        "",
    ]) + "\n")
    stacks = pyspy_summary.parse(raw)
    assert [(p.split(":")[0], n) for p, _, n in stacks] == [("pid 10", 30), ("pid 10", 10), ("pid 11", 50),
                                                             ("pid 11", 7)]
    assert stacks[2][1] == ["thread 1", "process_partition (scip_gpu/pipeline.py)", "stage (scip_gpu/batch.py)"]
    summary = pyspy_summary.summarize(stacks)
    child, parent = list(summary)  # (most samples first)
    assert child.startswith("pid 11: python -c from multiprocessing.spawn import spawn_main; spawn_main")
    assert summary[child]["samples"] == 57 and summary[parent]["samples"] == 40
    # inclusive: scip_gpu's functions, each stack once; self: any leaf
    assert dict(summary[parent]["inclusive"]) == {"main (scip_gpu/cli.py)": 40, "run (scip_gpu/pipeline.py)": 40}
    assert dict(summary[parent]["self"]) == {"write (pyarrow/parquet.py)": 30, "run (scip_gpu/pipeline.py)": 10}
    assert dict(summary[child]["self"]) == {"stage (scip_gpu/batch.py)": 50, "(no Python frame)": 7}
    md = pyspy_summary.markdown(summary, str(raw))
    assert "| 57 | 58.8 % |" in md and "`process_partition (scip_gpu/pipeline.py)` | 87.7 |" in md
    assert pyspy_summary.main([str(raw)]) == 0
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert pyspy_summary.main([str(empty)]) == 1
