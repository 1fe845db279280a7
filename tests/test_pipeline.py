"""process_partition: batches that fail (out of memory, a bad object) are split and retried."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scip_gpu import pipeline
from scip_gpu.cli import to_config
from scip_gpu.export import arrow_schema
from scip_gpu.io import make_source
from scip_gpu.profile import build_plan

from .test_config import _compose


@pytest.fixture
def setup(tmp_path):
    cfg, _ = to_config(_compose(["+dataset=demo", "dataset.n_objects=12", "features=intensity",
                                 "dataset.min_size=40", "dataset.max_size=44", "batch_size=16"]))
    src = make_source(cfg.dataset)
    objs = src.objects()
    objs.insert(0, "meta_index", np.arange(len(objs)))
    plan = build_plan(cfg, src.channel_names(objs))
    meta = [c for c in objs.columns if c.startswith("meta_")]
    return src, objs, plan, arrow_schema(objs[meta], plan.columns), tmp_path


def _run(setup):
    src, objs, plan, schema, folder = setup
    res = pipeline.process_partition((0, objs), source=src, plan=plan, folder=str(folder), schema=schema,
                                     device="cpu")
    return res, pd.read_parquet(folder / "part-00000.parquet")


def test_out_of_memory_batches_are_split(setup, monkeypatch):
    ref_res, ref = _run(setup)
    real = pipeline.profile_batch
    sizes = []

    def limited(batch, plan, timer=pipeline.StageTimer()):
        sizes.append(batch.n)
        if batch.n > 3:
            raise MemoryError("simulated out of memory")
        return real(batch, plan, timer)

    monkeypatch.setattr(pipeline, "profile_batch", limited)
    res, df = _run(setup)
    assert res.n_ok == 12 and not res.errors
    assert max(sizes) > 3 and any("retrying" in n for n in res.notes)
    pd.testing.assert_frame_equal(df, ref)  # same values as one big batch


def test_a_bad_object_does_not_stop_its_batch(setup, monkeypatch):
    real = pipeline.profile_batch

    def poisoned(batch, plan, timer=pipeline.StageTimer()):
        if 5 in batch.index.tolist():
            raise ValueError("object 5 breaks the maths")
        return real(batch, plan, timer)

    monkeypatch.setattr(pipeline, "profile_batch", poisoned)
    res, df = _run(setup)
    assert res.n_ok == 11 and [e["meta_index"] for e in res.errors] == [5]
    assert "object 5 breaks the maths" in res.errors[0]["error"]
    assert df.loc[5, "meta_status"] == "error" and np.isnan(df.loc[5, "feat_raw_mean_BF"])
    assert (df.drop(index=5)["meta_status"] == "ok").all()


def test_auto_partition_size():
    from dataclasses import replace

    from scip_gpu.pipeline import auto_partition_size

    cfg, _ = to_config(_compose(["cluster.n_workers=2"]))
    assert cfg.partition_size is None
    assert auto_partition_size(cfg, 300) == 64  # ~4 tasks per worker, at least 64 objects
    assert auto_partition_size(cfg, 100_000) == 4096  # at most 4096
    assert auto_partition_size(cfg, 10_000) == 1250
    assert auto_partition_size(replace(cfg, partition_size=7), 10_000) == 7


# ---------------------------------------------------------------------------------------------
# A partition run again one item per task (objects: recover_partition; fields: _recover_fields)


class _Results:
    """What an executor's map_unordered yields for the items of a partition run one per task."""

    def __init__(self, outcomes):
        self.outcomes, self.closed = outcomes, False

    def __iter__(self):
        return iter(self.outcomes)

    def close(self):
        self.closed = True


class _Source:
    def describe(self, row):
        return f"field {row['meta_field']}"


def _single(i):
    return 7, pd.DataFrame({"meta_field_index": [i], "meta_field": [f"B02_{i}"]})


def _drain(outcomes):
    from scip_gpu.pipeline import run_one_by_one

    got, errors = [], []
    results = _Results(outcomes)
    killed, cause = run_one_by_one(results, part=7, source=_Source(), index="meta_field_index", stage="field",
                                   unit="fields", errors=errors,
                                   came_back=lambda row, res: got.append((int(row["meta_field_index"]), res)))
    assert results.closed
    return killed, cause, got, errors


def test_one_by_one_blames_only_the_items_that_kill_their_workers():
    from scip_gpu.cluster import WorkerKilled

    killed, cause, got, errors = _drain([(_single(0), "r0", None), (_single(1), None, WorkerKilled("worker killed")),
                                         (_single(2), "r2", None)])
    assert (killed, cause, got) == (1, None, [(0, "r0"), (2, "r2")])
    assert errors == [{"meta_index": 1, "object": "field B02_1", "stage": "field",
                       "error": "field B02_1: worker killed"}]
    # three deaths before any item came back: the workers die whatever they run, no item is blamed
    dead = [(_single(i), None, WorkerKilled("worker killed")) for i in range(4)]
    killed, cause, got, errors = _drain(dead)
    assert killed == 3 and got == [] and len(errors) == 3
    assert cause == "the workers died on 3 of its fields and on none came back (worker killed)"
    # once an item came back, deaths are blamed on their items
    killed, cause, got, errors = _drain([(_single(9), "r9", None), *dead])
    assert (killed, cause, len(got), len(errors)) == (4, None, 1, 4)


def test_one_by_one_stops_on_another_failure_and_on_a_full_disk():
    import errno

    killed, cause, got, errors = _drain([(_single(0), None, ValueError("bad tile")), (_single(1), "r1", None)])
    assert cause == "field B02_0: ValueError: bad tile" and got == [] and errors == []
    with pytest.raises(OSError, match="No space"):
        _drain([(_single(0), None, OSError(errno.ENOSPC, "No space left on device"))])


def test_a_partition_that_did_not_kill_its_workers_is_left_for_resume():
    from scip_gpu.cluster import ClusterFailure, WorkerKilled
    from scip_gpu.pipeline import unrecoverable

    assert unrecoverable(3, ClusterFailure("lost 3 times"), 4, "field") == "ClusterFailure: lost 3 times"
    assert unrecoverable(3, WorkerKilled("worker killed"), 4, "field") is None
