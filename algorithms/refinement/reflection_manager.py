"""Which observations refinement uses (DIALS' ``ReflectionManager``), and px → mm/rad.

Usable: indexed (h ≠ 0, id ≥ 0), not overloaded, not excluded_for_refinement, finite
centroids with positive variances, φ inside the scan, and not "close to the spindle":
|(s1 × s0)·ê_lab| > close_to_spindle_cutoff (Å⁻², with s1 from the observed position).
With ``reflections_per_degree`` a random sample (seed 42) of max(rpd·width, 1000) is kept.
"""
from __future__ import annotations

import numpy as np

from algorithms.geometry.models import Detector, Experiment, Scan
from algorithms.reflection_table import Flags, ReflectionTable

MINIMUM_SAMPLE_SIZE = 1000
RANDOM_SEED = 42


def observations_mm_from_px(
    xyzobs_px_value: np.ndarray, xyzobs_px_variance: np.ndarray, detector: Detector, scan: Scan
) -> tuple[np.ndarray, np.ndarray]:
    """(x_mm, y_mm, φ_rad) values and variances from pixel/image centroids (algorithms.md §3.4)."""
    value = np.atleast_2d(np.asarray(xyzobs_px_value, dtype=float))
    variance = np.atleast_2d(np.asarray(xyzobs_px_variance, dtype=float))
    px = np.asarray(detector.pixel_size)
    dphi_rad = np.radians(scan.oscillation[1])
    value_mm = np.column_stack([value[:, :2] * px, np.radians(scan.angle_from_array_index(value[:, 2]))])
    variance_mm = np.column_stack([variance[:, :2] * px**2, variance[:, 2] * dphi_rad**2])
    return value_mm, variance_mm


def observed_s1(experiment: Experiment, xy_mm: np.ndarray) -> np.ndarray:
    p = experiment.detector.mm_to_lab(xy_mm)
    return p / np.linalg.norm(p, axis=1, keepdims=True) * np.linalg.norm(experiment.beam.s0)


def entering_flags(experiment: Experiment, s1: np.ndarray) -> np.ndarray:
    s0 = experiment.beam.s0
    return (s1 @ np.cross(s0, experiment.goniometer.rotation_axis_lab)) < 0


def usable_rows(experiment: Experiment, reflections: ReflectionTable, close_to_spindle_cutoff: float) -> np.ndarray:
    """Boolean mask of rows refinement may use."""
    hkl = np.asarray(reflections["miller_index"])
    obs = np.asarray(reflections["xyzobs.mm.value"], dtype=float)
    var = np.asarray(reflections["xyzobs.mm.variance"], dtype=float)
    ok = np.any(hkl != 0, axis=1) & np.all(np.isfinite(obs), axis=1) & np.all(var > 0, axis=1)
    if "id" in reflections:
        ok &= np.asarray(reflections["id"]) >= 0
    if "flags" in reflections:
        ok &= ~reflections.get_flags(Flags.overloaded) & ~reflections.get_flags(Flags.excluded_for_refinement)
    lo, hi = np.radians(sorted(experiment.scan.oscillation_range_deg))
    slack = 1e-9
    ok &= (obs[:, 2] >= lo - slack) & (obs[:, 2] <= hi + slack)
    s0 = experiment.beam.s0
    s1 = observed_s1(experiment, np.nan_to_num(obs[:, :2]))
    ok &= np.abs(np.cross(s1, s0) @ experiment.goniometer.rotation_axis_lab) > close_to_spindle_cutoff
    return ok


def sample_rows(rows: np.ndarray, width_deg: float, reflections_per_degree: float | None) -> np.ndarray:
    """A reproducible random subset of row indices when there are more than needed."""
    if reflections_per_degree is None:
        return rows
    size = max(int(reflections_per_degree * abs(width_deg)), MINIMUM_SAMPLE_SIZE)
    if len(rows) <= size:
        return rows
    rng = np.random.default_rng(RANDOM_SEED)
    return np.sort(rng.choice(rows, size=size, replace=False))
