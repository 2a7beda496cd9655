"""Geometry refinement engine (dials.refine equivalent), shared by indexing, lattice-symmetry
refinement, refine, distance calibration and integration.

>>> from algorithms.refinement import RefinementOptions, refine
>>> result = refine(experiment, reflections, RefinementOptions(detector_fix=("distance",)))  # doctest: +SKIP
"""
from algorithms.refinement.refiner import (
    IndexedPredictions,
    RefinementOptions,
    RefinementResult,
    predict_for_indexed,
    refine,
)
from algorithms.refinement.reflection_manager import observations_mm_from_px

__all__ = [
    "IndexedPredictions",
    "RefinementOptions",
    "RefinementResult",
    "observations_mm_from_px",
    "predict_for_indexed",
    "refine",
]
