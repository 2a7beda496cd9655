"""Spot-finding throughput and accuracy on the reference-sized job (18 sweeps × 72 Timepix images).

Usage: ``python benchmarks/bench_spotfinding.py [--data FOLDER] [--workers 2] [--reference-images 1296] [--no-accuracy]``

1. Data: ``FOLDER`` holds crystal folders 1 … 18 from ``ewald simulate preset=myd88``; if it does
   not exist it is simulated first (once; ~700 MB of SMV files).
2. ``ewald find_spots`` end to end (``find_spots.run`` on all 18 sweeps in one Dask graph, threaded
   scheduler with ``--workers`` threads, reading the SMV files included, d_max=20 with the true
   distance), after a warm-up on one sweep: wall and CPU time, images/s, peak resident memory
   (``ru_maxrss``, measured before anything else in the process allocates more).
3. The same dispersion_extended spot finder on the same in-memory images (float32, as the
   pipeline reads them), single thread, CPU time: the numba kernels against the plain
   scipy.ndimage implementation (algorithms/spotfinding/reference.py: separable window sums,
   a chessboard distance transform, ``ndimage.label``, ``np.bincount``) on the first
   ``--reference-images`` images (default: the whole job, whose 2 scrambled frames are costly
   for both), with a check that both find the same spots.
4. Accuracy against the simulator's truth (tests/algorithms/spotfinding_truth.py, re-simulated
   in memory): recall at true I/σ ≥ 5, 10, 20, 30 under two definitions of true I/σ — that of the
   reflection's best single image (summation in its 3σ ellipse, σ² = Poisson counts of signal +
   background), which is what a per-image finder can see, and that of ideal 3D summation over
   its whole rocking curve (6–14 images in these data); centroid RMS on matched spots, z both
   against the reflection's counts on the images the spot spans and against its whole recorded
   rocking curve; the fraction of spurious spots.
5. Steps 2 and 4 again with the weak-spot filter (``weak_spots.enable=True``; beyond DIALS).

Writes ``benchmarks/results/bench_spotfinding.json``. Measured 2026-11-28 (2 shared cores): end to
end 756 images/s wall, 442 images per CPU-second, peak RSS 367 MB; kernels 1.47 ms (numba) against
17.8 ms (scipy.ndimage) per image, 12.1×; accuracy as in test_spotfinding_simulated.py.
2026-11-29 (load 0.7–1.0), same run: end to end 704 images/s (459 per CPU-second, peak RSS 376 MB);
with the weak-spot filter 114 images/s (60 per CPU-second: 7.7× the CPU, peak RSS 839 MB), 65 899
spots instead of 14 583; kernels 1.77 against 18.7 ms per image, 10.6×. Recall with the filter at
summed I/σ ≥ 5 / 10 / 20: 95.2 / 95.8 / 94.5 % (DIALS' test alone 25 / 42 / 80 %), at best-image
I/σ ≥ 5 97.8 % (32 %); centroid RMS over the recall's reflections 0.236, 0.233 px, 0.284 images
(0.257, 0.251, 0.358); spurious 2.9 % (2.5 %).
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


def end_to_end(experiments, workers: int, extra: tuple[str, ...] = ()) -> dict:
    import dask

    from pipeline.params import parse_parameters
    from pipeline.steps import find_spots

    params, _ = parse_parameters(find_spots.Params, ["d_max=20", *extra])
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
    """numba vs scipy.ndimage, same images in memory, one thread, threshold + label + centroids;
    one sweep in memory at a time."""
    from algorithms.spotfinding import DispersionParameters, static_mask
    from algorithms.spotfinding.centroids import spot_properties
    from algorithms.spotfinding.labelling import strong_pixels_in_chunk
    from algorithms.spotfinding.reference import reference_spots
    from pipeline.images import open_image_stack

    parameters = DispersionParameters()
    trusted = experiments[0].detector.trusted_range
    runs = {
        "numba": lambda stack, mask: len(spot_properties(strong_pixels_in_chunk(stack, 0, mask, parameters, trusted))),
        "scipy_ndimage": lambda stack, mask: len(reference_spots(stack, 0, mask, parameters, trusted)["n_pixels"]),
    }
    cpu = dict.fromkeys(runs, 0.0)
    spots = dict.fromkeys(runs, 0)
    n_images = 0
    for k, experiment in enumerate(experiments):
        if n_images >= n_reference_images:
            break
        stack = open_image_stack(experiment).data.compute()[: n_reference_images - n_images]
        mask = static_mask(experiment.detector, experiment.beam.s0, d_max=20.0)
        if k == 0:
            runs["numba"](stack, mask)  # warm-up
        for name, run in runs.items():
            start = time.thread_time()
            spots[name] += run(stack, mask)
            cpu[name] += time.thread_time() - start
        n_images += len(stack)
    return {
        "images": n_images,
        "numba_ms_per_image": round(1e3 * cpu["numba"] / n_images, 3),
        "scipy_ndimage_ms_per_image": round(1e3 * cpu["scipy_ndimage"] / n_images, 3),
        "numba_images_per_cpu_s": round(n_images / cpu["numba"], 1),
        "scipy_ndimage_images_per_cpu_s": round(n_images / cpu["scipy_ndimage"], 1),
        "speedup": round(cpu["scipy_ndimage"] / cpu["numba"], 1),
        "same_spots": spots["numba"] == spots["scipy_ndimage"],
        "spots": spots["numba"],
    }


def accuracy(weak_spots=None) -> dict:
    """The simulated-data test's figures on the whole myd88 preset (definitions in its helper),
    with DIALS' test alone or with the weak-spot filter's spots added."""
    import numpy as np

    sys.path.insert(0, str(ROOT / "tests" / "algorithms"))
    from test_spotfinding_simulated import run_preset, summarise

    summary = summarise(run_preset("myd88", weak_spots))

    def plain(value):
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        return np.round(value, 3).tolist() if isinstance(value, (np.ndarray, np.floating)) else value

    return {key: plain(value) for key, value in summary.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--reference-images", type=int, default=18 * 72)
    parser.add_argument("--no-accuracy", action="store_true", help="skip the comparison with the simulator's truth")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    experiments = sweeps(ensure_data(args.data))
    record = {
        "benchmark": "spot finding (dispersion_extended, DIALS defaults, d_max=20)",
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_average_1min": os.getloadavg()[0]},
        "end_to_end": end_to_end(experiments, args.workers),
        "end_to_end_weak_spots": end_to_end(experiments, args.workers, ("weak_spots.enable=True",)),
        "kernels_single_thread": kernels(experiments, args.reference_images),
    }
    if not args.no_accuracy:
        from algorithms.spotfinding import WeakSpotParameters

        record["accuracy_against_truth"] = accuracy()
        record["accuracy_against_truth_weak_spots"] = accuracy(WeakSpotParameters())
    record["machine"]["load_average_after"] = os.getloadavg()[0]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
