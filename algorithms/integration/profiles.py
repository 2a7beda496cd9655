"""Reference profiles learned per detector/rotation region (DIALS' ``regular_grid`` sampler,
XDS' 3×3 detector regions × rotation blocks).

Each reference reflection's Kabsch grid gives a density per unit c-volume per unit intensity,
g = (counts − b·n)/(n·v_vox·I_ref) (n: voxel mass mapped to the cell, v_vox: a voxel's
c-volume); profiles are intensity-weighted means of these densities at 3×3 detector positions ×
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


def profile_support(radius_cells: float) -> np.ndarray:
    """Boolean (11, 11, 11) mask of the cells whose centres lie within ``radius_cells`` of the
    grid centre (the n_sigma ellipsoid, which is a sphere in units of σ)."""
    k = np.arange(GRID) - GRID // 2
    c3, c2, c1 = np.meshgrid(k, k, k, indexing="ij")
    return c1**2 + c2**2 + c3**2 <= radius_cells**2


def _position_grid(shape: tuple[int, int, int]) -> np.ndarray:
    gx, gy, gz = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    return np.column_stack([gx.ravel(), gy.ravel(), gz.ravel()]).astype(float)


def learn_reference_profiles(
    coordinates: np.ndarray,
    shape: tuple[int, int, int],
    is_reference: np.ndarray,
    grid_counts: np.ndarray,
    grid_cover: np.ndarray,
    grid_bad: np.ndarray,
    background: np.ndarray,
    voxel_volume: np.ndarray,
    intensity: np.ndarray,
    cell_volume: float,
    threshold: float = 0.02,
    n_sigma_cells: float = 3.0 / (4.5 / 5.5),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Profiles (m, 11, 11, 11) normalised to ∫g dc = 1, the number of references behind each,
    and whether each position has a profile.

    Cells below ``threshold`` × the profile's peak are set to zero before normalising (as XDS
    does), so that a small error in the references' backgrounds, summed over the many outer
    cells, cannot lower the normalised peak; ``n_sigma_cells`` is the model's n_sigma extent in
    grid cells (3σ over cells of 4.5σ/5.5)."""
    positions = _position_grid(shape)
    ref = np.nonzero(is_reference & (intensity > 0))[0]
    m = len(positions)
    if len(ref) == 0:
        return np.zeros((m, GRID, GRID, GRID)), np.zeros(m, int), np.zeros(m, bool)
    d2 = np.sum((coordinates[ref, None, :] - positions[None, :, :]) ** 2, axis=2)
    weights = np.where(d2 <= 3.0, np.exp(-4 * np.log(2) * d2), 0.0)  # (R, m)
    n = grid_cover[ref].reshape(len(ref), -1)
    good = (n > 0) & ~grid_bad[ref].reshape(len(ref), -1)
    excess = grid_counts[ref].reshape(len(ref), -1) - background[ref, None] * n
    # intensity-weighted: g_k = Σ w (c − b·n)/v_vox ÷ Σ w·n·I, so that strong references, whose
    # shapes are best determined, dominate and weak ones add little noise
    numerator = weights.T @ np.where(good, excess / voxel_volume[ref, None], 0.0)
    denominator = weights.T @ np.where(good, n * intensity[ref, None], 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        profiles = np.where(denominator > 0, numerator / denominator, 0.0)
    # the profile lives inside the n_sigma ellipsoid of the Gaussian model: outside it, averaged
    # noise clipped at zero would only add spurious mass and lower the normalised peak
    profiles = np.maximum(profiles, 0.0) * profile_support(n_sigma_cells).ravel()
    profiles[profiles < threshold * profiles.max(axis=1, keepdims=True)] = 0.0
    total = profiles.sum(axis=1) * cell_volume
    available = total > 0
    profiles[available] /= total[available, None]
    counts = np.count_nonzero(weights > 0.5, axis=0)
    return profiles.reshape(m, GRID, GRID, GRID), counts, available


def nearest_available_profile(coordinates: np.ndarray, shape: tuple[int, int, int], available: np.ndarray) -> np.ndarray:
    """Index of the nearest position that has a profile (−1 if none has)."""
    positions = _position_grid(shape)
    if not available.any():
        return np.full(len(coordinates), -1)
    usable = np.nonzero(available)[0]
    d2 = np.sum((coordinates[:, None, :] - positions[None, usable, :]) ** 2, axis=2)
    return usable[np.argmin(d2, axis=1)]
