"""Getting a Dask client: local with a dashboard, and a real SLURM cluster through dask-jobqueue."""
import os
import shutil
import subprocess
import urllib.request

import pytest

from pipeline.cluster import cluster_client
from pipeline.errors import ParameterError


def _env_var(name):
    return os.environ.get(name)


def test_local_cluster_serves_dashboard_on_loopback():
    with cluster_client(n_workers=1, threads_per_worker=1) as client:
        assert client.submit(sum, [1, 2, 3]).result() == 6
        link = client.dashboard_link
        assert link.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(link, timeout=30) as response:
            assert response.status == 200
            assert b"Dask" in response.read()
        # distributed's default MALLOC_TRIM_THRESHOLD_ fixes glibc's mmap threshold (about 2x CPU in scaling)
        environments = client.run(lambda: dict(os.environ)).values()
        assert all("MALLOC_TRIM_THRESHOLD_" not in env for env in environments)
        assert all(env.get("OMP_NUM_THREADS") == "1" for env in environments)  # the other defaults stay


def test_unknown_cluster_kind_is_a_parameter_error():
    with pytest.raises(ParameterError, match="cluster=kubernetes"):
        with cluster_client(cluster="kubernetes"):
            pass


def _slurm_running() -> bool:
    if not shutil.which("sinfo"):
        return False
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return out.returncode == 0 and out.stdout.strip() in {"idle", "mixed", "allocated"}


def test_slurm_cluster_runs_tasks_inside_slurm_jobs():
    if not _slurm_running():
        if os.environ.get("CI"):
            pytest.fail("CI must run the SLURM test: .ci/run starts a cluster with deploy/slurm/start-single-node.sh")
        pytest.skip("no SLURM cluster running (deploy/slurm/start-single-node.sh starts one)")
    with cluster_client(cluster="slurm", jobs=1) as client:
        job_id = client.submit(_env_var, "SLURM_JOB_ID", pure=False).result()
        environments = client.run(lambda: dict(os.environ)).values()
    assert job_id and job_id.isdigit()
    assert environments and all("MALLOC_TRIM_THRESHOLD_" not in env for env in environments)
