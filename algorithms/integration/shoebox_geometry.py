"""Shoebox extents from the Gaussian profile model (DIALS' ``gaussian_rs`` bounding boxes).

In (x, y) the box holds the four beam directions at (c1, c2) = (±δb′, ±δb′) of the Kabsch frame,
δb′ = n_sigma·σb·sigma_b_multiplier; in z it spans φ ± n_sigma·σm/|ζ|, clamped to the scan.
"""
from __future__ import annotations

import numpy as np

from algorithms.geometry.models import Detector, Scan


def beam_vectors_at(s1: np.ndarray, e1: np.ndarray, e2: np.ndarray, c1: float | np.ndarray, c2: float | np.ndarray) -> np.ndarray:
    """Beam directions s′ (|s′| = |s1|) at Kabsch coordinates (c1, c2) around each s1."""
    n1 = np.linalg.norm(s1, axis=1, keepdims=True)
    p = n1 * (np.asarray(c1)[..., None] * e1 + np.asarray(c2)[..., None] * e2)
    t = np.sqrt(np.maximum(n1**2 - np.sum(p * p, axis=-1, keepdims=True), 0.0))
    return p + t * s1 / n1


def compute_bboxes(
    s1: np.ndarray,
    phi_rad: np.ndarray,
    e1: np.ndarray,
    e2: np.ndarray,
    zeta: np.ndarray,
    detector: Detector,
    scan: Scan,
    sigma_b_deg: float,
    sigma_m_deg: float,
    n_sigma: float = 3.0,
    sigma_b_multiplier: float = 2.0,
) -> np.ndarray:
    """Bounding boxes (n, 6) int32 as x0, x1, y0, y1, z0, z1 (half-open, z 0-based)."""
    delta_b = np.radians(n_sigma * sigma_b_deg * sigma_b_multiplier)
    corners = []
    for sx, sy in ((-1, -1), (1, -1), (-1, 1), (1, 1)):
        xy, _ = detector.ray_intersection_px(beam_vectors_at(s1, e1, e2, sx * delta_b, sy * delta_b))
        corners.append(xy)
    corners = np.stack(corners)  # (4, n, 2)
    x0 = np.floor(corners[..., 0].min(axis=0))
    x1 = np.ceil(corners[..., 0].max(axis=0))
    y0 = np.floor(corners[..., 1].min(axis=0))
    y1 = np.ceil(corners[..., 1].max(axis=0))
    delta_m = np.radians(n_sigma * sigma_m_deg)
    with np.errstate(divide="ignore"):
        half_width = delta_m / np.abs(zeta)
    za = scan.array_index_from_angle(np.degrees(phi_rad - half_width))
    zb = scan.array_index_from_angle(np.degrees(phi_rad + half_width))
    lo_scan, hi_scan = scan.array_range
    z0 = np.clip(np.floor(np.minimum(za, zb)), lo_scan, hi_scan - 1)
    z1 = np.clip(np.ceil(np.maximum(za, zb)), z0 + 1, hi_scan)
    return np.column_stack([x0, x1, y0, y1, z0, z1]).astype(np.int32)


def partiality(phi_rad: np.ndarray, zeta: np.ndarray, bbox: np.ndarray, scan: Scan, sigma_m_deg: float) -> np.ndarray:
    """Fraction of the Gaussian rocking curve inside the box's z range:
    ½[erf(k(φ_b − φ)) − erf(k(φ_a − φ))], k = |ζ|/(√2 σm)."""
    from scipy.special import erf

    k = np.abs(zeta) / (np.sqrt(2.0) * np.radians(sigma_m_deg))
    phi_a = np.radians(scan.angle_from_array_index(bbox[:, 4]))
    phi_b = np.radians(scan.angle_from_array_index(bbox[:, 5]))
    lo, hi = np.minimum(phi_a, phi_b), np.maximum(phi_a, phi_b)
    return 0.5 * (erf(k * (hi - phi_rad)) - erf(k * (lo - phi_rad)))
