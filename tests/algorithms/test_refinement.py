"""Geometry refinement against simulated observations with exact truth."""
import gemmi
import numpy as np
import pytest

from algorithms.errors import DataError
from algorithms.geometry.models import Crystal, rotation_matrix
from algorithms.geometry.prediction import predict_rotation
from algorithms.refinement import RefinementOptions, observations_mm_from_px, predict_for_indexed, refine
from algorithms.refinement.simulation import (
    ED_CELL,
    ed_experiment,
    orientation_error_deg,
    perturbed,
    simulate_reflections,
    xray_experiment,
)

SIGMA = 0.3  # simulated centroid noise, px and images


def _cell_error(experiment, truth) -> np.ndarray:
    refined = np.array(experiment.crystal.unit_cell.parameters)
    true = np.array(truth.crystal.unit_cell.parameters)
    return np.abs(refined - true) / true


def _beam_centre_error_px(experiment, truth) -> float:
    a = np.array(experiment.detector.beam_centre_px(experiment.beam.s0))
    b = np.array(truth.detector.beam_centre_px(truth.beam.s0))
    return float(np.linalg.norm(a - b))


@pytest.fixture(scope="module")
def ed_truth():
    truth = ed_experiment(0)
    table, _ = simulate_reflections(truth, 600, sigma_px=SIGMA, sigma_images=SIGMA)
    return truth, table


def test_observations_mm_from_px():
    truth = ed_experiment(0)
    value, variance = observations_mm_from_px(np.array([[100.0, 200.0, 10.5]]), np.array([[0.25, 0.5, 0.1]]),
                                              truth.detector, truth.scan)
    assert np.allclose(value[0, :2], [5.5, 11.0])
    assert value[0, 2] == pytest.approx(np.radians(-56.73 + 10.5 * 0.9149))
    assert np.allclose(variance[0], [0.25 * 0.055**2, 0.5 * 0.055**2, 0.1 * np.radians(0.9149) ** 2])


def test_predict_for_indexed_matches_rotation_prediction(ed_truth):
    truth, _ = ed_truth
    from algorithms.geometry.prediction import miller_indices_to_d_min

    pred = predict_rotation(miller_indices_to_d_min(truth.crystal.A, 2.5), truth.crystal.A, truth.beam,
                            truth.detector, truth.goniometer, truth.scan)
    # start from a φ 3° away: the entering flag, not the nearest angle, decides the crossing
    got = predict_for_indexed(truth, pred.miller_index, pred.entering, pred.phi_rad + np.radians(3.0))
    assert got.valid.all()
    assert np.allclose(got.xyzcal_mm, pred.xyzcal_mm, atol=1e-9)
    assert np.allclose(got.xyzcal_px, pred.xyzcal_px, atol=1e-7)
    assert np.allclose(got.s1, pred.s1, atol=1e-9)
    # a scan-varying crystal with a constant A predicts the same
    sv = truth.copy()
    sv.crystal.A_at_scan_points = np.repeat(truth.crystal.A[None], truth.scan.num_images + 1, axis=0)
    got_sv = predict_for_indexed(sv, pred.miller_index, pred.entering, pred.phi_rad)
    assert np.allclose(got_sv.xyzcal_mm, pred.xyzcal_mm, atol=1e-9)


def test_static_refinement_recovers_electron_truth(ed_truth):
    truth, table = ed_truth
    start = perturbed(truth, orientation_deg=0.5, cell_fraction=0.01, beam_centre_px=1.0)
    assert orientation_error_deg(start.crystal.U, truth.crystal.U) > 0.45
    result = refine(start, table, RefinementOptions(detector_fix=("distance",)))
    refined = result.experiment
    assert orientation_error_deg(refined.crystal.U, truth.crystal.U) < 0.05
    assert np.all(_cell_error(refined, truth) < 0.002)
    assert _beam_centre_error_px(refined, truth) < 0.2
    # RMSDs at the noise level
    assert 0.8 * SIGMA < result.rmsds["x_px"] < 1.15 * SIGMA
    assert 0.8 * SIGMA < result.rmsds["y_px"] < 1.15 * SIGMA
    assert 0.8 * SIGMA < result.rmsds["z_images"] < 1.15 * SIGMA
    assert result.termination == "RMSD no longer decreasing"
    assert result.history[-1]["rmsd_x_mm"] < result.history[0]["rmsd_x_mm"]
    # monoclinic: four cell parameters; α, γ fixed by symmetry have zero esd
    assert sum("g_param" in n for n in result.parameter_names) == 4
    assert "Detector1Dist" not in result.parameter_names and "Detector1Tau2" not in result.parameter_names
    assert result.cell_esds[3] == 0 and result.cell_esds[5] == 0
    assert 0 < result.cell_esds[0] < 0.1
    # the esds are honest: the refined a is within 4 esd of the truth
    assert abs(refined.crystal.unit_cell.a - ED_CELL[0]) < 4 * result.cell_esds[0]
    # every usable reflection is used or flagged; predictions exist for all rows
    assert result.used_in_refinement.sum() == result.rmsds["nref"]
    assert not np.any(result.used_in_refinement & result.centroid_outlier)
    assert np.isfinite(result.xyzcal_px).all()


def test_detector_fix_distance_keeps_distance(ed_truth):
    truth, table = ed_truth
    start = perturbed(truth)
    start.detector.set_distance_mm(1750.0)
    result = refine(start, table, RefinementOptions(detector_fix=("distance",)))
    assert result.experiment.detector.distance_mm == pytest.approx(1750.0, abs=1e-9)
    # the normal (Tau2, Tau3) is unchanged as well
    assert np.allclose(result.experiment.detector.normal, start.detector.normal, atol=1e-12)


def test_goniometer_fix_none_recovers_axis_error(ed_truth):
    truth, _ = ed_truth
    table, _ = simulate_reflections(truth, 800, sigma_px=0.1, sigma_images=0.1, seed=3)
    start = truth.copy()
    start.goniometer.rotation_axis = rotation_matrix((0, 0, 1), np.radians(1.0)) @ truth.goniometer.rotation_axis

    def axis_error_deg(e):
        return np.degrees(np.arccos(np.clip(e.goniometer.rotation_axis_lab @ truth.goniometer.rotation_axis_lab, -1, 1)))

    # Tau1 (detector rotation about its normal) would absorb an in-plane axis error, since
    # turning everything about the beam is unobservable: keep the detector orientation fixed
    detector_fix = ("distance", "orientation")
    fixed = refine(start, table, RefinementOptions(detector_fix=detector_fix))
    free = refine(start, table, RefinementOptions(detector_fix=detector_fix, goniometer_fix=()))
    assert "Goniometer1Gamma1" in free.parameter_names and "Goniometer1Gamma2" in free.parameter_names
    assert axis_error_deg(fixed.experiment) == pytest.approx(1.0, abs=1e-6)
    assert axis_error_deg(free.experiment) < 0.1
    assert free.rmsds["z_images"] < 0.8 * fixed.rmsds["z_images"]


def _distance_calibration(seed: int, sigma_px: float = 0.5, sigma_images: float = 0.3):
    truth = ed_experiment(seed)
    table, _ = simulate_reflections(truth, 500, sigma_px=sigma_px, sigma_images=sigma_images, seed=seed + 100)
    start = perturbed(truth, seed=seed, orientation_deg=0.2, cell_fraction=0.0, beam_centre_px=1.0)
    scale = 2193.0 / 1762.0
    start.detector.set_distance_mm(2193.0)
    cell = np.array(start.crystal.unit_cell.parameters)
    cell[:3] *= scale
    start.crystal = Crystal.from_cell_and_U(gemmi.UnitCell(*cell), start.crystal.U, start.crystal.space_group)
    options = RefinementOptions(detector_fix=("orientation",), unit_cell_restraints=[(ED_CELL, (0.01,) * 6)])
    return refine(start, table, options)


def test_unit_cell_restraint_calibrates_distance():
    result = _distance_calibration(0)
    assert result.experiment.detector.distance_mm == pytest.approx(1762.0, rel=0.01)
    assert np.allclose(result.experiment.crystal.unit_cell.parameters, ED_CELL, rtol=0.002)
    assert "Detector1Dist" in result.parameter_names and "Detector1Tau1" not in result.parameter_names


def test_distance_calibration_acceptance_over_crystals():
    """The walk-through's acceptance: ≥ 15 of 17 crystals calibrate the distance within 1 %."""
    distances = np.array([_distance_calibration(seed).experiment.detector.distance_mm for seed in range(1, 18)])
    assert np.sum(np.abs(distances / 1762.0 - 1.0) < 0.01) >= 15


def test_restraints_drop_terms_fixed_by_symmetry(ed_truth):
    from algorithms.refinement.model import ParameterisedModel
    from algorithms.refinement.refiner import CellRestraints, _fixed_masks

    truth, _ = ed_truth
    model = ParameterisedModel(truth, _fixed_masks(RefinementOptions()))
    restraints = CellRestraints(model, [(ED_CELL, (0.01, 0.01, 0.01, 0.01, 0.01, 0.01))], np.arange(4))
    assert [k for k, _, _ in restraints.terms] == [0, 1, 2, 4]  # a, b, c, β; α and γ dropped
    disabled = CellRestraints(model, [(ED_CELL, (0.01, 0.0, 0.01, 0.01, 0.01, 0.01))], np.arange(4))
    assert [k for k, _, _ in disabled.terms] == [0, 2, 4]  # σ = 0 disables b
    tetragonal = xray_experiment(0)
    model = ParameterisedModel(tetragonal, _fixed_masks(RefinementOptions()))
    cell = tuple(tetragonal.crystal.unit_cell.parameters)
    restraints = CellRestraints(model, [(cell, (0.02, 0.01, 0.05, 0.1, 0.1, 0.1))], np.arange(2))
    assert [k for k, _, _ in restraints.terms] == [1, 2]  # a = b: only the stronger (b) kept


def test_scan_varying_follows_drift():
    truth = ed_experiment(2)
    table, _ = simulate_reflections(truth, 3000, sigma_px=0.15, sigma_images=0.15,
                                    drift_orientation_deg=0.5, drift_cell_fraction=0.005, seed=4)
    options = RefinementOptions(detector_fix=("distance",), outlier_algorithm="tukey")
    static = refine(truth, table, options)
    varying = refine(truth, table, RefinementOptions(detector_fix=("distance",), outlier_algorithm="tukey", scan_varying=True))
    for key in ("x_px", "y_px", "z_images"):
        assert varying.rmsds[key] < static.rmsds[key]
    points = varying.experiment.crystal.A_at_scan_points
    assert points.shape == (73, 3, 3)
    summary = varying.scan_varying_model
    a = summary["unit_cell"][:, 0]
    # the cell grows by 0.5 % across the scan; two smoother values give a smooth curve
    assert np.all(np.diff(a) > 0)
    assert 0.6 * 0.005 < (a[-1] - a[0]) / a.mean() < 1.2 * 0.005
    assert np.all(np.abs(summary["unit_cell"][:, [3, 5]] - 90.0) < 1e-9)  # C2 symmetry holds at every point
    # the orientation turns by 0.5° about x across the scan (in ED part of it trades against
    # the cell and detector parameters, so the other two components are not exactly flat)
    rot = summary["orientation_deg"]
    assert np.all(np.diff(rot[:, 0]) > 0)
    assert 0.6 * 0.5 < rot[-1, 0] - rot[0, 0] < 1.2 * 0.5
    assert np.ptp(rot[:, 1]) < 0.5 * np.ptp(rot[:, 0]) and np.ptp(rot[:, 2]) < 0.5 * np.ptp(rot[:, 0])
    assert len(summary["phi_deg"]) == 73 and summary["phi_deg"][0] == pytest.approx(-56.73)
    # predictions use the scan-varying A and follow the drifting observations better than static
    obs = table["xyzobs.px.value"]
    used = varying.used_in_refinement
    err_sv = np.sqrt(np.mean((varying.xyzcal_px[used] - obs[used]) ** 2, axis=0))
    err_st = np.sqrt(np.mean((static.xyzcal_px[used] - obs[used]) ** 2, axis=0))
    assert np.all(err_sv < err_st)
    assert [h["macrocycle"] for h in varying.history][0] == 0 and varying.history[-1]["macrocycle"] == 1


def test_triclinic_cell():
    cell = (37.07, 61.62, 64.40, 72.89, 89.26, 73.47)
    truth = ed_experiment(3, cell=cell, space_group="P 1")
    table, _ = simulate_reflections(truth, 800, sigma_px=0.2, sigma_images=0.2, seed=8)
    result = refine(perturbed(truth, cell_fraction=0.005), table, RefinementOptions(detector_fix=("distance",)))
    assert sum("g_param" in n for n in result.parameter_names) == 6
    assert np.allclose(result.experiment.crystal.unit_cell.parameters, cell, rtol=0.003)
    assert orientation_error_deg(result.experiment.crystal.U, truth.crystal.U) < 0.05


def test_xray_tetragonal_everything_free():
    truth = xray_experiment(0)
    table, _ = simulate_reflections(truth, 1500, sigma_px=0.2, sigma_images=0.2, d_min=1.8, seed=9)
    start = perturbed(truth, orientation_deg=0.3, cell_fraction=0.01, beam_centre_px=2.0)
    start.detector.set_distance_mm(151.0)
    result = refine(start, table, RefinementOptions(beam_fix=(), outlier_algorithm="mcd"))
    refined = result.experiment
    assert sum("g_param" in n for n in result.parameter_names) == 2
    assert refined.detector.distance_mm == pytest.approx(150.0, abs=0.1)
    assert np.all(_cell_error(refined, truth) < 0.002)
    assert refined.beam.wavelength == pytest.approx(1.0, rel=2e-3)
    assert _beam_centre_error_px(refined, truth) < 0.1
    assert orientation_error_deg(refined.crystal.U, truth.crystal.U) < 0.02
    assert result.rmsds["x_px"] < 1.1 * 0.2


@pytest.mark.parametrize("algorithm", ["mcd", "tukey"])
def test_outlier_rejection_flags_injected_outliers(ed_truth, algorithm):
    truth, table = ed_truth
    table = table.copy()
    rng = np.random.default_rng(11)
    bad = rng.choice(len(table), 30, replace=False)
    shift_px = rng.choice([-1, 1], size=(30, 3)) * rng.uniform(4, 8, size=(30, 3))
    px = np.array([0.055, 0.055, np.radians(0.9149)])
    table["xyzobs.mm.value"][bad] += shift_px * px
    result = refine(truth, table, RefinementOptions(detector_fix=("distance",), outlier_algorithm=algorithm))
    flagged = result.centroid_outlier
    assert flagged[bad].mean() >= 0.9
    clean = np.ones(len(table), bool)
    clean[bad] = False
    assert flagged[clean].mean() < 0.08
    assert 0.8 * SIGMA < result.rmsds["x_px"] < 1.15 * SIGMA
    none = refine(truth, table, RefinementOptions(detector_fix=("distance",), outlier_algorithm="null"))
    assert not none.centroid_outlier.any() and none.rmsds["x_px"] > 2 * result.rmsds["x_px"]


def test_auto_reduction(ed_truth):
    truth, table = ed_truth
    few = table.select(np.arange(15))
    options = RefinementOptions(detector_fix=(), outlier_algorithm="null")
    with pytest.raises(DataError, match="min_nref_per_parameter"):
        refine(truth, few, options)
    options.auto_reduction_action = "fix"
    result = refine(truth, few, options)
    # 15 reflections < 5 × 6 detector parameters: the detector is fixed; 3 orientation parameters stay
    assert not any(n.startswith("Detector1") for n in result.parameter_names)
    assert "Crystal1phi1" in result.parameter_names


def test_gauss_newton_agrees_with_levenberg_marquardt(ed_truth):
    truth, table = ed_truth
    start = perturbed(truth, orientation_deg=0.2, cell_fraction=0.003, beam_centre_px=0.5)
    lm = refine(start, table, RefinementOptions(detector_fix=("distance",)))
    gn = refine(start, table, RefinementOptions(detector_fix=("distance",), engine="GaussNewton"))
    assert np.allclose(gn.experiment.crystal.A, lm.experiment.crystal.A, rtol=1e-4, atol=1e-9)
    assert gn.rmsds["x_px"] == pytest.approx(lm.rmsds["x_px"], rel=1e-3)


def test_reflections_per_degree_sampling_is_reproducible():
    truth = ed_experiment(0)
    table, _ = simulate_reflections(truth, 4000, seed=2)
    options = RefinementOptions(detector_fix=("distance",), reflections_per_degree=5, outlier_algorithm="null")
    first = refine(truth, table, options)
    second = refine(truth, table, options)
    # max(5 × 65.9°, minimum sample 1000) reflections
    assert first.used_in_refinement.sum() == 1000
    assert np.array_equal(first.used_in_refinement, second.used_in_refinement)


def test_close_to_spindle_reflections_excluded():
    truth = xray_experiment(1)
    table, _ = simulate_reflections(truth, 2000, seed=3, d_min=1.8)
    options = RefinementOptions(outlier_algorithm="null", close_to_spindle_cutoff=0.05)
    result = refine(truth, table, options)
    s0 = truth.beam.s0
    xy = table["xyzobs.mm.value"][:, :2]
    p = truth.detector.mm_to_lab(xy)
    s1 = p / np.linalg.norm(p, axis=1, keepdims=True) * np.linalg.norm(s0)
    near = np.abs(np.cross(s1, s0) @ truth.goniometer.rotation_axis_lab) <= 0.05
    lo, hi = np.radians(truth.scan.oscillation_range_deg)
    inside = (table["xyzobs.mm.value"][:, 2] >= lo) & (table["xyzobs.mm.value"][:, 2] <= hi)  # noise pushes some out
    assert near.sum() > 10
    assert np.array_equal(result.used_in_refinement, ~near & inside)


def test_rejects_unknown_fix_option(ed_truth):
    truth, table = ed_truth
    with pytest.raises(DataError, match="detector.fix"):
        refine(truth, table, RefinementOptions(detector_fix=("tilt",)))


def test_unindexed_rows_are_ignored(ed_truth):
    truth, table = ed_truth
    table = table.copy()
    table["id"][:5] = -1
    table["miller_index"][5:10] = 0
    table["xyzobs.mm.value"][10:15] += 100.0  # would be gross outliers if used
    table["id"][10:15] = -1
    result = refine(truth, table, RefinementOptions(detector_fix=("distance",)))
    assert not result.used_in_refinement[:15].any() and not result.centroid_outlier[:15].any()
    assert np.isnan(result.xyzcal_mm[:15]).all()
    assert np.isfinite(result.xyzcal_mm[15:]).all()
    assert 0.8 * SIGMA < result.rmsds["x_px"] < 1.15 * SIGMA
    with pytest.raises(DataError, match="no usable indexed reflections"):
        table["id"][:] = -1
        refine(truth, table, RefinementOptions())


def test_residual_summary_of_the_first_prediction(ed_truth):
    truth, table = ed_truth
    result = refine(truth, table, RefinementOptions(detector_fix=("distance",), outlier_algorithm="null"))
    (summary,) = result.residual_summaries
    assert summary["nref"] == result.rmsds["nref"]
    # at the true model the residuals are the noise: median ≈ 0, IQR ≈ 1.35 σ
    q1, median, q3 = summary["Xc - Xo (mm)"][1:4]
    assert abs(median) < 0.1 * SIGMA * 0.055
    assert q3 - q1 == pytest.approx(1.349 * SIGMA * 0.055, rel=0.15)
    assert summary["X weights"][2] == pytest.approx(1.0 / (SIGMA * 0.055) ** 2)


def test_fix_options_accept_none_and_single_names(ed_truth):
    truth, table = ed_truth
    as_none = refine(truth, table, RefinementOptions(detector_fix="distance", goniometer_fix=None))
    as_tuple = refine(truth, table, RefinementOptions(detector_fix=("distance",), goniometer_fix=()))
    assert as_none.parameter_names == as_tuple.parameter_names
    assert "Goniometer1Gamma1" in as_none.parameter_names and "Detector1Dist" not in as_none.parameter_names
