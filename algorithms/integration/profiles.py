"""Reference profiles learned per detector/rotation region (DIALS' ``regular_grid`` sampler,
XDS' 3×3 detector regions × rotation blocks).

Each reference reflection's Kabsch grid gives a density per unit c-volume per unit intensity,
g = (counts − B)/(n·v_vox·I_ref) (B: modelled background, n: voxel mass mapped to the cell,
v_vox: a voxel's c-volume); profiles are intensity-weighted means of these densities at 3×3 detector positions ×
⌈scan/step⌉ rotation positions, every reference contributing to its neighbouring positions with
weight exp(−4 ln2 · d²) (d in grid spacings).
"""
from __future__ import annotations

import numpy as np

from algorithms.integration.kernels import GRID


def sampler_coordinates(xy_px: np.ndarray, z_px: np.ndarray, image_size: tuple[int, int], z_range: tuple[float, float],
                        n_xy: int = 3, z_step_images: float = 5.0) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Continuous sampler coordinates (n, 3) in units of the grid spacing (position i is at i)
    and the sampler shape (n_x, n_y, n_z)."""
    n_z = max(1, int(np.ceil((z_range[1] - z_range[0]) / z_step_images)))
    cx = xy_px[:, 0] / image_size[0] * n_xy - 0.5
    cy = xy_px[:, 1] / image_size[1] * n_xy - 0.5
    cz = (z_px - z_range[0]) / (z_range[1] - z_range[0]) * n_z - 0.5
    return np.column_stack([cx, cy, cz]), (n_xy, n_xy, n_z)


def support_cells(radius_cells: float) -> np.ndarray:
    """Flat indices (c3, c2, c1 order) of the grid cells whose centres lie within
    ``radius_cells`` of the grid centre: the cells a profile may be fitted on."""
    k = np.arange(GRID) - GRID // 2
    c3, c2, c1 = np.meshgrid(k, k, k, indexing="ij")
    return np.flatnonzero((c1**2 + c2**2 + c3**2 <= radius_cells**2).ravel()).astype(np.int32)


def _position_grid(shape: tuple[int, int, int]) -> np.ndarray:
    gx, gy, gz = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    return np.column_stack([gx.ravel(), gy.ravel(), gz.ravel()]).astype(float)


def learn_reference_profiles(
    coordinates: np.ndarray,
    shape: tuple[int, int, int],
    counts: np.ndarray,
    background: np.ndarray,
    cover: np.ndarray,
    bad: np.ndarray,
    voxel_volume: np.ndarray,
    intensity: np.ndarray,
    cell_volume: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Profiles (m, 11³) from the whole grids of the reference reflections (rows of ``counts``,
    ``background``, ``cover``, ``bad``, with sampler ``coordinates``, ``voxel_volume`` and
    summation ``intensity``), the number of references behind each position, whether each
    position has a profile, and the fraction of each profile that the references' summation
    recorded (see below; 1 where there is no profile).

    Each profile is normalised so that its integral over the whole grid is 1 — cells below the
    fitting threshold count too — so that a fit on the central cells alone estimates the whole
    reflection; the noise of the outer cells averages out over the references (it is not
    clipped at zero, which would bias the integral). Before normalisation the densities are per
    unit summed intensity, so their integral is the (intensity-weighted) ratio of the whole
    profile to what summation over the references' foregrounds recorded: its inverse is the
    fraction of the profile inside the integration domain (XDS' treatment of the part of a
    profile outside it; Kabsch 2010), measured, not modelled."""
    positions = _position_grid(shape)
    m = len(positions)
    ref = np.nonzero(intensity > 0)[0]
    if len(ref) == 0:
        return np.zeros((m, GRID**3)), np.zeros(m, int), np.zeros(m, bool), np.ones(m)
    d2 = np.sum((coordinates[ref, None, :] - positions[None, :, :]) ** 2, axis=2)
    weights = np.where(d2 <= 3.0, np.exp(-4 * np.log(2) * d2), 0.0)  # (R, m)
    n = cover[ref].astype(float)
    good = (n > 0) & ~bad[ref]
    excess = counts[ref] - background[ref]
    # intensity-weighted: g_k = Σ w (c − B)/v_vox ÷ Σ w·n·I, so that strong references, whose
    # shapes are best determined, dominate and weak ones add little noise
    numerator = weights.T @ np.where(good, excess / voxel_volume[ref, None], 0.0)
    denominator = weights.T @ np.where(good, n * intensity[ref, None], 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        profiles = np.where(denominator > 0, numerator / denominator, 0.0)
    total = profiles.sum(axis=1) * cell_volume
    peak = profiles.max(axis=1)
    available = (total > 0) & (peak > 0)
    profiles[available] /= total[available, None]
    profiles[~available] = 0.0
    n_refs = np.count_nonzero(weights > 0.5, axis=0)
    summed_fraction = np.where(available, 1.0 / np.where(available, total, 1.0), 1.0)
    return profiles, n_refs, available, summed_fraction


def nearest_available_profile(coordinates: np.ndarray, shape: tuple[int, int, int], available: np.ndarray) -> np.ndarray:
    """Index of the nearest position that has a profile (−1 if none has)."""
    positions = _position_grid(shape)
    if not available.any():
        return np.full(len(coordinates), -1)
    usable = np.nonzero(available)[0]
    d2 = np.sum((coordinates[:, None, :] - positions[None, usable, :]) ** 2, axis=2)
    return usable[np.argmin(d2, axis=1)]
