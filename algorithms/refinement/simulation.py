"""Indexed centroid observations with exact truth, for refinement tests and benchmarks.

Predictions come from ``algorithms.geometry.prediction.predict_rotation`` with the true models;
Gaussian noise of known σ is added in pixels and images, and the variances are σ² (so weights
are exact). Optional linear drift of the crystal orientation and cell across the scan is
simulated image by image (each reflection predicted with the A of its own image).
"""
from __future__ import annotations

import gemmi
import numpy as np

from algorithms.geometry.models import Beam, Crystal, Detector, Experiment, Goniometer, Scan, b_matrix, rotation_matrix
from algorithms.geometry.prediction import miller_indices_to_d_min, predict_rotation
from algorithms.reflection_table import Flags, ReflectionTable
from algorithms.refinement.reflection_manager import observations_mm_from_px

ED_CELL = (99.06, 31.01, 54.30, 90.0, 107.7, 90.0)


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def ed_experiment(seed: int = 0, cell=ED_CELL, space_group: str = "C 1 2 1", distance_mm: float = 1762.0) -> Experiment:
    """The MyD88 geometry: λ 0.0251 Å, 516×516×0.055 mm, 72 images of 0.9149°."""
    rng = np.random.default_rng(seed)
    detector = Detector(origin=np.array([0.0, 0.0, -distance_mm]), fast_axis=(1, 0, 0), slow_axis=(0, -1, 0))
    beam = Beam(direction=(0, 0, 1), wavelength=0.0251)
    detector.set_beam_centre_px(228.875, 235.78, beam.s0)
    crystal = Crystal.from_cell_and_U(gemmi.UnitCell(*cell), random_rotation(rng), space_group)
    return Experiment(beam=beam, detector=detector, goniometer=Goniometer(rotation_axis=(-107, -122, 0)),
                      scan=Scan(image_range=(1, 72), oscillation=(-56.73, 0.9149)), crystal=crystal)


def xray_experiment(seed: int = 0, cell=(57.8, 57.8, 150.0, 90, 90, 90), space_group: str = "P 43 21 2") -> Experiment:
    """λ 1 Å, 150 mm, 2463×2527×0.172 mm (Pilatus-like), 90 images of 0.5°."""
    rng = np.random.default_rng(seed)
    detector = Detector(origin=np.array([0.0, 0.0, -150.0]), fast_axis=(1, 0, 0), slow_axis=(0, -1, 0),
                        pixel_size=(0.172, 0.172), image_size=(1000, 1000))
    beam = Beam(direction=(0, 0, 1), wavelength=1.0)
    detector.set_beam_centre_px(501.3, 498.7, beam.s0)
    crystal = Crystal.from_cell_and_U(gemmi.UnitCell(*cell), random_rotation(rng), space_group)
    return Experiment(beam=beam, detector=detector, goniometer=Goniometer(rotation_axis=(1, 0, 0)),
                      scan=Scan(image_range=(1, 90), oscillation=(0.0, 0.5)), crystal=crystal)


def _A_per_image(experiment: Experiment, drift_orientation_deg: float, drift_cell_fraction: float) -> np.ndarray:
    """A at each image centre with a linear rotation about x and an isotropic cell change."""
    n = experiment.scan.num_images
    f = (np.arange(n) + 0.5) / n - 0.5  # −½ … ½ across the scan
    U0, cell = experiment.crystal.U, experiment.crystal.unit_cell.parameters
    out = []
    for fk in f:
        R = rotation_matrix((1, 0, 0), np.radians(drift_orientation_deg * fk))
        scale = 1.0 + drift_cell_fraction * fk
        c = gemmi.UnitCell(cell[0] * scale, cell[1] * scale, cell[2] * scale, *cell[3:])
        out.append(R @ U0 @ b_matrix(c))
    return np.array(out)


def simulate_reflections(
    experiment: Experiment,
    n_reflections: int | None = 600,
    sigma_px: float = 0.3,
    sigma_images: float = 0.3,
    d_min: float = 2.0,
    seed: int = 1,
    drift_orientation_deg: float = 0.0,
    drift_cell_fraction: float = 0.0,
) -> tuple[ReflectionTable, np.ndarray]:
    """Indexed observations with noise; returns (table, true xyz_px)."""
    rng = np.random.default_rng(seed)
    crystal, scan = experiment.crystal, experiment.scan
    hkl_all = miller_indices_to_d_min(crystal.A, d_min)
    pred = predict_rotation(hkl_all, crystal.A, experiment.beam, experiment.detector, experiment.goniometer, scan)
    if drift_orientation_deg or drift_cell_fraction:
        A_img = _A_per_image(experiment, drift_orientation_deg, drift_cell_fraction)
        parts = []
        for k, A in enumerate(A_img):
            z0 = scan.array_range[0] + k
            # only reflections near this image can cross it under a small drift
            nearby = np.unique(pred.miller_index[np.abs(pred.z_px - z0 - 0.5) < 4.0], axis=0)
            p = predict_rotation(nearby, A, experiment.beam, experiment.detector, experiment.goniometer, scan)
            parts.append(p.select((p.z_px >= z0) & (p.z_px < z0 + 1)))
        pred = type(parts[0])(**{f: np.concatenate([getattr(p, f) for p in parts]) for f in parts[0].__dict__})
    if n_reflections is not None and len(pred) > n_reflections:
        pred = pred.select(np.sort(rng.choice(len(pred), n_reflections, replace=False)))
    true_px = pred.xyzcal_px
    noise = rng.normal(size=true_px.shape) * np.array([sigma_px, sigma_px, sigma_images])
    obs_px = true_px + noise
    var_px = np.tile([sigma_px**2, sigma_px**2, sigma_images**2], (len(obs_px), 1))
    value_mm, variance_mm = observations_mm_from_px(obs_px, var_px, experiment.detector, scan)
    n = len(obs_px)
    table = ReflectionTable({
        "id": np.zeros(n, int),
        "miller_index": pred.miller_index,
        "entering": pred.entering,
        "xyzobs.px.value": obs_px,
        "xyzobs.px.variance": var_px,
        "xyzobs.mm.value": value_mm,
        "xyzobs.mm.variance": variance_mm,
        "flags": np.full(n, int(Flags.indexed | Flags.strong), dtype=np.uint64),
    })
    return table, true_px


def perturbed(experiment: Experiment, seed: int = 7, orientation_deg: float = 0.5, cell_fraction: float = 0.01,
              beam_centre_px: float = 1.0) -> Experiment:
    """A copy with the orientation rotated, the cell stretched and the beam centre moved."""
    rng = np.random.default_rng(seed)
    out = experiment.copy()
    axis = rng.normal(size=3)
    R = rotation_matrix(axis / np.linalg.norm(axis), np.radians(orientation_deg))
    cell = np.array(out.crystal.unit_cell.parameters)
    factors = 1.0 + cell_fraction * rng.choice([-1.0, 1.0], size=3)
    cell[:3] *= factors
    out.crystal = Crystal.from_cell_and_U(gemmi.UnitCell(*cell), R @ out.crystal.U, out.crystal.space_group)
    shift = rng.normal(size=2)
    shift *= beam_centre_px / np.linalg.norm(shift)
    px = out.detector.pixel_size
    out.detector.origin = out.detector.origin + shift[0] * px[0] * out.detector.fast_axis + shift[1] * px[1] * out.detector.slow_axis
    return out


def orientation_error_deg(U_a: np.ndarray, U_b: np.ndarray) -> float:
    R = U_a @ U_b.T
    return float(np.degrees(np.arccos(np.clip((np.trace(R) - 1) / 2, -1, 1))))
