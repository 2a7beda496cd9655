"""Geometry refinement inside indexing: the ``refine`` callables that
:func:`algorithms.indexing.index_reflections` expects, built on :mod:`algorithms.refinement`.

dials.index refines twice over (algorithms.md §4.4–4.6):

- each candidate lattice gets a short static refinement from the *imported* geometry (at most
  4 iterations, 20 reflections per degree, auto-reduction "fix", Tukey outliers with the IQR
  multiplier 3.0 over the whole scan, no φ blocks), only to rank the candidates;
- the chosen lattice goes through macro-cycles of index + refine at increasing resolution, and
  every macro-cycle starts from the beam, detector and goniometer the previous one refined; the
  reciprocal-lattice points are recomputed after each geometry change.

:class:`IndexingRefiner` is both (``carry_geometry`` False or True). Called as
``refiner(crystal, indexed_mask, miller_index)`` it returns ``(crystal, rmsds, outlier_mask)``
or, when it carries the geometry, ``(crystal, rmsds, outlier_mask, rlp)``, with rmsds
(x px, y px, z images); the last refinement's full :class:`RefinementResult` is kept for the
log tables and the output reflections.
"""
from __future__ import annotations

import numpy as np

from algorithms.geometry.models import Crystal, Experiment
from algorithms.geometry.prediction import reciprocal_lattice_points
from algorithms.refinement import RefinementOptions, RefinementResult, observations_mm_from_px, refine
from algorithms.refinement.reflection_manager import entering_flags, observed_s1
from algorithms.reflection_table import ReflectionTable

# DIALS' candidate refinement (indexing.basis_vector_combinations): short and sparse, lenient outliers
CANDIDATE_MAX_ITERATIONS = 4
CANDIDATE_REFLECTIONS_PER_DEGREE = 20.0
CANDIDATE_TUKEY_IQR_MULTIPLIER = 3.0


def candidate_options(options: RefinementOptions) -> RefinementOptions:
    """The short refinement DIALS runs on every candidate lattice, with the user's fix options."""
    return RefinementOptions(
        beam_fix=options.beam_fix, crystal_fix=options.crystal_fix, detector_fix=options.detector_fix,
        goniometer_fix=options.goniometer_fix, outlier_algorithm=options.outlier_algorithm,
        outlier_iqr_multiplier=CANDIDATE_TUKEY_IQR_MULTIPLIER, outlier_block_width_deg=None,
        max_iterations=CANDIDATE_MAX_ITERATIONS, reflections_per_degree=CANDIDATE_REFLECTIONS_PER_DEGREE,
        close_to_spindle_cutoff=options.close_to_spindle_cutoff, auto_reduction_action="fix",
        min_nref_per_parameter=options.min_nref_per_parameter, engine=options.engine)


def spot_geometry(experiment: Experiment, xyzobs_px: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rlp, φ_rad, entering) of spot centroids for the experiment's current geometry."""
    xyzobs_px = np.asarray(xyzobs_px, float)
    rlp = reciprocal_lattice_points(xyzobs_px, experiment.beam, experiment.detector, experiment.goniometer,
                                    experiment.scan)
    phi_rad = np.radians(experiment.scan.angle_from_array_index(xyzobs_px[:, 2]))
    s1 = experiment.detector.pixel_to_s1(xyzobs_px[:, :2], experiment.beam.s0)
    return rlp, phi_rad, entering_flags(experiment, s1)


class IndexingRefiner:
    """Refines a candidate crystal with the sweep's geometry against the strong spots."""

    def __init__(self, experiment: Experiment, xyzobs_px: np.ndarray, xyzobs_px_variance: np.ndarray,
                 options: RefinementOptions, carry_geometry: bool):
        self.experiment = experiment.replace(crystal=None)
        self.xyzobs_px = np.asarray(xyzobs_px, float)
        self.obs_mm, self.var_mm = observations_mm_from_px(self.xyzobs_px, xyzobs_px_variance,
                                                           experiment.detector, experiment.scan)
        self.options = options
        self.carry_geometry = carry_geometry
        self.results: list[RefinementResult] = []  # one per call when carrying the geometry
        self.indexed_counts: list[int] = []  # spots indexed at each call (before outlier rejection)
        self.crystals_in: list[Crystal] = []  # the crystal handed to each call
        self.last_indexed_mask: np.ndarray | None = None
        self.last_miller_index: np.ndarray | None = None

    def entering(self) -> np.ndarray:
        s1 = observed_s1(self.experiment, self.obs_mm[:, :2])
        return entering_flags(self.experiment, s1)

    def rlp(self) -> np.ndarray:
        return reciprocal_lattice_points(self.xyzobs_px, self.experiment.beam, self.experiment.detector,
                                         self.experiment.goniometer, self.experiment.scan)

    def table(self, indexed_mask: np.ndarray, miller_index: np.ndarray) -> ReflectionTable:
        """The spots as refinement reads them: unindexed rows have id −1 and h = 0."""
        mask = np.asarray(indexed_mask, bool)
        return ReflectionTable({
            "miller_index": np.where(mask[:, None], miller_index, 0).astype(np.int32),
            "id": np.where(mask, 0, -1).astype(np.int32),
            "xyzobs.mm.value": self.obs_mm,
            "xyzobs.mm.variance": self.var_mm,
            "entering": self.entering(),
        })

    def __call__(self, crystal: Crystal, indexed_mask: np.ndarray, miller_index: np.ndarray) -> tuple:
        experiment = self.experiment.replace(crystal=crystal.copy())
        result = refine(experiment, self.table(indexed_mask, miller_index), self.options)
        rmsds = (result.rmsds["x_px"], result.rmsds["y_px"], result.rmsds["z_images"])
        refined_crystal = result.experiment.crystal
        if not self.carry_geometry:
            return refined_crystal, rmsds, result.centroid_outlier
        self.experiment = result.experiment.replace(crystal=None)
        self.results.append(result)
        self.indexed_counts.append(int(np.sum(indexed_mask)))
        self.crystals_in.append(crystal.copy())
        self.last_indexed_mask = np.asarray(indexed_mask, bool).copy()
        self.last_miller_index = np.asarray(miller_index).copy()
        return refined_crystal, rmsds, result.centroid_outlier, self.rlp()
