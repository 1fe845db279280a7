"""Dask execution: GPU resource restrictions reach the scheduler and steer tasks."""

from __future__ import annotations

import subprocess

import pytest

from scip_gpu.cluster import GPU_RESOURCE, DaskExecutor
from scip_gpu.config import ClusterConfig, ClusterType
from scip_gpu.errors import ConfigError


def _whoami(item, *, tag):
    from distributed import get_worker

    return item, tag, get_worker().address


@pytest.mark.slow
def test_gpu_resource_restriction_reaches_scheduler_and_worker():
    from distributed import Client, Nanny, Scheduler, SpecCluster

    # a mixed cluster: one worker declares a GPU, the other does not
    spec = {
        "cpu": {"cls": Nanny, "options": {"nthreads": 1}},
        "gpu": {"cls": Nanny, "options": {"nthreads": 1, "resources": {GPU_RESOURCE: 1}}},
    }
    with SpecCluster(workers=spec, scheduler={"cls": Scheduler, "options": {"dashboard_address": None}},
                     asynchronous=False, silence_logs=50) as cluster, Client(cluster) as client:
        client.wait_for_workers(2)
        info = client.scheduler_info()["workers"]
        gpu_worker = next(a for a, w in info.items() if w.get("resources", {}).get(GPU_RESOURCE))
        ex = DaskExecutor(client, {GPU_RESOURCE: 1})
        names = [f"probe-{i}" for i in range(6)]
        results = []
        for item, res, exc in ex.map_unordered(_whoami, range(6), names, tag="x"):
            assert exc is None
            results.append(res)
        assert sorted(r[0] for r in results) == list(range(6))
        assert {r[2] for r in results} == {gpu_worker}  # every task ran on the GPU worker

        # and the restriction is what the scheduler holds for a submitted task
        fut = client.submit(_whoami, 99, tag="y", key="probe-held", resources={GPU_RESOURCE: 1}, pure=False)
        assert fut.result()[2] == gpu_worker
        restrictions = client.run_on_scheduler(
            lambda dask_scheduler: dict(dask_scheduler.tasks["probe-held"].resource_restrictions or {}))
        assert restrictions == {GPU_RESOURCE: 1}


def test_local_cuda_without_dask_cuda_is_a_clear_error(monkeypatch):
    import sys

    from scip_gpu.cluster import executor

    monkeypatch.setitem(sys.modules, "dask_cuda", None)  # as if not installed
    with pytest.raises(ConfigError, match="needs dask-cuda"):
        with executor(ClusterConfig(type=ClusterType.local_cuda), "cuda"):
            pass


@pytest.mark.parametrize("kind,needles", [
    ("slurm", ["#SBATCH -t 02:30:00", "#SBATCH --cpus-per-task=4", "#SBATCH --mem=", "#SBATCH -p gpu",
               "#SBATCH -A lab42", "#SBATCH --gres=gpu:1", "module load cuda", "--resources GPU=1",
               "export OMP_NUM_THREADS=1", "--nthreads"]),
    ("pbs", ["#PBS -l walltime=02:30:00", "#PBS -q gpu", "#PBS -A lab42", "#PBS --gres=gpu:1",
             "module load cuda", "--resources GPU=1", "--nthreads"]),
])
def test_jobqueue_job_scripts(kind, needles):
    pytest.importorskip("dask_jobqueue")
    from scip_gpu.cluster import make_jobqueue_cluster

    cfg = ClusterConfig(type=ClusterType(kind), cores=4, memory="24GB", walltime="02:30:00", queue="gpu",
                        account="lab42", job_extra=["--gres=gpu:1"], job_prologue=["module load cuda/13.0"],
                        gpus_per_job=1)
    with make_jobqueue_cluster(kind, cfg) as cluster:
        script = cluster.job_script()
    for needle in needles:
        assert needle in script, (needle, script)


@pytest.mark.parametrize("kind,submit", [("slurm", "sbatch"), ("pbs", "qsub")])
def test_jobqueue_cluster_starts_from_the_command_line(tmp_path, kind, submit):
    """dask-jobqueue 0.9 sets a SIGINT handler when imported, which only the main thread may do:
    imported first in the cluster's thread, ``cluster=slurm``/``pbs`` always failed with a
    ValueError traceback. Here (no batch system) the run gets as far as the submission command
    and stops with one line saying it is missing (exit 2), not after waiting for workers."""
    import os
    import sys

    pytest.importorskip("dask_jobqueue")
    env = {**os.environ, "PATH": os.path.dirname(sys.executable)}  # (no sbatch or qsub there)
    res = subprocess.run([sys.executable, "-m", "scip_gpu", f"cluster={kind}", "dataset.n_objects=5",
                          f"output={tmp_path / 'out'}", "progress=false"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300, env=env)
    assert res.returncode == 2, res.stderr[-3000:]
    assert "signal only works in main thread" not in res.stderr
    assert f"submits its workers with {submit}, which is not on PATH" in res.stderr.splitlines()[-1]


def test_importing_jobqueue_keeps_the_sigint_handler():
    """The handler dask-jobqueue's import sets (``sys.exit``) would replace the run's handling of
    Ctrl-C: ``import_jobqueue`` puts the previous one back."""
    import sys

    pytest.importorskip("dask_jobqueue")
    code = ("import signal, threading\n"
            "from scip_gpu.cluster import import_jobqueue\n"
            "mine = lambda *a: None\n"
            "signal.signal(signal.SIGINT, mine)\n"
            "assert import_jobqueue() is not None and signal.getsignal(signal.SIGINT) is mine\n"
            "out = []\n"
            "t = threading.Thread(target=lambda: out.append(import_jobqueue())); t.start(); t.join()\n"
            "assert out[0] is not None\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_address_cluster_needs_an_address():
    from scip_gpu.cluster import executor

    with pytest.raises(ConfigError, match="needs cluster.address"):
        with executor(ClusterConfig(type=ClusterType.address), "cpu"):
            pass


def _profiler_setting(item):
    import dask

    return dask.config.get("distributed.worker.profile.enabled")


@pytest.mark.slow
@pytest.mark.parametrize("enabled", [False, True])
def test_worker_profiler_setting_reaches_local_workers(enabled):
    from scip_gpu.cluster import executor

    cfg = ClusterConfig(type=ClusterType.local, n_workers=1, worker_profiler=enabled)
    with executor(cfg, "cpu") as ex:
        got = [res for _, res, exc in ex.map_unordered(_profiler_setting, [0], ["probe-0"])]
    assert got == [enabled]


def test_no_dashboard_link_is_logged_without_bokeh(caplog):
    """Without bokeh the scheduler still serves HTTP on the dashboard's port, where /status is a
    404: the log said ``Dask dashboard: http://...:8787/status`` at every run all the same."""
    import importlib.util
    import logging

    from scip_gpu.cluster import executor

    if importlib.util.find_spec("bokeh") is not None:
        pytest.skip("bokeh is installed")
    cfg = ClusterConfig(type=ClusterType.local, n_workers=1)
    with caplog.at_level(logging.INFO, logger="scip_gpu"):
        with executor(cfg, "cpu"):
            pass
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Dask dashboard")]
    assert lines == ["Dask dashboard: not running (set cluster.dashboard_address, needs bokeh)"]
