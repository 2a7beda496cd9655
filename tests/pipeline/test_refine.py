"""``ewald refine`` against exact truth: static and scan-varying refinement, the restraint PHIL
file of the walk-through (distance calibration), flags and columns of refined.refl, the CLI."""
import os

import numpy as np
import pytest

from algorithms.reflection_table import Flags
from algorithms.refinement.simulation import ed_experiment, perturbed, simulate_reflections, xray_experiment
from indexed_p1_data import indexed_p1
from pipeline.cli import main
from pipeline.formats.expt import read_experiments, write_experiments
from pipeline.formats.refl import read_reflections, write_reflections
from pipeline.params import parse_parameters
from pipeline.steps import refine
from pipeline.steps.refine_bravais_settings import reindexed
from algorithms.symmetry import setting_for_space_group, symmetrize_crystal
from walkthrough import WALKTHROUGH_RESTRAINT_PHIL


def _params(*args):
    return parse_parameters(refine.Params, list(args))[0]


def test_parameter_names_of_the_walk_through(tmp_path):
    phil = tmp_path / "restraint.phil"
    phil.write_text(WALKTHROUGH_RESTRAINT_PHIL)
    params = _params("detector.fix=distance", "goniometer.fix=None", "scan_varying=False", str(phil),
                     "refinement.reflections.outlier.algorithm=tukey", "refinement.refinery.engine=GaussNewton")
    p = params.refinement.parameterisation
    assert p.detector.fix == ["distance"] and p.goniometer.fix == [] and p.scan_varying is False
    assert refine.restraint_targets(params.refinement) == [((99.06, 31.01, 54.30, 90, 107.7, 90), (0.01,) * 6)]
    options = refine.options_for_refine(params)
    assert options.outlier_algorithm == "tukey" and options.engine == "GaussNewton" and options.goniometer_fix == ()
    defaults = refine.options_for_refine(_params())
    assert defaults.scan_varying and defaults.outlier_algorithm == "mcd" and defaults.reflections_per_degree is None
    assert defaults.beam_fix == ("in_spindle_plane", "wavelength") and defaults.goniometer_fix == ("all",)


@pytest.fixture(scope="module")
def drifting():
    """MyD88 geometry, a crystal whose cell grows 2 % and which turns 2° about x across the scan."""
    truth = ed_experiment(seed=3)
    table, true_px = simulate_reflections(truth, n_reflections=1500, seed=4, drift_orientation_deg=2.0,
                                          drift_cell_fraction=0.02)
    table["shoebox_marker"] = np.arange(len(table))  # stands for the shoebox column: must survive
    start = perturbed(truth, orientation_deg=0.2, cell_fraction=0.003, beam_centre_px=0.5)
    static = refine.run([start], table, _params("detector.fix=distance", "scan_varying=False"))
    varying = refine.run([start], table, _params("detector.fix=distance"))
    return truth, table, static, varying


def test_scan_varying_refinement_lowers_rmsds_and_follows_the_drift(drifting):
    truth, _, static, varying = drifting
    s, v = static.summary["rmsds"][0], varying.summary["rmsds"][0]
    # figures: static 0.46, 0.80 px, 0.33 images; scan-varying 0.30, 0.30 px, 0.29 images (noise 0.3, 0.3)
    assert v["x_px"] < 0.8 * s["x_px"] and v["y_px"] < 0.8 * s["y_px"] and v["z_images"] < s["z_images"]
    assert v["x_px"] < 0.35 and v["y_px"] < 0.35  # noise is 0.3 px
    model = varying.summary["results"][0].scan_varying_model
    crystal = varying.experiments[0].crystal
    assert crystal.num_scan_points == 73
    a = model["unit_cell"][:, 0]
    assert np.all(np.diff(a) > 0)
    # the smoother (2 values over 66°) flattens the ends of a linear ramp: 2 % × 99.06 Å = 1.98 Å
    # (fitted 98.28 → 99.88 Å; turn about x 1.51° of the true 2°)
    assert 0.7 * 1.98 < a[-1] - a[0] < 1.2 * 1.98
    assert a[36] == pytest.approx(99.06, abs=0.1)
    turn = model["orientation_deg"][-1, 0] - model["orientation_deg"][0, 0]
    assert 0.65 * 2.0 < turn < 1.2 * 2.0


def test_refined_reflections_carry_predictions_flags_and_other_columns(drifting):
    _, table, _, varying = drifting
    out = varying.reflections
    assert len(out) == len(table)
    np.testing.assert_array_equal(out["shoebox_marker"], table["shoebox_marker"])
    used = out.get_flags(Flags.used_in_refinement)
    outliers = out.get_flags(Flags.centroid_outlier)
    assert used.sum() > 0.9 * len(out) and not np.any(used & outliers)
    ok = np.all(np.isfinite(out["xyzcal.px"]), axis=1)
    assert ok.mean() > 0.99
    residual = out["xyzcal.px"][used] - out["xyzobs.px.value"][used]
    assert np.sqrt(np.mean(residual[:, :2] ** 2)) < 0.4


def test_restrained_static_refinement_finds_the_distance_from_2193_mm(tmp_path):
    """The walk-through's calibration: indexed at 2193 mm, C2 setting, restraint, detector.fix=orientation."""
    phil = tmp_path / "restraint.phil"
    phil.write_text(WALKTHROUGH_RESTRAINT_PHIL)
    data = indexed_p1(seed=5, index_distance_mm=2193.0)
    setting = setting_for_space_group(data.experiment.crystal.unit_cell, "C 1 2 1")
    experiment = data.experiment.copy()
    experiment.crystal = symmetrize_crystal(setting.cb_op.apply_to_crystal(experiment.crystal), setting.space_group)
    table = reindexed(data.reflections, setting)
    params = _params(str(phil), "scan_varying=False", "detector.fix=orientation")
    result = refine.run([experiment], table, params)
    refined = result.experiments[0]
    assert refined.detector.distance_mm == pytest.approx(1762.0, rel=0.01)
    assert np.allclose(refined.crystal.unit_cell.parameters, (99.06, 31.01, 54.30, 90, 107.7, 90), atol=0.05)
    assert refined.crystal.num_scan_points == 0


def test_tetragonal_xray_refinement():
    truth = xray_experiment(seed=2)
    table, _ = simulate_reflections(truth, n_reflections=1200, seed=3, sigma_px=0.2, sigma_images=0.2)
    start = perturbed(truth, orientation_deg=0.2, cell_fraction=0.005, beam_centre_px=1.0)
    result = refine.run([start], table, _params("scan_varying=False"))
    cell = result.experiments[0].crystal.unit_cell
    assert np.allclose(cell.parameters, truth.crystal.unit_cell.parameters, atol=0.05)
    assert cell.a == pytest.approx(cell.b, rel=1e-12)  # P4(3)2(1)2 metric kept
    assert result.summary["rmsds"][0]["x_px"] < 0.25


def test_cli_writes_refined_files_and_dials_log(tmp_path, monkeypatch):
    truth = ed_experiment(seed=6)
    table, _ = simulate_reflections(truth, n_reflections=500, seed=7)
    start = perturbed(truth, orientation_deg=0.2, cell_fraction=0.003, beam_centre_px=0.5)
    write_experiments([start], tmp_path / "indexed.expt")
    write_reflections(table, tmp_path / "indexed.refl")
    monkeypatch.chdir(tmp_path)
    assert main(["refine", "indexed.expt", "indexed.refl", "detector.fix=distance"]) == 0
    log = (tmp_path / "refine.log").read_text()
    for text in ("Summary statistics for", "Refinement steps:", "Scan-varying refinement", "RMSDs by experiment:",
                 "Final refined crystal model:", "A sampled at 73 scan points", "RMSD no longer decreasing"):
        assert text in log, text
    refined = read_experiments(tmp_path / "refined.expt")[0]
    assert refined.crystal.num_scan_points == 73
    assert np.allclose(refined.crystal.unit_cell.parameters, truth.crystal.unit_cell.parameters, atol=0.1)
    out = read_reflections(tmp_path / "refined.refl")
    assert "xyzcal.px" in out and out.get_flags(Flags.used_in_refinement).sum() > 400
    # bad input: one line, exit 2, no output
    os.remove(tmp_path / "refined.expt")
    assert main(["refine", "indexed.expt", "nothere.refl"]) == 2
    assert not (tmp_path / "refined.expt").exists()


def test_scan_varying_refinement_on_simulated_images_with_drift(tmp_path):
    """``ewald simulate`` images whose crystal grows 2 % and turns 2° across 48 images; spots found
    on the images and indexed with the truth. Figures (seed 3): static RMSDs 0.58, 0.36 px,
    0.30 images; scan-varying 0.23, 0.22 px, 0.23 images; a 98.09 → 100.48 Å (true 98.07 →
    100.05); turn across the scan 1.50° (true 2.0°; the two-value smoother flattens the ends)."""
    from algorithms.geometry.models import b_matrix, unit_cell_from_a_matrix
    from algorithms.refinement.simulation import orientation_error_deg
    from pipeline.steps import find_spots, simulate
    from truth_indexing import index_with_truth

    sim, _ = parse_parameters(simulate.Params, ["preset=tiny", "n_crystals=1", "n_images=48", "drift_cell_percent=2",
                                                "drift_rotation_deg=2", "seed=3", "n_corrupted_images=0",
                                                "n_bad_crystals=0"])
    simulate.run(sim, tmp_path / "sim")
    truth = read_experiments(tmp_path / "sim" / "1" / "truth.expt")[0]
    imported = truth.copy()
    imported.crystal = None
    strong = find_spots.run([imported], None, parse_parameters(find_spots.Params, ["d_max=20"])[0]).reflections
    indexed = index_with_truth(truth, strong)
    start = truth.copy()
    start.crystal.A_at_scan_points = None
    static = refine.run([start], indexed, _params("scan_varying=False", "detector.fix=distance")).summary["rmsds"][0]
    varying = refine.run([start], indexed, _params("detector.fix=distance"))
    v = varying.summary["rmsds"][0]
    assert v["x_px"] < 0.7 * static["x_px"] and v["y_px"] < 0.8 * static["y_px"] and v["z_images"] < static["z_images"]

    def cell_a_and_U(A):
        cell = unit_cell_from_a_matrix(A)
        return cell.a, A @ np.linalg.inv(b_matrix(cell))

    fitted = [cell_a_and_U(A) for A in varying.experiments[0].crystal.A_at_scan_points]
    true = [cell_a_and_U(A) for A in truth.crystal.A_at_scan_points]
    a_fit, a_true = np.array([f[0] for f in fitted]), np.array([t[0] for t in true])
    assert np.all(np.diff(a_fit) > 0)
    assert 0.8 < (a_fit[-1] - a_fit[0]) / (a_true[-1] - a_true[0]) < 1.4
    turn_fit = orientation_error_deg(fitted[0][1], fitted[-1][1])
    assert 0.6 * 2.0 < turn_fit < 1.2 * 2.0
