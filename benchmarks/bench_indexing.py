"""Benchmark of indexing one crystal (fft3d and fft1d) on the reference job's shape.

Cases: ~600 simulated strong spots of the MyD88 C2 cell (electron geometry, 65.9° wedge, d 2.5–20 Å)
and the 1322 real strong spots of the lysozyme cRED sweep 14 (if ../shared/data is present).
Timed after a warm-up (numba compilation), on the threads given by ``workers`` (1 by default,
run under ``taskset -c 0`` for a one-core figure):
- the 3D FFT basis-vector search alone (grid fill, rfftn, |F|², flood fill, vector filtering) at
  DIALS' n_points = 256 and at 128;
- the whole ``index_reflections`` (max_cell, FFT, candidates, scoring, 5 macro-cycles with the
  linear A fit) for fft3d (256 and 128) and fft1d.
Reference in the same run: numpy.fft.fftn (complex128) of the same 256³ grid, the plain-numpy
version of the FFT step.  Each case also records whether the 128-point grid gives the same lattice
and indices as 256.

Run: .venv/bin/python benchmarks/bench_indexing.py  → benchmarks/results/indexing.json
"""
from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "algorithms"))

from algorithms.geometry.prediction import reciprocal_lattice_points  # noqa: E402
from algorithms.indexing import estimate_max_cell, fft3d_candidate_vectors, index_reflections  # noqa: E402
from algorithms.indexing.fft3d import fft_d_min, fill_reciprocal_grid  # noqa: E402
from indexing_simulation import MYD88_C2, simulate_spots  # noqa: E402
from simulated_data import timed_repeats  # noqa: E402

REPEATS = 5
RESULTS = ROOT / "benchmarks" / "results" / "indexing.json"
LYSOZYME_14 = ROOT.parent / "shared" / "data" / "ed_lysozyme_cred" / "reference_dials" / "experiment_14"



def _cases():
    sim = simulate_spots(MYD88_C2, "C 1 2 1", seed=1)
    yield "myd88_c2_simulated_ed", sim.rlp, sim.phi_rad, sim.entering
    if LYSOZYME_14.is_dir():
        from pipeline.formats.expt import read_experiments
        from pipeline.formats.refl import read_reflections

        e = read_experiments(LYSOZYME_14 / "imported.expt")[0]
        xyz = np.asarray(read_reflections(LYSOZYME_14 / "strong.refl")["xyzobs.px.value"], float)
        rlp = reciprocal_lattice_points(xyz, e.beam, e.detector, e.goniometer, e.scan)
        phi = np.radians(e.scan.angle_from_array_index(xyz[:, 2]))
        s1 = e.detector.pixel_to_s1(xyz[:, :2], e.beam.s0)
        yield "lysozyme_cred_14_real", rlp, phi, (s1 @ np.cross(e.beam.s0, e.goniometer.rotation_axis_lab)) < 0


def main() -> None:
    results = {"machine": platform.machine(), "cpu_count": os.cpu_count(),
               "affinity": len(os.sched_getaffinity(0)), "cases": {}}
    for name, rlp, phi, entering in _cases():
        d = 1.0 / np.linalg.norm(rlp, axis=1)
        max_cell = estimate_max_cell(rlp, phi, entering)
        grid, _ = fill_reciprocal_grid(rlp, 256, fft_d_min(max_cell, 256, d))
        case = {"n_spots": int(len(rlp)), "max_cell": max_cell}
        _, case["numpy_fftn_256_reference"] = timed_repeats(lambda: np.fft.fftn(grid), 2)
        for n in (256, 128):
            _, case[f"fft3d_vectors_{n}"] = timed_repeats(lambda: fft3d_candidate_vectors(rlp, d, max_cell, n_points=n), REPEATS)
        full_256, case["index_fft3d_256"] = timed_repeats(lambda: index_reflections(rlp, d, phi, entering, max_cell=max_cell), REPEATS)
        full_128, case["index_fft3d_128"] = timed_repeats(
            lambda: index_reflections(rlp, d, phi, entering, max_cell=max_cell, n_points=128), REPEATS)
        _, case["index_fft1d"] = timed_repeats(lambda: index_reflections(rlp, d, phi, entering, max_cell=max_cell,
                                                                         method="fft1d"), 3)
        T = np.linalg.inv(full_128.crystal.A) @ full_256.crystal.A
        same = bool(np.abs(T - np.rint(T)).max() < 0.01)
        case["n_indexed_256"] = int(full_256.indexed_mask.sum())
        case["grid_128_same_result"] = same and bool(
            np.array_equal(full_128.indexed_mask, full_256.indexed_mask)
            and np.array_equal(full_128.miller_index, full_256.miller_index @ np.rint(T).astype(int).T))
        results["cases"][name] = case
        print(name, json.dumps(case, indent=1))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
