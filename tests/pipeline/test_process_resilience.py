"""``ewald process`` as one Dask graph: failed data sets, a killed worker, reruns, worker counts
and the dashboard, on one tiny simulated job (two good crystals, a sweep of pure noise and a sweep
with a truncated image) whose true merged intensities are known.

The merged intensities of every disturbed run (another worker count, a worker killed mid-run,
a rerun after an interrupt) must equal those of the undisturbed one-worker run to 1e-6 relative.
"""
import os
import re
import shutil
import signal
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import gemmi
import numpy as np
import pytest
from distributed import Client, LocalCluster, get_task_stream

from pipeline import process
from pipeline.steps.process import format_dataset_table
from pipeline.steps.simulate import Params as SimulateParams
from pipeline.steps.simulate import run as simulate
from pipeline.params import parse_parameters
from pipeline.truth import compare_with_truth

GOOD = ("1", "2")
PARAMETERS = dict(goniometer_axis=(-107, -122, 0), space_group="C2", d_min=3.0)


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> Path:
    """sim/1, sim/2 (tiny preset), sim/noise (sim/1's headers over Poisson noise: nothing to
    index) and sim/truncated (sim/2 with one image cut short: cannot be imported)."""
    folder = tmp_path_factory.mktemp("process") / "sim"
    params, _ = parse_parameters(SimulateParams, ["preset=tiny", "n_crystals=2"])
    simulate(params, folder)
    rng = np.random.default_rng(7)
    (folder / "noise").mkdir()
    for image in sorted((folder / "1").glob("*.img")):
        raw = image.read_bytes()
        header_bytes = int(re.search(rb"HEADER_BYTES=\s*(\d+)", raw).group(1))
        n_pixels = (len(raw) - header_bytes) // 2
        noise = rng.poisson(4.0, n_pixels).astype("<u2")
        (folder / "noise" / image.name).write_bytes(raw[:header_bytes] + noise.tobytes())
    shutil.copytree(folder / "2", folder / "truncated")
    cut = sorted((folder / "truncated").glob("*.img"))[9]
    cut.write_bytes(cut.read_bytes()[:100_000])
    return folder


def _datasets(job: Path) -> list[str]:
    return [str(job / name) for name in (*GOOD, "noise", "truncated")]


def _run(job: Path, workdir: Path, client):
    return process(_datasets(job), client=client, workdir=str(workdir), **PARAMETERS)


def _merged_imean(workdir: Path) -> tuple[np.ndarray, np.ndarray]:
    mtz = gemmi.read_mtz_file(str(workdir / "scale" / "merged.mtz"))
    hkl = np.asarray(mtz.make_miller_array())
    order = np.lexsort(hkl.T[::-1])
    return hkl[order], np.asarray(mtz.column_with_label("IMEAN").array)[order]


def _assert_same_merged(workdir: Path, reference: Path, rtol: float = 1e-6) -> None:
    hkl, imean = _merged_imean(workdir)
    hkl_ref, imean_ref = _merged_imean(reference)
    np.testing.assert_array_equal(hkl, hkl_ref)
    np.testing.assert_allclose(imean, imean_ref, rtol=rtol, atol=rtol * np.abs(imean_ref).max())


@pytest.fixture(scope="module")
def reference(job, tmp_path_factory):
    """The undisturbed run on one worker process."""
    workdir = tmp_path_factory.mktemp("reference")
    with LocalCluster(n_workers=1, threads_per_worker=2, dashboard_address=":0") as cluster, Client(cluster) as client:
        result = _run(job, workdir, client)
    return result, workdir


def _task_keys_on_dashboard(link: str) -> set[str]:
    """Task keys the dashboard's HTML pages show (tasks processing or held on each worker)."""
    base = link.rsplit("/status", 1)[0]
    keys = set()
    with urllib.request.urlopen(f"{base}/info/main/workers.html", timeout=10) as page:
        workers = set(re.findall(r'href="\.\./worker/([^"]+)\.html"', page.read().decode()))
    for worker in workers:
        with urllib.request.urlopen(f"{base}/info/worker/{worker}.html", timeout=10) as page:
            keys.update(urllib.parse.unquote(k) for k in re.findall(r'href="\.\./task/([^"]+)\.html"', page.read().decode()))
    return keys


@pytest.fixture(scope="module")
def two_workers(job, tmp_path_factory):
    """The same job on two worker processes, run in a thread while the test reads the dashboard."""
    workdir = tmp_path_factory.mktemp("two-workers")
    outcome, seen, status_pages = {}, set(), []
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address="127.0.0.1:0") as cluster, \
            Client(cluster) as client, get_task_stream(client) as stream:
        link = client.dashboard_link

        def target():
            try:
                outcome["result"] = _run(job, workdir, client)
            except BaseException as error:  # reported by the test
                outcome["error"] = error

        thread = threading.Thread(target=target)
        thread.start()
        while thread.is_alive():
            with urllib.request.urlopen(link, timeout=10) as page:
                status_pages.append((page.status, page.read()))
            seen |= _task_keys_on_dashboard(link)
            time.sleep(0.1)
        thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"], workdir, link, status_pages, seen, {t["key"] for t in stream.data if isinstance(t["key"], str)}


def test_failed_datasets_are_reported_and_the_others_merged(job, reference):
    result, workdir = reference
    by_name = {o.name: o for o in result.datasets}
    assert [o.failure is None for o in result.datasets] == [True, True, False, False]
    assert by_name["truncated"].failure.step == "import"
    assert "truncated" in by_name["truncated"].failure.reason and "00010.img" in by_name["truncated"].failure.reason
    # pure noise: no spots worth the name, or none that index
    assert by_name["noise"].failure.step in ("find_spots", "index")
    assert by_name["noise"].failure.reason
    table = format_dataset_table(result)
    for name in ("noise", "truncated"):
        failure = by_name[name].failure
        assert re.search(rf"^{name}\s+failed\s+{failure.step}: ", table, re.M), table
    # both good crystals are in the scaled and merged data, which match the truth
    assert len(result.scaled.experiments) == 2
    for name in GOOD:
        assert (workdir / name / "integrated.refl").is_file()
        assert by_name[name].summary["n_integrated"] > 500
    comparison = compare_with_truth(workdir / "scale" / "merged.mtz", job / "true_merged.mtz", d_min=3.0)
    assert comparison["cc"] > 0.85


def _without_run_token(key: str) -> str:
    """Task keys carry a token unique to the run (index-ds2-1a2b3c4d); compare without it."""
    return re.sub(r"-[0-9a-f]{8}(?=-|$)", "", key)


def test_dashboard_names_the_tasks_of_the_run(two_workers):
    _, _, link, status_pages, seen_on_dashboard, streamed = two_workers
    assert link.startswith("http://127.0.0.1:")
    assert status_pages and all(status == 200 and b"Dask" in body for status, body in status_pages)
    # every step of every good data set ran under its own name
    streamed = {_without_run_token(k) for k in streamed}
    for name in GOOD:
        assert f"find_spots-ds{name}" in streamed and f"find_spots-ds{name}-0" in streamed
        assert {f"index-ds{name}", f"refine-ds{name}"} <= streamed
    assert any(k.startswith("integrate-") for k in streamed) and "scale" in streamed
    # and the dashboard showed them while the run went on
    prefixes = {k.split("-")[0] for k in seen_on_dashboard}
    assert {"find_spots", "integrate"} <= prefixes, seen_on_dashboard
    assert prefixes & {"index", "refine"}, seen_on_dashboard


def test_one_and_two_workers_give_the_same_merged_intensities(reference, two_workers):
    _assert_same_merged(two_workers[1], reference[1])


def test_a_worker_killed_mid_run_does_not_change_the_result(job, reference, tmp_path):
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster, Client(cluster) as client:
        outcome = {}
        thread = threading.Thread(target=lambda: outcome.update(result=_run(job, tmp_path, client)))
        thread.start()
        killed = None
        while thread.is_alive() and killed is None:
            states = client.run_on_scheduler(
                lambda dask_scheduler: {str(k): ts.state for k, ts in dask_scheduler.tasks.items()})
            if any(k.startswith("index-") and s == "memory" for k, s in states.items()):
                pids = client.run(os.getpid)
                killed = pids[sorted(pids)[0]]
                os.kill(killed, signal.SIGKILL)
            time.sleep(0.05)
        thread.join()
    assert killed is not None, "the run ended before any index task finished"
    assert "result" in outcome
    datasets = outcome["result"].datasets
    assert [o.failure is None for o in datasets] == [True, True, False, False], [o.failure for o in datasets]
    _assert_same_merged(tmp_path, reference[1])


def _record_times(folder: Path) -> dict[str, int]:
    """Modification times of a data set's step records (import's is rewritten by every run)."""
    return {p.name: p.stat().st_mtime_ns for p in (folder / ".ewald").iterdir() if p.name != "import.json"}


def test_rerun_after_an_interrupt_redoes_only_the_unfinished_steps(job, reference, tmp_path):
    workdir = tmp_path / "proc"
    shutil.copytree(reference[1], workdir)
    (workdir / "2" / ".ewald" / "integrate.json").unlink()  # as if interrupted during integration of 2
    records = {name: _record_times(workdir / name) for name in GOOD}
    with LocalCluster(n_workers=1, threads_per_worker=2, dashboard_address=":0") as cluster, \
            Client(cluster) as client, get_task_stream(client) as stream:
        _run(job, workdir, client)
    ran = {_without_run_token(t["key"]) for t in stream.data if isinstance(t["key"], str)}
    # data set 2 is integrated again from its refined files; 1 is loaded
    assert {"load-integrated-ds1", "load-refined-ds2", "integrated-ds2", "integrate-finish-ds2", "scale"} <= ran, ran
    assert not any(re.match(r"(find_spots|strong|index|refine)-ds[12](-|$)", k) for k in ran), ran
    assert not any(re.match(r"integrate-([a-z]+-)*ds1(-|$)", k) for k in ran), ran
    # only data set 2's integration record was written again
    assert _record_times(workdir / "1") == records["1"]
    after = _record_times(workdir / "2")
    assert {k: v for k, v in after.items() if k != "integrate.json"} == records["2"] and "integrate.json" in after
    # data set 1 now comes from its files, whose models round-trip to ~1e-16 (A from real-space
    # vectors); scaling's iterative fit carries that to a few 1e-6 in a handful of reflections
    _assert_same_merged(workdir, reference[1], rtol=1e-4)
