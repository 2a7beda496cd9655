"""Simulated strong spots with exact truth for the indexing tests (ED and X-ray geometries)."""
from __future__ import annotations

from dataclasses import dataclass

import gemmi
import numpy as np
from scipy.spatial.transform import Rotation

from algorithms.geometry.models import Beam, Crystal, Detector, Goniometer, Scan
from algorithms.geometry.prediction import miller_indices_to_d_min, predict_rotation, reciprocal_lattice_points

MYD88_C2 = (99.06, 31.01, 54.30, 90.0, 107.7, 90.0)
LYSOZYME = (77.8, 77.8, 38.0, 90.0, 90.0, 90.0)
TRICLINIC = (37.07, 61.63, 64.40, 72.88, 89.25, 73.45)


@dataclass
class SimulatedSpots:
    crystal: Crystal  # the true crystal (conventional setting)
    beam: Beam
    detector: Detector
    goniometer: Goniometer
    scan: Scan
    xyz_px: np.ndarray
    rlp: np.ndarray
    d: np.ndarray
    phi_rad: np.ndarray
    entering: np.ndarray
    true_hkl: np.ndarray  # (0,0,0) for the random non-lattice spots
    is_lattice: np.ndarray


def ed_geometry():
    beam = Beam(direction=(0, 0, 1), wavelength=0.0251)
    detector = Detector(origin=(-228.875 * 0.055, 235.78 * 0.055, -1762.0), fast_axis=(1, 0, 0), slow_axis=(0, -1, 0),
                        pixel_size=(0.055, 0.055), image_size=(516, 516))
    goniometer = Goniometer(rotation_axis=(-107.0, -122.0, 0.0))
    scan = Scan(image_range=(1, 72), oscillation=(-56.73, 0.9149))
    return beam, detector, goniometer, scan


def xray_geometry():
    beam = Beam(direction=(0, 0, 1), wavelength=1.0)
    detector = Detector(origin=(-100.0, 100.0, -150.0), fast_axis=(1, 0, 0), slow_axis=(0, -1, 0),
                        pixel_size=(0.1, 0.1), image_size=(2000, 2000))
    goniometer = Goniometer(rotation_axis=(1.0, 0.0, 0.0))
    scan = Scan(image_range=(1, 65), oscillation=(10.0, 1.0))
    return beam, detector, goniometer, scan


def simulate_spots(cell, space_group="P 1", geometry="ed", n_spots=600, seed=0, d_min=2.5, d_max=20.0,
                   noise_px=0.3, noise_images=0.2, random_fraction=0.0, n_images=None) -> SimulatedSpots:
    rng = np.random.default_rng(seed)
    beam, detector, goniometer, scan = ed_geometry() if geometry == "ed" else xray_geometry()
    if n_images is not None:
        scan = Scan(image_range=(1, n_images), oscillation=scan.oscillation)
    crystal = Crystal.from_cell_and_U(gemmi.UnitCell(*cell), Rotation.random(random_state=seed + 17).as_matrix(),
                                      space_group=space_group)
    hkl = miller_indices_to_d_min(crystal.A, d_min, d_max)
    sg = gemmi.SpaceGroup(space_group)
    hkl = hkl[~sg.operations().systematic_absences(hkl.astype(np.int32))]
    pred = predict_rotation(hkl, crystal.A, beam, detector, goniometer, scan)
    z0, z1 = scan.array_range
    inside = (pred.z_px > z0 + 0.5) & (pred.z_px < z1 - 0.5)
    pred = pred.select(inside)
    chosen = rng.choice(len(pred), size=min(n_spots, len(pred)), replace=False)
    pred = pred.select(np.sort(chosen))
    xyz = pred.xyzcal_px + rng.normal(size=(len(pred), 3)) * [noise_px, noise_px, noise_images]
    true_hkl = pred.miller_index.copy()
    is_lattice = np.ones(len(pred), bool)
    n_random = int(round(random_fraction * len(pred)))
    if n_random:
        nf, ns = detector.image_size
        random_xyz = np.column_stack([rng.uniform(0, nf, n_random), rng.uniform(0, ns, n_random),
                                      rng.uniform(z0, z1, n_random)])
        d_random = detector.resolution_of_pixel(random_xyz[:, :2], beam.s0)
        ok = (d_random > d_min) & (d_random < d_max)
        xyz = np.vstack([xyz, random_xyz[ok]])
        true_hkl = np.vstack([true_hkl, np.zeros((ok.sum(), 3), int)])
        is_lattice = np.concatenate([is_lattice, np.zeros(ok.sum(), bool)])
    rlp = reciprocal_lattice_points(xyz, beam, detector, goniometer, scan)
    phi = np.radians(scan.angle_from_array_index(xyz[:, 2]))
    s1 = detector.pixel_to_s1(xyz[:, :2], beam.s0)
    entering = (s1 @ np.cross(beam.s0, goniometer.rotation_axis_lab)) < 0
    return SimulatedSpots(crystal, beam, detector, goniometer, scan, xyz, rlp, 1.0 / np.linalg.norm(rlp, axis=1), phi,
                          entering, true_hkl, is_lattice)
