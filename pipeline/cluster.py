"""One way to get a Dask client for a run: local, an existing scheduler, or a batch system.

- ``cluster="local"`` (default): a :class:`distributed.LocalCluster` on this machine with its
  dashboard on 127.0.0.1.
- ``scheduler="tcp://host:port"``: connect to a running scheduler (any Dask deployment).
- ``cluster="slurm"|"pbs"|"sge"|"lsf"``: dask-jobqueue, configured from ``deploy/jobqueue.yaml``
  (or ``jobqueue_config=``), scaled to ``jobs`` worker jobs.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import dask
import yaml
from distributed import Client, LocalCluster

from pipeline.errors import ParameterError

JOBQUEUE_CLASSES = {"slurm": "SLURMCluster", "pbs": "PBSCluster", "sge": "SGECluster", "lsf": "LSFCluster"}
DEFAULT_JOBQUEUE_CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "jobqueue.yaml"

# distributed starts worker processes with MALLOC_TRIM_THRESHOLD_=65536. Setting it makes glibc
# also fix its mmap threshold at 128 KiB (mallopt(3): no more dynamic adjustment), so every numpy
# temporary above that size is mapped, faulted in page by page and unmapped again: ewald's joint
# scaling took 1.9x the CPU inside a worker (17 s against 9 s). Workers that ewald starts keep
# glibc's adaptive default instead.
_KEEP_GLIBC_MALLOC = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
# The same for batch jobs, whose nanny reads its settings on the compute node.
_KEEP_GLIBC_MALLOC_IN_JOBS = "export DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON=\"{'MALLOC_TRIM_THRESHOLD_': None}\""


def _load_jobqueue_config(path: str | os.PathLike | None) -> None:
    path = Path(path) if path else DEFAULT_JOBQUEUE_CONFIG
    if not path.is_file():
        raise ParameterError(f"jobqueue_config={path}: file not found; give the path of a dask-jobqueue YAML file (see deploy/jobqueue.yaml)")
    try:
        settings = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ParameterError(f"jobqueue_config={path}: not valid YAML ({exc}); fix the file") from None
    dask.config.update(dask.config.config, settings, priority="new")


@contextlib.contextmanager
def cluster_client(
    cluster: str = "local",
    scheduler: str | None = None,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    jobs: int = 2,
    jobqueue_config: str | None = None,
    dashboard_address: str = "127.0.0.1:0",
    processes: bool = True,
    log_directory: str | None = None,
) -> Iterator[Client]:
    """A client for one run, closed (and its cluster shut down) on exit."""
    if scheduler:
        client = Client(scheduler)
        try:
            yield client
        finally:
            client.close()
        return
    if cluster == "local":
        cores = os.cpu_count() or 1
        n_workers = n_workers or 1
        threads = threads_per_worker or max(1, cores // n_workers)
        with dask.config.set(_KEEP_GLIBC_MALLOC), LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads,
            processes=processes,
            dashboard_address=dashboard_address,
            host="127.0.0.1",
        ) as local, Client(local) as client:
            yield client
        return
    if cluster not in JOBQUEUE_CLASSES:
        raise ParameterError(f"cluster={cluster}: unknown; choose local, {', '.join(JOBQUEUE_CLASSES)}, or give scheduler=tcp://host:port")
    try:
        import dask_jobqueue
    except ImportError:
        raise ParameterError(f"cluster={cluster} needs dask-jobqueue: pip install 'ewald[cluster]'") from None
    _load_jobqueue_config(jobqueue_config)
    cls = getattr(dask_jobqueue, JOBQUEUE_CLASSES[cluster])
    # batch job logs go to their own folder, never into the user's working directory
    log_directory = log_directory or tempfile.mkdtemp(prefix=f"ewald-{cluster}-jobs-")
    prologue = list(dask.config.get(f"jobqueue.{cluster}.job-script-prologue", None) or []) + [_KEEP_GLIBC_MALLOC_IN_JOBS]
    with cls(scheduler_options={"dashboard_address": dashboard_address}, log_directory=log_directory,
             job_script_prologue=prologue) as batch:
        batch.scale(jobs=jobs)
        with Client(batch) as client:
            client.wait_for_workers(1, timeout=300)
            yield client


def dashboard_link(client: Client) -> str:
    return client.dashboard_link or ""
