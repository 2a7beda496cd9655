"""The whole job (``ewald process``) on the simulated MyD88 small-wedge set, by workers and crystals.

Usage: ``python benchmarks/bench_process.py [--cache FOLDER] [--crystals 6 18 54] [--workers 1 2] [--auto]``

1. Data: ``ewald simulate preset=myd88`` (18 crystals × 72 Timepix images, with the preset's
   non-isomorphous crystal and corrupted images) is simulated once into ``FOLDER/myd88-18``; 6
   crystals are its first six folders; 54 crystals is the preset simulated with n_crystals=54
   into ``FOLDER/myd88-54``. Each run processes into a fresh work folder (nothing skipped).
2. A warm-up run on one crystal first, so that numba's on-disk cache is warm (the issue's target
   is for a warm cache) and the figures do not include compilation.
3. For each crystal count and worker count (a LocalCluster of W processes sharing the machine's
   cores through threads): ``process`` with the axis, distance and space group given (as
   ``ewald process ../814/{1..18} distance=1762 goniometer.axis=-107,-122,0 space_group=C2
   d_min=3.0``), and with ``--auto`` also 18 crystals with goniometer.axis=auto distance=auto and
   the known cell, on the largest worker count.
   Recorded: the ProcessResult timings (wall per phase), the Dask task stream summed by step
   (compute seconds per step, the longest tasks), throughput (images per wall second), the peak
   resident memory summed over this process and its worker processes (sampled every 0.2 s; also
   each side's own peak), the data sets kept/failed and CC(merged, true) to 3.0 Å against the
   simulator's truth.

Writes ``benchmarks/results/bench_process.json`` (runs of earlier invocations with other settings
are kept) and ``benchmarks/results/bench_process.png`` (images/s against workers and crystals).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "bench_process.json"
PLOT = ROOT / "benchmarks" / "results" / "bench_process.png"
DEFAULT_CACHE = Path(os.environ.get("EWALD_BENCH_DATA", "/tmp/ewald-bench-process"))
KNOWN_CELL = (99.06, 31.01, 54.30, 90, 107.7, 90)
D_MIN = 3.0


def simulation(cache: Path, n_crystals: int) -> Path:
    """The folder of a myd88 simulation with at least ``n_crystals`` crystals (simulated once)."""
    from pipeline.params import parse_parameters
    from pipeline.steps import simulate

    size = 18 if n_crystals <= 18 else n_crystals
    folder = cache / f"myd88-{size}"
    if not (folder / "simulation.json").is_file():
        params, _ = parse_parameters(simulate.Params, ["preset=myd88", f"n_crystals={size}"])
        print(f"simulating {size} crystals into {folder} ...", flush=True)
        simulate.run(params, folder)
    return folder


def crystal_folders(folder: Path, n_crystals: int) -> list[str]:
    numbered = sorted((p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    return [str(p) for p in numbered[:n_crystals]]


class PeakMemory:
    """Peak summed RSS of this process and all its descendants (the local Dask workers)."""

    def __init__(self, interval_s: float = 0.2):
        self.interval_s, self.peak_bytes = interval_s, 0
        self.peak_client_bytes = self.peak_workers_bytes = 0  # this process alone; its descendants alone
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            client, workers = me.memory_info().rss, 0
            for process in me.children(recursive=True):
                try:
                    workers += process.memory_info().rss
                except psutil.Error:
                    pass
            self.peak_bytes = max(self.peak_bytes, client + workers)
            self.peak_client_bytes = max(self.peak_client_bytes, client)
            self.peak_workers_bytes = max(self.peak_workers_bytes, workers)
            self._stop.wait(self.interval_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def step_of(key) -> str:
    """The step a task of the process graph belongs to, from its key."""
    if not isinstance(key, str):
        return "read_images" if "read" in str(key[0]) else str(key[0]).split("-")[0]
    for prefix, step in (("first-pass", "first_pass_find_spots"), ("find_rotation_axis", "find_rotation_axis"),
                         ("calibrate_distance", "calibrate_distance"), ("find_spots", "find_spots"),
                         ("strong", "find_spots"), ("index", "index"), ("refine", "refine"),
                         ("integrate", "integrate"), ("scale", "scale_export_merge"), ("load", "load")):
        if key.startswith(prefix):
            return step
    return key.split("-")[0]


def summarise_task_stream(stream: list[dict]) -> dict:
    compute_s, counts, tasks = {}, {}, []
    for task in stream:
        seconds = sum(s["stop"] - s["start"] for s in task.get("startstops", ()) if s["action"] == "compute")
        step = step_of(task["key"])
        compute_s[step] = compute_s.get(step, 0.0) + seconds
        counts[step] = counts.get(step, 0) + 1
        tasks.append((seconds, str(task["key"])))
    tasks.sort(reverse=True)
    return {"compute_s_by_step": {k: round(v, 3) for k, v in sorted(compute_s.items(), key=lambda kv: -kv[1])},
            "tasks_by_step": counts, "n_tasks": len(stream),
            "longest_tasks": [{"key": k, "compute_s": round(s, 3)} for s, k in tasks[:15]]}


def run_once(datasets: list[str], workers: int, parameters: dict, truth: Path, cores: int) -> dict:
    from distributed import get_task_stream

    from pipeline import process
    from pipeline.cluster import cluster_client
    from pipeline.truth import compare_with_truth

    workdir = Path(tempfile.mkdtemp(prefix="bench-process-"))
    try:
        with PeakMemory() as memory:
            start = time.perf_counter()
            # the cluster `ewald process` starts (with its worker settings), given as a client
            # so that the task stream can be recorded
            with cluster_client(n_workers=workers, threads_per_worker=max(1, cores // workers),
                                dashboard_address=":0") as client:
                started = time.perf_counter()
                with get_task_stream(client) as stream:
                    result = process(datasets, client=client, workdir=str(workdir), **parameters)
                tasks = summarise_task_stream(stream.data)
            wall = time.perf_counter() - start
        merged = workdir / "scale" / "merged.mtz"
        comparison = compare_with_truth(merged, truth, d_min=D_MIN) if merged.is_file() else None
        n_images = 72 * len(datasets)
        failed = {o.name: f"{o.failure.step}: {o.failure.reason}" for o in result.datasets if o.failure}
        removed = (result.scaled.summary.get("removed_datasets") if result.scaled else None) or []
        return {
            "wall_s": round(wall, 2), "cluster_start_s": round(started - start, 2),
            "timings_s": {k: round(v, 2) for k, v in result.timings.items()},
            "images": n_images, "images_per_s": round(n_images / result.timings["total"], 2),
            "peak_rss_mb": round(memory.peak_bytes / 2**20, 1),
            "peak_rss_client_mb": round(memory.peak_client_bytes / 2**20, 1),
            "peak_rss_workers_mb": round(memory.peak_workers_bytes / 2**20, 1),
            "n_failed": len(failed), "failed": failed, "removed_by_scaling": removed,
            "calibration": {k: v for k, v in result.calibration.items() if k in ("axis", "distance")},
            "cc_true": None if comparison is None else round(comparison["cc"], 4),
            "cc_true_bins": None if comparison is None else comparison["bins"],
            "task_stream": tasks,
        }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def parameters_for(spec: dict, auto: bool) -> dict:
    if auto:
        return {"goniometer_axis": "auto", "distance": "auto", "unit_cell": KNOWN_CELL, "space_group": "C2",
                "d_min": D_MIN}
    return {"goniometer_axis": tuple(spec["rotation_axis"]), "distance": spec["distance"], "space_group": "C2",
            "d_min": D_MIN}


def plot(runs: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    given = [r for r in runs if r["mode"] == "given"]
    fig, (by_workers, by_crystals) = plt.subplots(1, 2, figsize=(10, 4))
    for n in sorted({r["crystals"] for r in given}):
        points = sorted((r["workers"], r["images_per_s"]) for r in given if r["crystals"] == n)
        by_workers.plot(*zip(*points), "o-", label=f"{n} crystals")
    for w in sorted({r["workers"] for r in given}):
        points = sorted((r["crystals"], r["images_per_s"]) for r in given if r["workers"] == w)
        by_crystals.plot(*zip(*points), "o-", label=f"{w} worker process{'es' if w > 1 else ''}")
    for r in runs:
        if r["mode"] == "auto":
            by_crystals.plot(r["crystals"], r["images_per_s"], "k^", label=f"axis+distance auto, {r['workers']} w")
    by_workers.set(xlabel="local worker processes (sharing the machine's cores)", ylabel="images / s (wall)",
                   title="ewald process, simulated MyD88 (72 images/crystal)")
    by_crystals.set(xlabel="crystals", ylabel="images / s (wall)")
    by_workers.set_xticks(sorted({r["workers"] for r in runs}))
    by_crystals.set_xticks(sorted({r["crystals"] for r in runs}))
    for axes in (by_workers, by_crystals):
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
        axes.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(PLOT, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--crystals", type=int, nargs="*", default=[6, 18, 54], help="crystal counts to run (none: only --auto)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--auto", action="store_true",
                        help="also run 18 crystals with axis and distance auto (on the most workers)")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    previous = json.loads(RESULTS.read_text()).get("runs", []) if RESULTS.is_file() else []

    base = simulation(args.cache, 18)
    spec = json.loads((base / "simulation.json").read_text())["spec"]
    print("warm-up (numba cache) on one crystal ...", flush=True)
    run_once(crystal_folders(base, 1), 1, parameters_for(spec, False), base / "true_merged.mtz", cores)

    plan = [(n, w, "given") for n in args.crystals for w in args.workers]
    if args.auto:
        plan.append((18, max(args.workers), "auto"))
    runs = [r for r in previous if (r["crystals"], r["workers"], r["mode"]) not in set(plan)]
    for n_crystals, workers, mode in plan:
        folder = simulation(args.cache, n_crystals)
        print(f"{n_crystals} crystals, {workers} worker(s), axis/distance {mode} ...", flush=True)
        load_before = os.getloadavg()[0]
        try:
            figures = run_once(crystal_folders(folder, n_crystals), workers, parameters_for(spec, mode == "auto"),
                               folder / "true_merged.mtz", cores)
        except Exception as error:  # a failed job is a result too; the other runs go on
            figures = {"error": f"{type(error).__name__}: {error}"}
            print(f"  failed: {figures['error']}", flush=True)
        else:
            print(f"  wall {figures['wall_s']} s (process {figures['timings_s']['total']} s), "
                  f"{figures['images_per_s']} images/s, peak {figures['peak_rss_mb']} MB, CC {figures['cc_true']}, "
                  f"failed {figures['n_failed']}; steps {figures['timings_s']}; "
                  f"task compute s {figures['task_stream']['compute_s_by_step']}", flush=True)
        runs.append({"crystals": n_crystals, "workers": workers, "mode": mode,
                     "threads_per_worker": max(1, cores // workers),
                     "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)], **figures})
        write(runs, cores)
    print(f"wrote {RESULTS} and {PLOT}")


def write(runs: list[dict], cores: int) -> None:
    """The JSON (after every run, so that a long session keeps what it measured) and the plot."""
    runs = sorted(runs, key=lambda r: (r["mode"], r["crystals"], r["workers"]))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "benchmark": "ewald process on simulated MyD88 (72 Timepix images per crystal), LocalCluster",
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"python": platform.python_version(), "cpus": cores,
                    "note": "cores shared with other jobs: see each run's load_average_1min (before, after)"},
        "targets": {"wall_s_18x72": 60, "peak_gb": 4, "cc_true_min": 0.95, "d_min": D_MIN},
        "runs": runs,
    }, indent=1))
    plot([r for r in runs if "error" not in r])


if __name__ == "__main__":
    main()
