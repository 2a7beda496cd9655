"""The radial shape of each image's background about the direct beam, for the GLM background
model to scale rather than to re-derive from a few dozen voxels.

Electron diffraction images carry a steep peak of inelastically scattered electrons around the
direct beam (falling roughly as a power of the scattering angle; Egerton 2011, *Electron
Energy-Loss Spectroscopy in the Electron Microscope*, ch. 3), on which reflections of 20–50 Å
sit within a few dozen pixels of the beam. A log-linear model over a shoebox there cannot
follow a curvature that changes the background by a factor of two across the box; it leaves
tens of thousands of counts in a reflection. XDS meets the same problem by building a background
image from the data (INIT's BKGINIT.cbf; Kabsch 2010). Here each image's background is measured
as sigma-clipped means over rings about the beam centre (spots are rare and bright, so clipping
removes them) and the GLM fits μ = shape(x, y) · exp(β·u) in every shoebox: far from the beam the
shape is flat and the model is DIALS' own; near it the shape carries the curvature.

Rings are 1 px wide out to :data:`CORE_RADIUS_PX` and widen in proportion to the radius beyond
(6.25 % of it), so that each holds enough pixels for a precise mean wherever the background is
flat; the shape at a pixel interpolates linearly between ring centres.
"""
from __future__ import annotations

import math

import numba
import numpy as np

CORE_RADIUS_PX = 16.0
CLIP_SIGMAS = 3.0
CLIP_ITERATIONS = 3
ROOT_TABLE_STEPS = 8  # samples of √(background shape) per ring: linear between them to ~1e-4


def ring_coordinate(image_shape: tuple[int, int], beam_centre_px: tuple[float, float]) -> np.ndarray:
    """Each pixel centre's ring coordinate u (float32, (n_slow, n_fast)): u = r for radii r
    below :data:`CORE_RADIUS_PX`, r₀·(1 + ln(r/r₀)) beyond; ring k holds k ≤ u < k + 1."""
    ny, nx = image_shape
    y, x = np.ogrid[:ny, :nx]
    r = np.hypot(x + 0.5 - beam_centre_px[0], y + 0.5 - beam_centre_px[1])
    r0 = CORE_RADIUS_PX
    u = np.where(r < r0, r, r0 * (1.0 + np.log(np.maximum(r, r0) / r0)))
    return u.astype(np.float32)


@numba.njit(cache=True, nogil=True)
def _clipped_ring_means(frame, valid, claimed, ring, n_rings, trusted_lo, trusted_hi, means):
    """Sigma-clipped mean counts per ring of one frame into ``means`` (NaN for empty rings) over
    the valid pixels no reflection claims: each pass keeps pixels below
    mean + CLIP_SIGMAS·√max(mean, 1) of the previous pass."""
    ny, nx = frame.shape
    sums = np.zeros(n_rings)
    counts = np.zeros(n_rings)
    limit = np.full(n_rings, np.inf)
    for _ in range(CLIP_ITERATIONS):
        sums[:] = 0.0
        counts[:] = 0.0
        for y in range(ny):
            for x in range(nx):
                v = frame[y, x]
                k = ring[y, x]
                if valid[y, x] and claimed[y, x] == 0 and trusted_lo < v < trusted_hi and v <= limit[k]:
                    sums[k] += v
                    counts[k] += 1.0
        for k in range(n_rings):
            if counts[k] > 0:
                means[k] = sums[k] / counts[k]
                limit[k] = means[k] + CLIP_SIGMAS * math.sqrt(max(means[k], 1.0))
            else:
                means[k] = np.nan


def radial_background_profiles(images: np.ndarray, pixel_valid: np.ndarray, ring_u: np.ndarray,
                               trusted_range: tuple[float, float], claimed: np.ndarray) -> np.ndarray:
    """The background of each frame of ``images`` (nz, n_slow, n_fast) as a function of the ring
    coordinate ``ring_u`` (:func:`ring_coordinate`): (nz, n_rings) sigma-clipped means over the
    valid pixels of each ring that no predicted reflection claims (``claimed``, per voxel),
    empty rings interpolated from their measured neighbours, floored at a thousandth of the frame's
    largest so that the shape is positive everywhere. Each frame's profile depends on that
    frame alone (results do not depend on how images are chunked)."""
    ring = ring_u.astype(np.int32)
    n_rings = int(ring.max()) + 1
    profiles = np.empty((len(images), n_rings))
    for z, frame in enumerate(images):
        _clipped_ring_means(frame, pixel_valid, claimed[z], ring, n_rings, float(trusted_range[0]),
                            float(trusted_range[1]), profiles[z])
        measured = np.isfinite(profiles[z])
        if not measured.any():
            profiles[z] = 1.0
            continue
        known = np.nonzero(measured)[0]
        profiles[z] = np.interp(np.arange(n_rings), known, profiles[z][known])
        profiles[z] = np.maximum(profiles[z], 1e-3 * max(profiles[z].max(), 1e-3))
    return profiles


def root_shape_tables(log_ring_profiles: np.ndarray) -> np.ndarray:
    """√S tabulated every 1/ROOT_TABLE_STEPS of the ring coordinate, (nz, steps·n_rings + 1),
    from ln S at the ring centres (linear in between: in ln r beyond the core, so exact for a
    power-law fall-off); the kernel interpolates the table, with no exp per voxel."""
    n_rings = log_ring_profiles.shape[1]
    u = np.arange(ROOT_TABLE_STEPS * n_rings + 1) / ROOT_TABLE_STEPS
    centres = np.arange(n_rings) + 0.5
    return np.exp(0.5 * np.array([np.interp(u, centres, p) for p in log_ring_profiles]))
