"""Refinement of real 3D ED spots (quartz, DIALS regression data) compared with DIALS' own result.

DIALS refined the indexed quartz data with the distance fixed (it stays 280 mm), static then
scan-varying ("A sampled at 101 scan points"). ewald starts from the same indexed.expt/.refl.
"""
import numpy as np
import pytest

from algorithms.indexing.assign import assign_indices
from algorithms.reflection_table import Flags
from algorithms.refinement import RefinementOptions, refine


@pytest.fixture(scope="module")
def quartz(shared_data):
    from pipeline.formats.expt import read_experiments
    from pipeline.formats.refl import read_reflections

    folder = shared_data / "quartz_processed"
    indexed = read_experiments(folder / "indexed.expt")[0]
    dials = read_experiments(folder / "refined.expt")[0]
    return indexed, read_reflections(folder / "indexed.refl"), dials, read_reflections(folder / "refined.refl")


def _dials_rmsds_px(dials_experiment, dials_table):
    used = dials_table.get_flags(Flags.used_in_refinement)
    delta = dials_table["xyzcal.mm"][used] - dials_table["xyzobs.mm.value"][used]
    scale = np.array([*dials_experiment.detector.pixel_size, np.radians(dials_experiment.scan.oscillation[1])])
    return np.sqrt(np.mean(delta**2, axis=0)) / scale, used


def test_static_refinement_matches_dials_on_quartz(quartz):
    indexed, table, dials, dials_table = quartz
    result = refine(indexed, table, RefinementOptions(detector_fix=("distance",)))
    refined = result.experiment
    assert refined.detector.distance_mm == pytest.approx(280.0, abs=1e-9)
    # DIALS' static cell (the refined.expt "Unit cell") agrees to better than 0.01 %
    assert np.allclose(refined.crystal.unit_cell.parameters, dials.crystal.unit_cell.parameters, rtol=1e-4)
    assert np.allclose(refined.detector.beam_centre_px(refined.beam.s0), dials.detector.beam_centre_px(dials.beam.s0), atol=0.1)
    dials_rmsds, dials_used = _dials_rmsds_px(dials, dials_table)
    ours = np.array([result.rmsds["x_px"], result.rmsds["y_px"], result.rmsds["z_images"]])
    assert np.all(ours < 1.1 * dials_rmsds)
    # similar numbers of reflections used (DIALS: 380 of 505, 64 MCD outliers)
    assert abs(int(result.used_in_refinement.sum()) - int(dials_used.sum())) < 0.05 * dials_used.sum()
    assert np.mean(result.centroid_outlier == dials_table.get_flags(Flags.centroid_outlier)) > 0.9


def test_scan_varying_predictions_match_dials_on_quartz(quartz):
    indexed, table, dials, dials_table = quartz
    result = refine(indexed, table, RefinementOptions(detector_fix=("distance",), scan_varying=True))
    assert result.experiment.crystal.A_at_scan_points.shape == dials.crystal.A_at_scan_points.shape
    both = result.used_in_refinement & dials_table.get_flags(Flags.used_in_refinement)
    difference = np.sqrt(np.mean((result.xyzcal_px[both] - dials_table["xyzcal.px"][both]) ** 2, axis=0))
    assert np.all(difference < [0.2, 0.2, 0.1])  # px, px, images; RMSDs are ~0.9, 1.2 px and 0.2 images
    dials_rmsds, _ = _dials_rmsds_px(dials, dials_table)
    ours = np.array([result.rmsds["x_px"], result.rmsds["y_px"], result.rmsds["z_images"]])
    assert np.all(ours < 1.1 * dials_rmsds)


@pytest.fixture(scope="module")
def lysozyme(shared_data):
    """cRED lysozyme crystal 14: strong spots indexed with the crystal of DIALS' refined.expt."""
    from algorithms.geometry.prediction import reciprocal_lattice_points
    from algorithms.refinement import observations_mm_from_px
    from pipeline.formats.expt import read_experiments
    from pipeline.formats.refl import read_reflections

    folder = shared_data / "ed_lysozyme_cred" / "reference_dials" / "experiment_14"
    experiment = read_experiments(folder / "refined.expt")[0]
    experiment.crystal.A_at_scan_points = None  # start from DIALS' static model
    table = read_reflections(folder / "strong.refl")
    rlp = reciprocal_lattice_points(table["xyzobs.px.value"], experiment.beam, experiment.detector,
                                    experiment.goniometer, experiment.scan)
    hkl, indexed, _ = assign_indices(rlp, experiment.crystal.A, tolerance=0.3)
    table["miller_index"] = hkl
    table["id"] = np.where(indexed, 0, -1)
    table["xyzobs.mm.value"], table["xyzobs.mm.variance"] = observations_mm_from_px(
        table["xyzobs.px.value"], table["xyzobs.px.variance"], experiment.detector, experiment.scan)
    return experiment, table


def test_lysozyme_rmsds_match_dials(lysozyme):
    """DIALS 2.1.1's dials.refine log (detector.fix=all): static RMSDs 1.1023, 1.2691 px,
    0.73898 images; scan-varying 0.87447, 0.84505 px, 0.4191 images; static cell a = 77.758(19).
    (DIALS 2.1 gave φ a weight of only 25 rad⁻², so its static c differs from a fit with the
    φ variances of §3.4; we compare the RMSDs and a.)"""
    experiment, table = lysozyme
    static = refine(experiment, table, RefinementOptions(detector_fix=("all",)))
    ours = np.array([static.rmsds["x_px"], static.rmsds["y_px"], static.rmsds["z_images"]])
    assert np.all(ours < 1.05 * np.array([1.1023, 1.2691, 0.73898]))
    assert static.experiment.crystal.unit_cell.a == pytest.approx(77.758, rel=0.002)
    varying = refine(experiment, table, RefinementOptions(detector_fix=("all",), scan_varying=True))
    ours = np.array([varying.rmsds["x_px"], varying.rmsds["y_px"], varying.rmsds["z_images"]])
    assert np.all(ours < 1.05 * np.array([0.87447, 0.84505, 0.4191]))
    assert varying.experiment.crystal.A_at_scan_points.shape == (48, 3, 3)  # "A sampled at 48 scan points"
