"""Fault injection for the worker-fault tests: real worker deaths, a full disk, slow loads.

``FaultyDemoSource`` is the demo source with a fault plan (a dict, pickled to the workers with
the source); its ``load`` runs on a worker and may kill that worker process:

- ``first_deaths: N``: the first N worker processes to load anything each die (SIGKILL) on
  their first load; N marker files in ``dir`` (created exclusively) count the deaths across
  processes, so two starting workers loading at once both die, and restarted ones do not;
- ``kill_ids: [...]``: loading one of these demo cells (or fields, by ``meta_field_index``)
  kills its worker every time;
- ``enospc_after: K``: workers fail writing with ENOSPC once K parts exist (a full disk);
- ``sleep: s``: each load sleeps this long (a run slow enough to be interrupted).

``python -c "from tests.faults import main; main()" ARGS`` is ``python -m scip_gpu ARGS`` with
the plan from the environment variable ``SCIP_GPU_FAULTS`` (JSON) applied to demo datasets.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import time
from pathlib import Path

from scip_gpu.demo import DemoSource
from scip_gpu.fields import FieldSource

ENV = "SCIP_GPU_FAULTS"


def die() -> None:
    """Kill this process as the kernel's out-of-memory killer or a batch system would."""
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)  # pragma: no cover - never reached


def take_slot(folder: str, n: int) -> bool:
    """Claim one of ``n`` marker files in ``folder`` (exclusively); False when all are taken."""
    for k in range(n):
        try:
            fd = os.open(Path(folder) / f"death-{k}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            continue
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return True
    return False


def deaths(folder) -> int:
    return len(list(Path(folder).glob("death-*")))


_loaded_before: set[int] = set()  # pids of this process that loaded already (first_deaths)


def apply(plan: dict, ids) -> None:
    """Run the fault plan for a load of the demo cells ``ids`` in this (worker) process."""
    pid = os.getpid()
    first = pid not in _loaded_before
    _loaded_before.add(pid)
    if plan.get("sleep"):
        time.sleep(plan["sleep"])
    if first and plan.get("first_deaths") and take_slot(plan["dir"], plan["first_deaths"]):
        die()
    if set(plan.get("kill_ids", ())) & {int(i) for i in ids}:
        die()
    if plan.get("enospc_after") is not None:
        from scip_gpu import export

        real = export.write_part

        def full_disk(folder, part, *args, **kwargs):
            if len(list(Path(folder).glob("part-*.parquet"))) >= plan["enospc_after"]:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder))
            return real(folder, part, *args, **kwargs)

        export.write_part = full_disk


class FaultyDemoSource(DemoSource):
    """The demo source, with a fault plan run before each load (on the worker)."""

    def __init__(self, cfg, plan: dict):
        super().__init__(cfg)
        self.plan = plan

    def load(self, rows):
        apply(self.plan, rows["meta_id"])
        return super().load(rows)


class FaultyFieldSource(FieldSource):
    """The fields source, with a fault plan run before each field's load (ids: the field's
    ``meta_field_index``)."""

    def __init__(self, cfg, plan: dict):
        super().__init__(cfg)
        self.plan = plan

    def load_field(self, row):
        apply(self.plan, [row["meta_field_index"]])
        return super().load_field(row)


def install(plan: dict) -> None:
    """Make ``scip_gpu.pipeline.run`` use the faulty sources for demo and field datasets."""
    from scip_gpu import pipeline

    real = pipeline.make_source

    def make_source(cfg):
        fmt = getattr(cfg.format, "value", cfg.format)
        if fmt == "demo":
            return FaultyDemoSource(cfg, plan)
        if fmt == "fields_tiff":
            return FaultyFieldSource(cfg, plan)
        return real(cfg)

    pipeline.make_source = make_source


def main() -> None:
    install(json.loads(os.environ.get(ENV, "{}")))
    from scip_gpu.cli import main as cli_main

    cli_main()


def cancel_once(item, *, marks: str):
    """A task that, the first time it runs for ``item``, has its own future cancelled (for every
    client, as when the scheduler forgets a task), then returns ``item * 10``."""
    from distributed import Future, get_client, get_worker

    mark = Path(marks) / f"cancelled-{item}"
    if not mark.exists():
        mark.write_text("")
        client = get_client()
        client.cancel([Future(get_worker().get_current_task(), client)], force=True)
        time.sleep(0.5)  # (its result, if any, goes nowhere: the task is forgotten)
    return item * 10
