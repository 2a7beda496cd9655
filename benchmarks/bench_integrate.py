"""Integration speed on the reference-sized job (MyD88-like sweeps of 72 Timepix images).

Usage: ``python benchmarks/bench_integrate.py [--data FOLDER] [--workers 2] [--crystals 18]``

1. Data: ``FOLDER`` holds crystal folders from ``ewald simulate preset=myd88``; simulated first if
   missing. Each sweep's strong spots (``find_spots``, d_max=20) are indexed with the true model
   (tests/pipeline/truth_indexing.py), so that the input is what refinement would hand on.
2. One 72-image sweep: the images are read into memory once (a Dask array chunked like the
   lazy stack), then ``integration_graph`` (profile model, prediction, reference pass and σ
   refinement, chunk tasks, profile fitting) runs on the threaded Dask scheduler with
   ``--workers`` threads, after a warm-up run: wall and CPU time; and the same work single-threaded,
   phase by phase (prepare = σb/σm + prediction; background_profiles = every image's radial
   background profile, once; chunks = painting, background, summation, grid
   mapping; finish = profile learning and fitting, table).
3. ``--crystals`` sweeps end to end with ``integrate.run`` (SMV files read included) in one Dask
   graph: wall and CPU time, reflections/s, peak resident memory.

Writes ``benchmarks/results/bench_integrate.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from simulated_data import DEFAULT_DATA, ensure_data, peak_rss_mb  # noqa: E402
sys.path.insert(0, str(ROOT / "tests" / "pipeline"))
RESULTS = ROOT / "benchmarks" / "results" / "bench_integrate.json"


def indexed_input(folder: Path):
    """The true experiment and its strong spots indexed with the true model."""
    from pipeline.formats.expt import read_experiments
    from pipeline.params import parse_parameters
    from pipeline.steps import find_spots
    from truth_indexing import index_with_truth

    experiments = read_experiments(folder / "truth.expt")
    params, _ = parse_parameters(find_spots.Params, ["d_max=20"])
    strong = find_spots.run(experiments, None, params).reflections
    return experiments[0], index_with_truth(experiments[0], strong)


def timed(function, *args):
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def one_sweep(experiment, indexed, workers: int) -> dict:
    import dask

    from pipeline.images import open_image_stack
    from pipeline.params import parse_parameters
    from pipeline.steps import integrate

    import dask.array as da

    params, _ = parse_parameters(integrate.Params, [])
    images = open_image_stack(experiment).data.compute()
    # in memory, but chunked like the lazily read stack, so that the graph is the pipeline's
    stack = da.from_array(images, chunks=(params.chunk_images, -1, -1))

    def graph_run():
        with dask.config.set(scheduler="threads", num_workers=workers):
            return dask.compute(integrate.integration_graph(experiment, indexed, params, stack, 0))[0]

    graph_run()  # warm-up: numba caches, page cache
    runs = [timed(graph_run) for _ in range(3)]
    result, wall, cpu = min(runs, key=lambda r: r[1])
    # phase by phase, single thread (the main pass; the σ-refining reference pass is not shown)
    prep, t_prepare, _ = timed(integrate.prepare, experiment, indexed, params)
    pixel_valid = integrate.pixel_validity_mask(experiment)
    n = experiment.scan.num_images
    z0 = experiment.scan.array_range[0]
    ring_u = integrate.ring_map(experiment)
    profiles, t_background, _ = timed(integrate.background_profiles_chunk, prep, images, z0, experiment, pixel_valid,
                                      ring_u)
    t_chunks = 0.0
    chunk_results = []
    for task, (s, e) in enumerate(prep["bounds"]):
        lo, hi = max(0, s - params.halo_images), min(n, e + params.halo_images)
        out, t, _ = timed(integrate.integrate_chunk, prep, task, images[lo:hi], z0 + lo, experiment, pixel_valid,
                          params.background, False, ring_u, profiles[lo:hi])
        chunk_results.append(out)
        t_chunks += t
    out, t, _ = timed(integrate.integrate_chunk, prep, len(prep["bounds"]), images, z0, experiment, pixel_valid,
                      params.background, False, ring_u, profiles)
    chunk_results.append(out)
    t_chunks += t
    _, t_finish, _ = timed(integrate.finish, prep, chunk_results, experiment, indexed, params, 0)
    table = result.reflections
    return {
        "images": int(n),
        "reflections": len(table),
        "workers": workers,
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "wall_s_all_runs": [round(r[1], 3) for r in runs],
        "reflections_per_s": round(len(table) / wall, 1),
        "single_thread_phases_s": {"prepare": round(t_prepare, 3), "background_profiles": round(t_background, 3),
                                   "chunks": round(t_chunks, 3),
                                   "finish": round(t_finish, 3)},
        "wide_task_reflections": int(np.sum(prep["owner"] == len(prep["bounds"]))),
        "sigma_b_deg": result.summary["profile_model"]["sigma_b_deg"],
        "sigma_m_deg": result.summary["profile_model"]["sigma_m_deg"],
    }


def many_sweeps(inputs, workers: int) -> dict:
    import dask

    from pipeline.images import open_image_stack
    from pipeline.params import parse_parameters
    from pipeline.steps import integrate

    params, _ = parse_parameters(integrate.Params, [])
    graphs = [integrate.integration_graph(e, r, params, open_image_stack(e, chunk_images=params.chunk_images), i)
              for i, (e, r) in enumerate(inputs)]
    with dask.config.set(scheduler="threads", num_workers=workers):
        results, wall, cpu = timed(lambda: dask.compute(*graphs))
    n_refl = sum(len(r.reflections) for r in results)
    images = sum(e.scan.num_images for e, _ in inputs)
    return {"sweeps": len(inputs), "images": int(images), "reflections": int(n_refl), "workers": workers,
            "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "images_per_s": round(images / wall, 1),
            "reflections_per_s": round(n_refl / wall, 1), "peak_rss_mb": round(peak_rss_mb(), 1)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--crystals", type=int, default=18, help="sweeps for the throughput run (0: skip it)")
    args = parser.parse_args(argv)
    crystals = ensure_data(args.data)
    load_before = os.getloadavg()[0]
    inputs = [indexed_input(folder) for folder in crystals[: max(1, args.crystals)]]
    single = one_sweep(*inputs[0], args.workers)
    print(json.dumps(single, indent=1))
    throughput = many_sweeps(inputs, args.workers) if args.crystals > 0 else None
    results = {
        "benchmark": "integration (profile model, prediction, GLM background, summation, 3D profile fitting)",
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_1min": load_before, "load_average_after": os.getloadavg()[0]},
        "one_sweep_in_memory": single,
        "sweeps_end_to_end": throughput,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
