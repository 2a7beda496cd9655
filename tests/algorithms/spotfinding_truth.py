"""Found spots against the simulator's exact truth (helper for the spot-finding tests).

For each simulated crystal: find spots (DIALS defaults, d_max = 20 Å with the true geometry)
and compare with the true reflections. The simulator's counts are Poisson draws of the expected
image with no read noise (algorithms/simulate/render.py), i.e. a counting detector of gain 1, which
is what the finder assumes with ``dispersion.gain`` unset; var/mean of the counts about the
expected image is 1.000 ± 0.001 on every myd88 crystal.

- A reflection's recorded centroid is that of the part of its rocking curve inside the scan
  (x, y its true position; z the fraction-weighted mean of its images' centres, DIALS' convention
  that counts on image k sit at z = k + 0.5).
- True I/σ, two definitions, both with σ² = I + B from Poisson counts of signal and true
  background B summed over the 3σ ellipse of the spot (which holds 1 − e^−4.5 of its counts):
  ``summed_isig``, ideal 3D summation (I = all recorded counts, B over every image holding
  ≥ 0.5 % of the reflection); ``peak_image_isig``, the best single image (I and B of the image
  holding most of it; images without the spot — "noise" and "scrambled" frames — do not count).
  A per-image spot finder decides image by image, so only the second says whether a reflection
  is visible to it: electron-diffraction rocking curves spread a reflection over 6–14 images,
  and one whose summed I/σ is 5 has I/σ ≈ 2 on its best image.
- A true reflection is found if a spot lies within 2 px (x, y) and 1.5 images (z) of its
  recorded centroid.
- Centroid errors of found reflections: ``centroid_error`` = spot − recorded centroid;
  ``z_error_spot_images`` = spot z − the centroid of the reflection's counts on the images the
  spot spans (its bbox). The spot finder's z is by definition the centroid of what passed the
  threshold: the second measures how well it centroids that, the first adds where the threshold
  cut the rocking curve (a reflection seen on one image gets that image's centre; one cut by a
  scan end is seen on its bright side only).
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
from algorithms.spotfinding import find_spots, ring_map, static_mask

MATCH_XY_PX = 2.0
MATCH_Z_IMAGES = 1.5
ELLIPSE_FRACTION = 1.0 - np.exp(-4.5)  # of a 2-D Gaussian's counts inside its 3σ ellipse
IMAGES_WITHOUT_SPOTS = ("noise", "scrambled")


@dataclass
class CrystalComparison:
    summed_isig: np.ndarray  # per true reflection
    peak_image_isig: np.ndarray  # per true reflection
    true_d: np.ndarray
    true_z: np.ndarray  # recorded centroid, absolute image coordinate
    partiality: np.ndarray
    images_spanned: np.ndarray  # images holding ≥ 1 % of the reflection
    found: np.ndarray  # bool per true reflection
    centroid_error: np.ndarray  # (n, 3) spot − recorded centroid for found reflections (NaN otherwise)
    z_error_spot_images: np.ndarray  # spot z − recorded z on the spot's images (NaN if not found)
    spot_images: np.ndarray  # images the matched spot spans (0 if not found)
    spurious: np.ndarray  # bool per found spot
    n_spots: int
    rejected_images: np.ndarray


def recorded_centroids(observations, image_weight: np.ndarray | None = None) -> np.ndarray:
    """x, y and the fraction-weighted z of each reflection's in-scan images (optionally only
    those with ``image_weight`` 1, aligned with the partial fractions)."""
    z_centres = observations.image_index_per_fraction() + 0.5
    fractions = observations.partial_fractions if image_weight is None else observations.partial_fractions * image_weight
    starts = observations.partial_offsets[:-1]
    weight = np.add.reduceat(fractions, starts)
    z = np.add.reduceat(fractions * z_centres, starts) / np.where(weight > 0, weight, 1)
    return np.column_stack([observations.xyz_px[:, :2], z])


def _ellipse_background(observations, background: np.ndarray) -> np.ndarray:
    """True background counts per image inside each spot's 3σ ellipse."""
    covariance = observations.spot_covariance_px
    area = np.pi * 9.0 * np.sqrt(np.clip(covariance[:, 0] * covariance[:, 2] - covariance[:, 1] ** 2, 1e-6, None))
    n_slow, n_fast = background.shape
    x = np.clip(observations.xyz_px[:, 0].astype(int), 0, n_fast - 1)
    y = np.clip(observations.xyz_px[:, 1].astype(int), 0, n_slow - 1)
    return background[y, x] * area


def summed_isig(observations, background: np.ndarray) -> np.ndarray:
    """I/σ of ideal 3D summation over all the images holding ≥ 0.5 % of the reflection."""
    starts = observations.partial_offsets[:-1]
    n_images = np.add.reduceat((observations.partial_fractions >= 0.005).astype(int), starts)
    b = _ellipse_background(observations, background) * np.maximum(n_images, 1)
    return observations.counts / np.sqrt(observations.counts + b)


def peak_image_isig(observations, background: np.ndarray, images_without_spots: list[int]) -> np.ndarray:
    """I/σ of summation inside the 3σ ellipse on the reflection's best single image.

    ``images_without_spots``: 0-based scan image indices whose spots are missing or scrambled."""
    signal = ELLIPSE_FRACTION * observations.counts_per_image()
    owner = np.repeat(np.arange(len(observations)), np.diff(observations.partial_offsets))
    isig = signal / np.sqrt(signal + _ellipse_background(observations, background)[owner])
    isig[np.isin(observations.image_index_per_fraction(), images_without_spots)] = 0.0
    return np.maximum.reduceat(isig, observations.partial_offsets[:-1])


def compare_crystal(spec, plan, structures, d_max: float = 20.0, chunk_images: int = 8,
                    weak_spots=None) -> CrystalComparison:
    simulated = simulate_crystal(spec, plan, structures)
    observations = simulated.observations
    mask = static_mask(plan.detector, plan.beam.s0, d_max=d_max)
    found_spots = find_spots(simulated.images.astype(np.float32), plan.scan.array_range[0], mask,
                             chunk_images=chunk_images, max_strong_pixel_fraction=0.25, weak_spots=weak_spots,
                             rings=ring_map(plan.detector, plan.beam.s0))
    spots = found_spots.reflections["xyzobs.px.value"]
    bbox = found_spots.reflections["bbox"]
    truth = recorded_centroids(observations)
    truth[:, 2] += plan.scan.array_range[0]  # the spots' absolute z
    background = background_image(spec, plan.detector.beam_centre_px(plan.beam.s0))
    without_spots = [number - 1 for number, kind in plan.corrupted_images.items() if kind in IMAGES_WITHOUT_SPOTS]

    scale = np.array([1.0, 1.0, MATCH_XY_PX / MATCH_Z_IMAGES])
    _, nearest = cKDTree(spots * scale).query(truth * scale, k=min(4, max(len(spots), 1)))
    nearest = nearest.reshape(len(truth), -1)
    found = np.zeros(len(truth), bool)
    matched = np.zeros(len(truth), int)
    for column in range(nearest.shape[1]):
        candidate = np.minimum(nearest[:, column], len(spots) - 1)
        delta = spots[candidate] - truth
        ok = ~found & (np.hypot(delta[:, 0], delta[:, 1]) <= MATCH_XY_PX) & (np.abs(delta[:, 2]) <= MATCH_Z_IMAGES)
        matched[ok] = candidate[ok]
        found |= ok
    error = np.where(found[:, None], spots[matched] - truth, np.nan)

    # the reflection's recorded centroid on the images its matched spot spans (absolute z)
    image = observations.image_index_per_fraction() + plan.scan.array_range[0]
    owner = np.repeat(np.arange(len(truth)), np.diff(observations.partial_offsets))
    spot_box = bbox[matched[owner]]
    on_spot = ((image >= spot_box[:, 4]) & (image < spot_box[:, 5])).astype(float)
    z_on_spot = recorded_centroids(observations, on_spot)[:, 2] + plan.scan.array_range[0]
    z_error_spot_images = np.where(found, spots[matched, 2] - z_on_spot, np.nan)
    spot_images = np.where(found, bbox[matched, 5] - bbox[matched, 4], 0)

    # a spot is genuine if a reflection within 2 px has ≥ 1 % of its counts on the spot's images
    # (the images holding ≥ 1 % of a rocking curve are consecutive: first_significant … last)
    starts = observations.partial_offsets[:-1]
    significant = observations.partial_fractions >= 0.01
    first_significant = np.minimum.reduceat(np.where(significant, image, 1 << 30), starts)
    last_significant = np.maximum.reduceat(np.where(significant, image, -(1 << 30)), starts)
    spurious = np.ones(len(spots), bool)
    for k, neighbours in enumerate(cKDTree(truth[:, :2]).query_ball_point(spots[:, :2], MATCH_XY_PX)):
        neighbours = np.asarray(neighbours, int)
        overlap = (first_significant[neighbours] < bbox[k, 5]) & (last_significant[neighbours] >= bbox[k, 4])
        spurious[k] = not overlap.any()
    return CrystalComparison(
        summed_isig(observations, background), peak_image_isig(observations, background, without_spots),
        observations.d, truth[:, 2], observations.partiality, np.maximum(last_significant - first_significant + 1, 0), found, error,
        z_error_spot_images, spot_images, spurious, len(spots), found_spots.rejected_images)
