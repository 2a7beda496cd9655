"""``ewald process cluster.kind=slurm``: a small simulated job through dask-jobqueue's
SLURMCluster for real, on the single-node SLURM cluster CI starts (deploy/slurm/start-single-node.sh).

Fails, rather than skips, under CI when SLURM is not running: CI must exercise this path.
"""
import os
import subprocess
import threading
import time

import dask_jobqueue  # noqa: F401  imported here, in the main thread: on import it installs a signal handler
import pytest
from test_cluster import _slurm_running

from pipeline import process
from pipeline.params import parse_parameters
from pipeline.steps.simulate import Params as SimulateParams
from pipeline.steps.simulate import run as simulate
from pipeline.truth import compare_with_truth


def _running_worker_jobs() -> set[str]:
    """Ids of this user's running dask-jobqueue worker jobs (dask-worker is their job name)."""
    out = subprocess.run(["squeue", "-h", "-t", "RUNNING", "-o", "%i %j"], capture_output=True, text=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.split()[1:] == ["dask-worker"]}


def test_process_runs_in_slurm_jobs(tmp_path):
    if not _slurm_running():
        if os.environ.get("CI"):
            pytest.fail("CI must run the SLURM test: .ci/run starts a cluster with deploy/slurm/start-single-node.sh")
        pytest.skip("no SLURM cluster running (deploy/slurm/start-single-node.sh starts one)")
    simulation, _ = parse_parameters(SimulateParams, ["preset=tiny", "n_crystals=2"])
    simulate(simulation, tmp_path / "sim")
    before = _running_worker_jobs()
    outcome, jobs_seen = {}, set()

    def target():
        try:
            outcome["result"] = process([str(tmp_path / "sim" / "1"), str(tmp_path / "sim" / "2")],
                                        cluster_kind="slurm", jobs=2, workdir=str(tmp_path / "proc"),
                                        goniometer_axis=(-107, -122, 0), space_group="C2", d_min=3.0)
        except BaseException as error:  # re-raised below
            outcome["error"] = error

    thread = threading.Thread(target=target)
    thread.start()
    while thread.is_alive():
        jobs_seen |= _running_worker_jobs() - before
        time.sleep(0.5)
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    result = outcome["result"]
    assert len(jobs_seen) == 2, f"expected the run's 2 worker jobs in squeue, saw {sorted(jobs_seen)}"
    assert all(o.failure is None for o in result.datasets), [o.summary for o in result.datasets]
    merged = tmp_path / "proc" / "scale" / "merged.mtz"
    assert merged.is_file()
    assert compare_with_truth(merged, tmp_path / "sim" / "true_merged.mtz", d_min=3.0)["cc"] > 0.85
    # the batch jobs end with the run
    deadline = time.time() + 60
    while _running_worker_jobs() & jobs_seen and time.time() < deadline:
        time.sleep(1)
    assert not _running_worker_jobs() & jobs_seen
