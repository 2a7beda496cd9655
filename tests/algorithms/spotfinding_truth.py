"""Found spots against the simulator's exact truth (helper for the spot-finding tests).

For each simulated crystal: find spots (DIALS defaults, d_max = 20 Å with the true geometry)
and compare with the true reflections.

- A reflection's recorded centroid is that of the part of its rocking curve inside the scan
  (x, y its true position; z the fraction-weighted mean of its images' centres).
- True I/σ is that of ideal 3D summation: I = the recorded counts, σ² = I + B, B = the true
  background summed over the 3σ ellipse of the spot on every image holding ≥ 0.5 % of it.
- A true reflection is found if a spot lies within 2 px (x, y) and 1.5 images (z) of its
  recorded centroid.
- A found spot is genuine if some true reflection lies within 2 px of it (x, y) and has
  ≥ 1 % of its counts on one of the images the spot covers (a broad rocking curve split into
  pieces by the per-image threshold gives several genuine spots); otherwise it is spurious.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from algorithms.simulate import simulate_crystal
from algorithms.simulate.render import background_image
from algorithms.spotfinding import find_spots, static_mask

MATCH_XY_PX = 2.0
MATCH_Z_IMAGES = 1.5


@dataclass
class CrystalComparison:
    true_isig: np.ndarray  # per true reflection
    true_d: np.ndarray
    partiality: np.ndarray
    images_spanned: np.ndarray  # images holding ≥ 1 % of the reflection
    found: np.ndarray  # bool per true reflection
    centroid_error: np.ndarray  # (n, 3) spot − truth for found reflections (NaN otherwise)
    spurious: np.ndarray  # bool per found spot
    n_spots: int
    rejected_images: np.ndarray


def recorded_centroids(observations) -> np.ndarray:
    z_centres = observations.image_index_per_fraction() + 0.5
    fractions = observations.partial_fractions
    starts = observations.partial_offsets[:-1]
    weight = np.add.reduceat(fractions, starts)
    z = np.add.reduceat(fractions * z_centres, starts) / np.where(weight > 0, weight, 1)
    return np.column_stack([observations.xyz_px[:, :2], z])


def true_isig(observations, background: np.ndarray) -> np.ndarray:
    covariance = observations.spot_covariance_px
    area = np.pi * 9.0 * np.sqrt(np.clip(covariance[:, 0] * covariance[:, 2] - covariance[:, 1] ** 2, 1e-6, None))
    starts = observations.partial_offsets[:-1]
    n_images = np.add.reduceat((observations.partial_fractions >= 0.005).astype(int), starts)
    n_slow, n_fast = background.shape
    x = np.clip(observations.xyz_px[:, 0].astype(int), 0, n_fast - 1)
    y = np.clip(observations.xyz_px[:, 1].astype(int), 0, n_slow - 1)
    b = background[y, x] * area * np.maximum(n_images, 1)
    return observations.counts / np.sqrt(observations.counts + b)


def compare_crystal(spec, plan, structures, d_max: float = 20.0, chunk_images: int = 8) -> CrystalComparison:
    simulated = simulate_crystal(spec, plan, structures)
    observations = simulated.observations
    mask = static_mask(plan.detector, plan.beam.s0, d_max=d_max)
    found_spots = find_spots(simulated.images.astype(np.float32), plan.scan.array_range[0], mask,
                             chunk_images=chunk_images, max_strong_pixel_fraction=0.25)
    spots = found_spots.reflections["xyzobs.px.value"]
    bbox = found_spots.reflections["bbox"]
    truth = recorded_centroids(observations)
    background = background_image(spec, plan.detector.beam_centre_px(plan.beam.s0))

    scale = np.array([1.0, 1.0, MATCH_XY_PX / MATCH_Z_IMAGES])
    _, nearest = cKDTree(spots * scale).query(truth * scale, k=min(4, max(len(spots), 1)))
    nearest = nearest.reshape(len(truth), -1)
    found = np.zeros(len(truth), bool)
    error = np.full((len(truth), 3), np.nan)
    for column in range(nearest.shape[1]):
        candidate = np.minimum(nearest[:, column], len(spots) - 1)
        delta = spots[candidate] - truth
        ok = ~found & (np.hypot(delta[:, 0], delta[:, 1]) <= MATCH_XY_PX) & (np.abs(delta[:, 2]) <= MATCH_Z_IMAGES)
        error[ok] = delta[ok]
        found |= ok

    # a spot is genuine if a reflection within 2 px has ≥ 1 % of its counts on the spot's images
    # (the images holding ≥ 1 % of a rocking curve are consecutive: first_significant … last)
    image = observations.image_index_per_fraction() + plan.scan.array_range[0]  # absolute z
    starts = observations.partial_offsets[:-1]
    significant = observations.partial_fractions >= 0.01
    first_significant = np.minimum.reduceat(np.where(significant, image, 1 << 30), starts)
    last_significant = np.maximum.reduceat(np.where(significant, image, -(1 << 30)), starts)
    spurious = np.ones(len(spots), bool)
    for k, neighbours in enumerate(cKDTree(truth[:, :2]).query_ball_point(spots[:, :2], MATCH_XY_PX)):
        neighbours = np.asarray(neighbours, int)
        overlap = (first_significant[neighbours] < bbox[k, 5]) & (last_significant[neighbours] >= bbox[k, 4])
        spurious[k] = not overlap.any()
    return CrystalComparison(true_isig(observations, background), observations.d, observations.partiality,
                             np.maximum(last_significant - first_significant + 1, 0), found, error, spurious, len(spots),
                             found_spots.rejected_images)
