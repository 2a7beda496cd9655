"""Simulation throughput on the reference-sized job (``ewald simulate preset=myd88``: 18 × 72
516×516 Timepix images, ~6800 observations per crystal).

Usage: ``python benchmarks/bench_simulate.py [--nproc 2] [--folder /tmp/ewald-bench/simulate]``

1. End to end: ``simulate.run`` with ``--nproc`` threads, writing all files (the folder is
   removed afterwards): wall time, CPU time (user + system) and peak resident memory. On a
   shared machine the wall time depends on the load; CPU time / nproc is the idle-machine bound.
2. Phases of one crystal, single thread: observation list, spot rendering (numba kernel),
   Poisson + corruption (numba), file writing.
3. Kernels against plain numpy references in the same run: the spot kernel against a
   per-observation numpy renderer (on the first 500 observations, checked equal), and numba's
   per-image Poisson draw against ``numpy.random.Generator.poisson``.

Writes ``benchmarks/results/bench_simulate.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results" / "bench_simulate.json"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def numpy_reference_spots(observations, rows, n_images, image_size) -> np.ndarray:
    """The same Gaussian spots, one observation at a time with numpy (no sub-sampling: the
    preset's spots are 2.2 px wide)."""
    from algorithms.simulate.render import BOX_SIGMAS

    n_fast, n_slow = image_size
    images = np.zeros((n_images, n_slow, n_fast))
    per_image = observations.counts_per_image()
    for i in rows:
        x, y, _ = observations.xyz_px[i]
        cxx, cxy, cyy = observations.spot_covariance_px[i]
        det = cxx * cyy - cxy * cxy
        x0, x1 = max(int(np.floor(x - BOX_SIGMAS * np.sqrt(cxx))), 0), min(int(np.floor(x + BOX_SIGMAS * np.sqrt(cxx))) + 1, n_fast)
        y0, y1 = max(int(np.floor(y - BOX_SIGMAS * np.sqrt(cyy))), 0), min(int(np.floor(y + BOX_SIGMAS * np.sqrt(cyy))) + 1, n_slow)
        if x0 >= x1 or y0 >= y1:
            continue
        dy, dx = np.meshgrid(np.arange(y0, y1) + 0.5 - y, np.arange(x0, x1) + 0.5 - x, indexing="ij")
        q = (cyy * dx * dx - 2 * cxy * dx * dy + cxx * dy * dy) / det
        weights = np.exp(-0.5 * q) / (2 * np.pi * np.sqrt(det))
        start, stop = observations.partial_offsets[i], observations.partial_offsets[i + 1]
        first = observations.partial_first_image[i] - 1
        images[first:first + stop - start, y0:y1, x0:x1] += per_image[start:stop, None, None] * weights
    return images


def phases(spec) -> dict:
    from algorithms.simulate import make_structures, plan_crystals
    from algorithms.simulate.observations import simulate_observations
    from algorithms.simulate.render import add_gaussian_spots, background_image, expected_spot_images, finish_images
    from algorithms.simulate.spec import Stream, rng_for
    from algorithms.simulate import SimulatedCrystal
    from pipeline.steps.simulate import write_crystal

    plans = plan_crystals(spec)
    structures = make_structures(spec, plans)
    plan = plans[0]
    out = {}
    t = time.perf_counter()
    observations = simulate_observations(spec, plan, structures["true"], rng_for(spec.seed, Stream.OBSERVATIONS, plan.index))
    out["observations_s"] = time.perf_counter() - t
    t = time.perf_counter()
    spots = expected_spot_images(observations, spec.n_images, spec.image_size)
    out["render_spots_s"] = time.perf_counter() - t
    background = background_image(spec, plan.detector.beam_centre_px(plan.beam.s0))
    t = time.perf_counter()
    images = finish_images(spots, background, plan.corrupted_images, True, rng_for(spec.seed, Stream.NOISE, plan.index))
    out["poisson_and_corruption_s"] = time.perf_counter() - t
    folder = Path(tempfile.mkdtemp(prefix="bench-simulate-"))
    t = time.perf_counter()
    write_crystal(folder / "1", SimulatedCrystal(plan, observations, images), spec)
    out["write_files_s"] = time.perf_counter() - t
    shutil.rmtree(folder)
    out["n_observations"] = len(observations)
    out["image_fractions"] = int(observations.partial_offsets[-1])

    # spot kernel vs numpy on the first 500 observations
    rows = np.arange(min(500, len(observations)))
    t = time.perf_counter()
    reference = numpy_reference_spots(observations, rows, spec.n_images, spec.image_size)
    numpy_s = time.perf_counter() - t
    offsets = observations.partial_offsets
    kernel_images = np.zeros_like(reference)
    t = time.perf_counter()
    add_gaussian_spots(kernel_images, observations.xyz_px[rows, 0].copy(), observations.xyz_px[rows, 1].copy(),
                       observations.spot_covariance_px[rows].copy(), (observations.partial_first_image[rows] - 1).astype(np.int64),
                       offsets[: len(rows) + 1].astype(np.int64), observations.counts_per_image()[: offsets[len(rows)]])
    kernel_s = time.perf_counter() - t
    out["spot_kernel_vs_numpy"] = {
        "observations": len(rows),
        "numba_s": kernel_s,
        "numpy_s": numpy_s,
        "speedup": numpy_s / kernel_s,
        "max_abs_difference": float(np.abs(kernel_images - reference).max()),
    }
    from algorithms.simulate.render import poisson_counts

    expected = background + spots[spec.n_images // 2]
    t = time.perf_counter()
    for k in range(10):
        poisson_counts(expected, k)
    numba_s = (time.perf_counter() - t) / 10
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    for _ in range(10):
        rng.poisson(expected)
    numpy_s = (time.perf_counter() - t) / 10
    out["poisson_per_image_vs_numpy"] = {"numba_s": numba_s, "numpy_s": numpy_s, "speedup": numpy_s / numba_s}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()) / "ewald-bench-simulate")
    args = parser.parse_args()

    from algorithms.simulate import PRESETS, make_structures, plan_crystals, simulate_crystal
    from pipeline.steps.simulate import Params, run

    spec = PRESETS["myd88"]
    warm = spec.replace(n_crystals=1, n_images=2, n_bad_crystals=0, n_corrupted_images=0)  # compile / load the numba kernels
    simulate_crystal(warm, plan_crystals(warm)[0], make_structures(warm, plan_crystals(warm)))

    shutil.rmtree(args.folder, ignore_errors=True)
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    result = run(Params(preset="myd88", nproc=args.nproc), args.folder)
    wall = time.perf_counter() - t0
    cpu = cpu_seconds() - cpu0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    size_mb = sum(f.stat().st_size for f in args.folder.rglob("*") if f.is_file()) / 1e6
    shutil.rmtree(args.folder)

    record = {
        "benchmark": "simulate preset=myd88 (18 crystals x 72 images, 516x516)",
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "load_average_1min_at_end": os.getloadavg()[0]},
        "nproc": args.nproc,
        "end_to_end": {
            "wall_s": wall,
            "cpu_s": cpu,
            "cpu_s_per_nproc": cpu / args.nproc,
            "images": spec.n_crystals * spec.n_images,
            "images_per_wall_s": spec.n_crystals * spec.n_images / wall,
            "observations": len(result.reflections),
            "output_mb": size_mb,
            "peak_rss_mb": peak_mb,
        },
        "one_crystal_single_thread": phases(spec),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(record, indent=1))
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
