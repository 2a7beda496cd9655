"""Spot-finding throughput on the reference-sized job (18 sweeps × 72 Timepix images).

Usage: ``python benchmarks/bench_spotfinding.py [--data FOLDER] [--workers 2] [--reference-images 144]``

1. Data: ``FOLDER`` holds crystal folders 1 … 18 from ``ewald simulate preset=myd88``; if it does
   not exist it is simulated first (once; ~700 MB of SMV files).
2. ``ewald find_spots`` end to end (``find_spots.run`` on all 18 sweeps in one Dask graph, threaded
   scheduler with ``--workers`` threads, reading the SMV files included, d_max=20 with the true
   distance), after a warm-up on one sweep: wall and CPU time, images/s, peak resident memory
   (``ru_maxrss``, measured before anything else in the process allocates more).
3. The same dispersion_extended spot finder on the same in-memory images, single thread: the
   numba kernels against the plain scipy.ndimage implementation (algorithms/spotfinding/reference.py)
   on the first ``--reference-images`` images, with a check that both find the same spots.

Writes ``benchmarks/results/bench_spotfinding.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from simulated_data import DEFAULT_DATA, ensure_data, peak_rss_mb  # noqa: E402
RESULTS = ROOT / "benchmarks" / "results" / "bench_spotfinding.json"


def sweeps(crystals: list[Path]):
    from pipeline.images import import_experiments
    from pipeline.steps.simulate import read_truth

    experiments = []
    for folder in crystals:
        experiment = import_experiments([folder])[0]
        experiment.detector.set_distance_mm(read_truth(folder).record["distance_mm"])
        experiments.append(experiment)
    return experiments


def end_to_end(experiments, workers: int) -> dict:
    import dask

    from pipeline.params import parse_parameters
    from pipeline.steps import find_spots

    params, _ = parse_parameters(find_spots.Params, ["d_max=20"])
    rss_before = peak_rss_mb()
    with dask.config.set(scheduler="threads", num_workers=workers):
        find_spots.run(experiments[:1], None, params)  # warm-up: numba cache, imports
        wall, cpu = time.perf_counter(), time.process_time()
        result = find_spots.run(experiments, None, params)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    n_images = sum(e.scan.num_images for e in experiments)
    return {
        "sweeps": len(experiments),
        "images": n_images,
        "workers": workers,
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "images_per_s": round(n_images / wall, 1),
        "images_per_cpu_s": round(n_images / cpu, 1),
        "spots": len(result.reflections),
        "spots_per_sweep": [s["n_spots"] for s in result.summary["imagesets"]],
        "rejected_images": [s["rejected_images"] for s in result.summary["imagesets"]],
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "peak_rss_before_mb": round(rss_before, 1),
    }


def kernels(experiments, n_reference_images: int) -> dict:
    """numba vs scipy.ndimage, same images in memory, one thread, threshold + label + centroids."""
    from algorithms.spotfinding import DispersionParameters, static_mask
    from algorithms.spotfinding.centroids import spot_properties
    from algorithms.spotfinding.labelling import strong_pixels_in_chunk
    from algorithms.spotfinding.reference import reference_spots
    from pipeline.images import open_image_stack

    images, masks = [], []
    for experiment in experiments:
        if sum(len(i) for i in images) >= n_reference_images:
            break
        images.append(open_image_stack(experiment).data.compute())
        masks.append(static_mask(experiment.detector, experiment.beam.s0, d_max=20.0))
    parameters = DispersionParameters()
    trusted = experiments[0].detector.trusted_range

    def numba_run() -> int:
        return sum(len(spot_properties(strong_pixels_in_chunk(stack, 0, mask, parameters, trusted)))
                   for stack, mask in zip(images, masks))

    def scipy_run() -> int:
        return sum(len(reference_spots(stack, 0, mask, parameters, trusted)["n_pixels"]) for stack, mask in zip(images, masks))

    numba_run()  # warm-up
    timings = {}
    for name, function in (("numba", numba_run), ("scipy_ndimage", scipy_run)):
        start = time.thread_time()
        timings[name + "_spots"] = function()
        timings[name] = time.thread_time() - start
    n_images = sum(len(i) for i in images)
    return {
        "images": n_images,
        "numba_images_per_cpu_s": round(n_images / timings["numba"], 1),
        "scipy_ndimage_images_per_cpu_s": round(n_images / timings["scipy_ndimage"], 1),
        "speedup": round(timings["scipy_ndimage"] / timings["numba"], 1),
        "same_spots": timings["numba_spots"] == timings["scipy_ndimage_spots"],
        "spots": timings["numba_spots"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--reference-images", type=int, default=144)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    experiments = sweeps(ensure_data(args.data))
    record = {
        "benchmark": "spot finding (dispersion_extended, DIALS defaults, d_max=20)",
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_average_1min": os.getloadavg()[0]},
        "end_to_end": end_to_end(experiments, args.workers),
        "kernels_single_thread": kernels(experiments, args.reference_images),
    }
    record["machine"]["load_average_after"] = os.getloadavg()[0]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
