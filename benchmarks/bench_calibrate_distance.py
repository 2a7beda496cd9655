"""The walk-through's distance calibration on the simulated reference job (``ewald simulate
preset=myd88``: 18 crystals × 72 images, true distance 1762 mm, one non-isomorphous crystal).

Per crystal: spots found on the images (find_spots, d_max=20) with the header-style distance
2193 mm; indexed with the true model (tests/pipeline/truth_indexing.py) and expressed as the P1,
Niggli-reduced result at 2193 mm that indexing would give, refined in P1 as dials.index ends
(detector.fix=distance goniometer.fix=None, so its metric is only nearly C2); then

- route A, the walk-through by hand: refine_bravais_settings (detector.fix=distance,
  best_monoclinic_beta=False) → the mC solution and its cb_op → reindex → refine with the
  restraint (99.06, 31.01, 54.30, 90, 107.7, 90; σ 0.01) scan_varying=False
  detector.fix=orientation → distance;
- route B: calibrate_distance over all crystals → median.

Run: .venv/bin/python benchmarks/bench_calibrate_distance.py [simulation folder]
→ benchmarks/results/calibrate_distance.json
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import gemmi
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "pipeline"))

from algorithms.geometry.models import Crystal  # noqa: E402
from algorithms.symmetry import ChangeOfBasis, niggli_reduce_crystal  # noqa: E402
from pipeline.formats.expt import read_experiments  # noqa: E402
from pipeline.params import parse_parameters  # noqa: E402
from pipeline.steps import find_spots, refine, refine_bravais_settings, reindex, simulate  # noqa: E402
from pipeline.steps.calibrate_distance import calibrate_distance  # noqa: E402
from truth_indexing import index_with_truth  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "calibrate_distance.json"
KNOWN = (99.06, 31.01, 54.30, 90.0, 107.7, 90.0)
TRUE_DISTANCE = 1762.0
HEADER_DISTANCE = 2193.0
RESTRAINT = ["refinement.parameterisation.crystal.unit_cell.restraints.tie_to_target.values=" + ",".join(map(str, KNOWN)),
             "refinement.parameterisation.crystal.unit_cell.restraints.tie_to_target.sigmas=0.01"]


def p1_indexed(folder: Path):
    """(experiment at 2193 mm with the P1 reduced crystal, indexed strong spots, truth.json)."""
    truth = read_experiments(folder / "truth.expt")[0]
    truth.crystal.A_at_scan_points = None
    imported = truth.copy()
    imported.crystal = None
    imported.detector.set_distance_mm(HEADER_DISTANCE)
    fs_params, _ = parse_parameters(find_spots.Params, ["d_max=20"])
    strong = find_spots.run([imported], None, fs_params).reflections
    indexed = index_with_truth(truth, strong)
    indexed = indexed.select(np.asarray(indexed["id"]) == 0)
    sg = truth.crystal.space_group
    centring = [np.array(t) / gemmi.Op.DEN for t in sg.operations().cen_ops if any(t)]
    primitive = np.array([[0.5, 0.5, 0.0], [-0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]) if centring else np.eye(3)
    p1 = Crystal(A=truth.crystal.change_basis(primitive).A, space_group=gemmi.SpaceGroup("P 1"))
    reduced, to_reduced = niggli_reduce_crystal(p1)
    cb_op = ChangeOfBasis(primitive).then(to_reduced)
    hkl, ok = cb_op.apply_to_hkl(indexed["miller_index"])
    indexed = indexed.select(ok)
    indexed["miller_index"] = hkl[ok].astype(np.int32)
    experiment = imported.copy()
    experiment.crystal = Crystal(A=reduced.A * TRUE_DISTANCE / HEADER_DISTANCE, space_group=gemmi.SpaceGroup("P 1"))
    # the final P1 refinement of dials.index (walk-through options): a noisy, only nearly C2 metric
    params, _ = parse_parameters(refine.Params, ["scan_varying=False", "detector.fix=distance", "goniometer.fix=None",
                                                 "outlier.algorithm=tukey", "reflections_per_degree=100"])
    result = refine.run([experiment], indexed, params)
    return result.experiments[0], result.reflections, json.loads((folder / "truth.json").read_text())


def route_a(experiment, indexed) -> dict:
    """refine_bravais_settings → reindex with the mC cb_op → restrained refine."""
    params, _ = parse_parameters(refine_bravais_settings.Params, ["detector.fix=distance", "best_monoclinic_beta=False"])
    solutions = refine_bravais_settings.run([experiment], indexed, params).summary["solutions"]
    mc = [s for s in solutions if s.setting.setting_symbol == "mC"]
    if not mc:
        return {"status": "no mC solution"}
    mc = mc[0]
    ri_params, _ = parse_parameters(reindex.Params, [f"change_of_basis_op={mc.setting.cb_op.as_string()}"])
    reindexed = reindex.run([], indexed, ri_params).reflections
    rf_params, _ = parse_parameters(refine.Params, RESTRAINT + ["scan_varying=False", "detector.fix=orientation"])
    refined = refine.run([mc.experiment], reindexed, rf_params)
    return {"status": "ok", "mC_metric_fit_deg": mc.setting.max_delta_deg, "mC_recommended": mc.recommended,
            "mC_cell_at_2193": list(mc.experiment.crystal.unit_cell.parameters), "cb_op": mc.setting.cb_op.as_string(),
            "distance_mm": refined.experiments[0].detector.distance_mm,
            "cell": list(refined.experiments[0].crystal.unit_cell.parameters), "rmsds": refined.summary["rmsds"][0]}


def main() -> None:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/ewald_bench_myd88")
    if not (folder / "simulation.json").exists():
        params, _ = parse_parameters(simulate.Params, ["preset=myd88", "overwrite=True"])
        simulate.run(params, folder)
    crystals = sorted((p for p in folder.iterdir() if p.is_dir() and (p / "truth.expt").exists()), key=lambda p: int(p.name))
    start = time.perf_counter()
    records, pairs = [], []
    for crystal in crystals:
        experiment, indexed, truth = p1_indexed(crystal)
        pairs.append((experiment, indexed))
        t0 = time.perf_counter()
        record = {"crystal": int(crystal.name), "bad_crystal": truth["bad_crystal"], "n_indexed": len(indexed),
                  **route_a(experiment, indexed)}
        record["route_a_s"] = time.perf_counter() - t0
        records.append(record)
        print(crystal.name, record.get("distance_mm"), record.get("mC_metric_fit_deg"), "bad" if truth["bad_crystal"] else "")
    t0 = time.perf_counter()
    summary = calibrate_distance(pairs, KNOWN, (0.01,), "C2", names=[c.name for c in crystals])
    calibrate_s = time.perf_counter() - t0
    good = [r for r in records if not r["bad_crystal"] and r["status"] == "ok"]
    within = [abs(r["distance_mm"] / TRUE_DISTANCE - 1) <= 0.01 for r in good]
    result = {
        "benchmark": "distance calibration on simulate preset=myd88 (true 1762 mm, indexed at 2193 mm)",
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "load_average_1min": os.getloadavg()[0]},
        "route_a_walkthrough": {
            "n_good_crystals": len([r for r in records if not r["bad_crystal"]]),
            "n_good_within_1_percent": int(sum(within)),
            "mC_recommended_all": all(r.get("mC_recommended", False) for r in records),
            "max_mC_metric_fit_deg": max(r.get("mC_metric_fit_deg", np.nan) for r in records),
            "distances_mm": [r.get("distance_mm") for r in records],
            "median_good_mm": float(np.median([r["distance_mm"] for r in good])),
        },
        "route_b_calibrate_distance": {
            "median_mm": summary["distance_mm"], "relative_error": summary["distance_mm"] / TRUE_DISTANCE - 1,
            "min_mm": summary["min_distance_mm"], "max_mm": summary["max_distance_mm"], "n_used": summary["n_used"],
            "n_excluded": summary["n_excluded"], "distances_mm": summary["distances"], "wall_s": calibrate_s,
        },
        "crystals": records,
        "total_wall_s": time.perf_counter() - start,
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1, default=float) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "crystals"}, indent=1, default=float))


if __name__ == "__main__":
    main()
