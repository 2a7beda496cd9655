"""Geometry refinement engine (dials.refine equivalent), shared by indexing macro-cycles,
refine_bravais_settings, refine, distance calibration and integration.

Typical calls (DIALS' defaults per program, algorithms.md §4.6, §5, §10)::

    from algorithms.refinement import RefinementOptions, observations_mm_from_px, predict_for_indexed, refine

    value_mm, variance_mm = observations_mm_from_px(table["xyzobs.px.value"], table["xyzobs.px.variance"],
                                                    experiment.detector, experiment.scan)
    # dials.index macro-cycle / refine_bravais_settings: tukey, 100 reflections per degree, static
    RefinementOptions(outlier_algorithm="tukey", reflections_per_degree=100, detector_fix=("distance",),
                      goniometer_fix=(), auto_reduction_action="fix")
    # dials.refine (static macro-cycle, then scan-varying)
    RefinementOptions(detector_fix=("distance",), scan_varying=True)
    # distance calibration from a known cell
    RefinementOptions(detector_fix=("orientation",), unit_cell_restraints=[(cell, (0.01,) * 6)])

``refine`` returns a :class:`RefinementResult` (refined experiment copy, per-row
used_in_refinement / centroid_outlier masks, xyzcal.mm/px, RMSDs, step history, termination,
parameters with esds, cell esds, scan-varying model per scan point, residual summaries).
``predict_for_indexed`` predicts indexed reflections with the crossing of their entering flag
(static or scan-varying crystal). :mod:`algorithms.refinement.simulation` makes indexed
observations with exact truth for tests and benchmarks.
"""
from algorithms.refinement.refiner import (
    IndexedPredictions,
    RefinementOptions,
    RefinementResult,
    predict_for_indexed,
    refine,
    scan_varying_summary,
)
from algorithms.refinement.reflection_manager import observations_mm_from_px

__all__ = [
    "IndexedPredictions",
    "RefinementOptions",
    "RefinementResult",
    "observations_mm_from_px",
    "predict_for_indexed",
    "refine",
    "scan_varying_summary",
]
