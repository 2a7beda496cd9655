"""Benchmark of joint scaling and ΔCC½ filtering on the reference job's shape.

Case: 18 simulated crystals × 72 images (C2 MyD88 cell, 65.9° wedges, ~2000 observations each,
~36 000 in all, 3.0 Å), error model a = 1.5, b = 0.04, six crystals with scrambled images and one
non-isomorphous crystal (tests/algorithms/scaling_simulation.py). Timed, wall and CPU:
- the whole ``scale_and_filter`` as the tutorial runs it (image_group mode, group_size 1, d_min 3.0,
  filtering cycles plus the final full-matrix round), and without filtering;
- one L-BFGS minimisation of the joint target (ewald's preconditioned numpy L-BFGS);
- ΔCC½ of all 1296 image groups (vectorised group removal);
- merging statistics (20 bins, both anomalous and non-anomalous);
- indexing-ambiguity resolution of 60 P4 crystals (a third indexed by k,h,−l; all pairwise
  correlations under both settings by sparse products, then the iterative assignment).
Quality is also recorded with DIALS' ΔCC½ cutoff (mean − 4·SD) next to ewald's robust one.
References in the same run: scipy's L-BFGS-B on the same target, unpreconditioned, and the plain
numpy ΔCC½ that recomputes CC½ once per removed group, and pairwise correlations by
np.intersect1d per pair and setting. Quality figures are recorded next to the
timings (fraction of corrupted images removed, bad crystal found, CC of merged vs true intensities).

Run: .venv/bin/python benchmarks/bench_scaling.py  → benchmarks/results/scaling.json
"""
from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

import numpy as np
from scipy import optimize

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "algorithms"))

from algorithms.merging import merging_statistics  # noqa: E402
from algorithms.merging.cc_half import sigma_tau_cc_half  # noqa: E402
from algorithms.merging.symmetry import map_to_asu  # noqa: E402
from algorithms.scaling import ModelOptions, PhysicalModel, ScalingOptions, scale_and_filter  # noqa: E402
from algorithms.scaling.delta_cc_half import delta_cc_half, image_groups, resolution_bins_inverse_d2  # noqa: E402
from algorithms.scaling.target import ScalingTarget, minimise_lbfgs  # noqa: E402
from algorithms.scaling.ambiguity import alternative_indexings, resolve_indexing_ambiguity  # noqa: E402
from scaling_simulation import merged_against_truth, simulate_ambiguous_crystals, simulate_scaling  # noqa: E402
from simulated_data import timed_repeats  # noqa: E402
import gemmi  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "scaling.json"
CORRUPTED = {k: ([1, 2, 36, 37, 71, 72] if k % 2 else [30, 31, 32]) for k in (1, 4, 7, 10, 13, 16)}



def _quality(sim, result) -> dict:
    removed = {(k, i) for k, a, b in result.filtering.removed_ranges for i in range(a, b + 1)} if result.filtering else set()
    merged, truth = merged_against_truth(sim, result)
    n_good = sim.data.n_datasets * 72 - len(sim.corrupted_images) - 72
    return {"corrupted_images_removed_fraction": len(removed & sim.corrupted_images) / max(len(sim.corrupted_images), 1),
            "good_images_removed_fraction": len(removed - sim.corrupted_images) / n_good,
            "removed_datasets": result.filtering.removed_datasets if result.filtering else [],
            "bad_dataset": sim.bad_dataset, "cc_merged_vs_true": float(np.corrcoef(merged, truth)[0, 1]),
            "error_model_a": result.error_model.a, "error_model_b": result.error_model.b,
            "cc_half": result.merging_statistics.overall.cc_half if result.merging_statistics else None}


def _ambiguity_benchmark(n_crystals: int = 60) -> dict:
    cell, sg = gemmi.UnitCell(79, 79, 38, 90, 90, 90), gemmi.SpaceGroup("P 4")
    operators = alternative_indexings(cell, sg)
    flipped = set(range(0, n_crystals, 3))
    simulated, _ = simulate_ambiguous_crystals(cell, "P 4", [operators[1] if k in flipped else None for k in range(n_crystals)])
    args = (simulated["dataset"], simulated["hkl"], simulated["intensity"], simulated["d"], n_crystals, sg, operators)
    result, timing = timed_repeats(lambda: resolve_indexing_ambiguity(*args), 3, warm_up=False)

    def reference():  # the same normalised means, one np.intersect1d per pair and setting
        from algorithms.scaling.ambiguity import _normalised_intensities
        normalised, valid = _normalised_intensities(simulated["dataset"], simulated["intensity"], simulated["d"], n_crystals)
        per_setting = []
        for p in operators:
            asu = map_to_asu(simulated["hkl"][valid] @ p.T, sg).asu_index + 512
            keys = (asu[:, 0] * 1024 + asu[:, 1]) * 1024 + asu[:, 2]
            crystals = []
            for k in range(n_crystals):
                rows = simulated["dataset"][valid] == k
                unique, inverse = np.unique(keys[rows], return_inverse=True)
                crystals.append((unique, np.bincount(inverse, normalised[valid][rows]) / np.bincount(inverse)))
            per_setting.append(crystals)
        r = np.zeros((len(operators), n_crystals, n_crystals))
        for a in range(len(operators)):
            for i in range(n_crystals):
                for j in range(n_crystals):
                    common, ia, jb = np.intersect1d(per_setting[a][i][0], per_setting[0][j][0], return_indices=True)
                    if len(common) >= 3:
                        r[a, i, j] = np.corrcoef(per_setting[a][i][1][ia], per_setting[0][j][1][jb])[0, 1]
        return r

    r_reference, reference_timing = timed_repeats(reference, 1, warm_up=False)
    return {**timing, "n_crystals": n_crystals, "n_observations": len(simulated["dataset"]),
            "reindexed_correctly": {k for k, _ in result.reindexed()} == flipped,
            "reference_pairwise_loop": {**reference_timing,
                                        "max_abs_difference": float(np.max(np.abs(r_reference - result.correlation[:, 0])))}}


def main() -> None:
    sim = simulate_scaling(corrupted_images=CORRUPTED, bad_dataset=5, error_a=1.5, error_b=0.04, seed=0)
    data = sim.data
    report = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
              "case": {"n_datasets": data.n_datasets, "n_observations": len(data), "images_per_dataset": 72}}

    options = ScalingOptions(d_min=3.0, filtering_method="deltacchalf", mode="image_group", group_size=1)
    result, timing = timed_repeats(lambda: scale_and_filter(data, options), 2, warm_up=False)
    report["scale_and_filter_image_group"] = {**timing, "n_cycles": len(result.filtering.cycles),
                                              "termination": result.filtering.termination_reason, **_quality(sim, result)}
    dials_cutoff = scale_and_filter(data, ScalingOptions(d_min=3.0, filtering_method="deltacchalf", mode="image_group",
                                                         group_size=1, cutoff_rule="mean_sd"))
    report["scale_and_filter_image_group_dials_cutoff"] = _quality(sim, dials_cutoff)
    result_plain, timing = timed_repeats(lambda: scale_and_filter(data, ScalingOptions(d_min=3.0)), 2, warm_up=False)
    report["scale_without_filtering"] = timing

    mapping = map_to_asu(data.miller_index, data.space_group)
    model = PhysicalModel(data, ModelOptions())
    target = ScalingTarget(model, mapping.group, len(mapping.unique_asu_index), data.intensities.intensity_prf,
                           1.0 / (2.25 * data.intensities.variance_prf))
    p0 = model.initial_parameters()
    p_ewald, timing = timed_repeats(lambda: minimise_lbfgs(target, p0), 3, warm_up=False)
    report["lbfgs_ewald"] = {**timing, "target": target.value_and_gradient(p_ewald)[0], "n_parameters": model.n_parameters}

    def scipy_reference():
        return optimize.minimize(target.value_and_gradient, p0, jac=True, method="L-BFGS-B",
                                 options={"maxiter": 1000, "ftol": 1e-11, "gtol": 1e-10}).x

    p_scipy, timing = timed_repeats(scipy_reference, 1, warm_up=False)
    report["lbfgs_scipy_reference"] = {**timing, "target": target.value_and_gradient(p_scipy)[0]}

    d_unique = np.asarray(data.unit_cell.calculate_d_array(mapping.unique_asu_index.astype(np.int32)))
    bins = resolution_bins_inverse_d2(d_unique)
    intensity = data.intensities.intensity_prf / sim.true_g
    groups = image_groups(data.dataset, data.image_number(), np.ones(len(data), bool), data.n_datasets, 1)
    n_refl, n_groups = len(mapping.unique_asu_index), len(groups.dataset)
    (_, delta), timing = timed_repeats(lambda: delta_cc_half(mapping.group, n_refl, intensity, groups.group, n_groups, bins), 5,
                                        warm_up=False)
    report["delta_cc_half_vectorised"] = {**timing, "n_groups": n_groups}

    def reference_delta():
        _, all_cc = sigma_tau_cc_half(mapping.group, intensity, bins, 10)
        out = np.empty(n_groups)
        for i in range(n_groups):
            keep = groups.group != i
            out[i] = all_cc - sigma_tau_cc_half(mapping.group[keep], intensity[keep], bins, 10)[1]
        return out

    reference, timing = timed_repeats(reference_delta, 1, warm_up=False)
    report["delta_cc_half_loop_reference"] = {**timing, "max_abs_difference": float(np.max(np.abs(reference - delta)))}

    keep = result_plain.scaled
    g = result_plain.inverse_scale_factor[keep]
    _, timing = timed_repeats(lambda: merging_statistics(data.miller_index[keep], result_plain.intensity[keep] / g,
                                                         result_plain.variance[keep] / g**2, data.unit_cell,
                                                         data.space_group), 3, warm_up=False)
    report["merging_statistics"] = timing

    report["ambiguity_resolution"] = _ambiguity_benchmark()

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2, default=float))
    print(json.dumps(report, indent=2, default=float))


if __name__ == "__main__":
    main()
