"""Indexing with the real refinement engine as its ``refine`` callable (how the pipeline wires it).

Candidates get DIALS' short refinement (≤ 4 iterations, 20 reflections/degree, auto-reduction
"fix"), the macro-cycles the full one (100 reflections/degree, Tukey outliers), both with
detector.fix=distance and a free goniometer, as ``dials.index`` in the tutorial.
"""
import numpy as np
import pytest

from algorithms.geometry.models import Experiment
from algorithms.geometry.prediction import reciprocal_lattice_points
from algorithms.indexing import index_reflections
from algorithms.reflection_table import ReflectionTable
from algorithms.refinement import RefinementOptions
from algorithms.refinement import refine as refine_engine
from indexing_simulation import MYD88_C2, simulate_spots
from test_indexing import check_solution

CANDIDATE = RefinementOptions(detector_fix=("distance",), goniometer_fix=(), outlier_algorithm="tukey",
                              reflections_per_degree=20, max_iterations=4, auto_reduction_action="fix")
MACRO_CYCLE = RefinementOptions(detector_fix=("distance",), goniometer_fix=(), outlier_algorithm="tukey",
                                reflections_per_degree=100)


def refine_callable(sim, options, state):
    n = len(sim.rlp)
    observed_mm = np.column_stack([sim.detector.pixel_to_mm(sim.xyz_px[:, :2]), sim.phi_rad])
    variance_mm = np.tile([(0.3 * 0.055) ** 2, (0.3 * 0.055) ** 2, np.radians(0.2 * 0.9149) ** 2], (n, 1))

    def refine(crystal, indexed_mask, miller_index):
        table = ReflectionTable({"miller_index": np.where(indexed_mask[:, None], miller_index, 0),
                                 "xyzobs.mm.value": observed_mm, "xyzobs.mm.variance": variance_mm,
                                 "entering": sim.entering, "id": np.where(indexed_mask, 0, -1)})
        result = refine_engine(state["experiment"].replace(crystal=crystal), table, options)
        refined = result.experiment
        state["experiment"] = refined.replace(crystal=None)
        rlp = reciprocal_lattice_points(sim.xyz_px, refined.beam, refined.detector, refined.goniometer, refined.scan)
        rmsds = (result.rmsds["x_px"], result.rmsds["y_px"], result.rmsds["z_images"])
        return refined.crystal, rmsds, result.centroid_outlier & indexed_mask, rlp

    return refine


@pytest.mark.parametrize("space_group", [None, "C2"])
def test_index_with_refinement_engine(space_group):
    sim = simulate_spots(MYD88_C2, "C 1 2 1", seed=3)
    state = {"experiment": Experiment(beam=sim.beam, detector=sim.detector, goniometer=sim.goniometer, scan=sim.scan)}
    result = index_reflections(sim.rlp, sim.d, sim.phi_rad, sim.entering, known_space_group=space_group,
                               refine=refine_callable(sim, MACRO_CYCLE, state),
                               refine_candidate=refine_callable(sim, CANDIDATE, state))
    check_solution(result, sim)
    # the refined positions fit to the simulated centroid noise (0.3 px, 0.2 images)
    assert result.rmsds[0] < 0.4 and result.rmsds[1] < 0.4 and result.rmsds[2] < 0.3
    assert result.indexed_mask.mean() > 0.95
    if space_group == "C2":
        np.testing.assert_allclose(result.crystal.unit_cell.parameters, (99.06, 31.01, 54.30, 90, 107.7, 90),
                                   rtol=1e-3, atol=0.05)
