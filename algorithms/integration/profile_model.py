"""Estimating the Gaussian profile model (σb: beam divergence, σm: reflecting range) from
strong indexed spots, as DIALS' ``gaussian_rs`` model does (Kabsch 2010, Acta Cryst. D66,
133–144, §3; DIALS' "extended" σm maximum-likelihood estimator).

σb: for each spot, Var = Σ c α² / (Σ c − 1) over its strong pixels, α the angle between the
pixel centre's beam direction and the spot's *predicted* s1; σb = sqrt(mean Var) over the spots
whose Var is not a gross outlier (ewald: more than 6 robust σ above the median).

σm: each spot's counts per frame n_f are modelled as a Gaussian rocking curve of width σm
(in the rotation angle scaled by |ζ|); maximise Σ_spots [Σ_f n_f ln z_f − K ln Σ_f z_f +
ln Σ_f z_f] over σ with z_f = ½[erf(e⁺_f/σ) − erf(e⁻_f/σ)], e±_f = (τ_f ± Δφ/2)|ζ|/√2.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import erf

from algorithms.errors import DataError


def estimate_sigma_b_deg(
    pixel_s1: np.ndarray, counts: np.ndarray, spot_of_pixel: np.ndarray, predicted_s1: np.ndarray
) -> float:
    """σb (degrees) from strong pixels.

    ``pixel_s1`` (m, 3): beam vector of each strong pixel's centre; ``counts`` (m,); raw counts;
    ``spot_of_pixel`` (m,): index into ``predicted_s1`` (k, 3).
    """
    s_pred = predicted_s1[spot_of_pixel]
    cosang = np.sum(pixel_s1 * s_pred, axis=1) / (np.linalg.norm(pixel_s1, axis=1) * np.linalg.norm(s_pred, axis=1))
    alpha = np.arccos(np.clip(cosang, -1.0, 1.0))
    k = len(predicted_s1)
    sum_c = np.bincount(spot_of_pixel, weights=counts, minlength=k)
    sum_ca2 = np.bincount(spot_of_pixel, weights=counts * alpha**2, minlength=k)
    ok = sum_c > 1
    if not ok.any():
        raise DataError("no strong spot has enough counts to estimate sigma_b; give profile.gaussian_rs.parameters.sigma_b=")
    var = sum_ca2[ok] / (sum_c[ok] - 1)
    # DIALS takes the plain mean; one "spot" that is really a streak or a scrambled image makes
    # that mean ten times too large, so spots whose spread is far out of the crowd are left out
    median = np.median(var)
    spread = 1.4826 * np.median(np.abs(var - median))
    typical = var <= median + 6 * spread if spread > 0 else np.ones(len(var), bool)
    return float(np.degrees(np.sqrt(np.mean(var[typical]))))


def estimate_sigma_m_deg(
    frame_counts: np.ndarray,
    frame_tau_deg: np.ndarray,
    spot_of_frame: np.ndarray,
    zeta: np.ndarray,
    oscillation_width_deg: float,
) -> float:
    """σm (degrees) by DIALS' extended maximum-likelihood estimator.

    One entry per (spot, frame) with counts > 0: ``frame_counts`` n_f, ``frame_tau_deg`` the
    frame centre minus the spot's predicted φ, ``spot_of_frame`` the spot index into ``zeta``.
    """
    w = np.radians(oscillation_width_deg)
    tau = np.radians(frame_tau_deg)
    z_abs = np.abs(zeta[spot_of_frame])
    e_plus = (tau + w / 2) * z_abs / np.sqrt(2)
    e_minus = (tau - w / 2) * z_abs / np.sqrt(2)
    n_spots = len(zeta)
    K = np.bincount(spot_of_frame, weights=frame_counts, minlength=n_spots)
    has = K > 0
    if has.sum() < 3:
        raise DataError("too few strong spots spanning frames to estimate sigma_m; give profile.gaussian_rs.parameters.sigma_m=")

    def negative_log_likelihood(log_sigma: float) -> float:
        sigma = np.exp(log_sigma)
        zf = np.maximum(0.5 * (erf(e_plus / sigma) - erf(e_minus / sigma)), 1e-10)
        sum_z = np.bincount(spot_of_frame, weights=zf, minlength=n_spots)[has]
        term = np.bincount(spot_of_frame, weights=frame_counts * np.log(zf), minlength=n_spots)[has]
        return -float(np.sum(term - K[has] * np.log(sum_z) + np.log(sum_z)))

    result = minimize_scalar(negative_log_likelihood, bounds=(np.log(np.radians(0.001)), np.log(np.radians(20.0))),
                             method="bounded", options={"xatol": 1e-4})
    return float(np.degrees(np.exp(result.x)))


def shoebox_voxel_coordinates(bbox: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For flat z-major shoebox voxels: (row, z, y, x) of every voxel, from the boxes and offsets."""
    bbox = np.asarray(bbox, dtype=np.int64)
    ny, nx = bbox[:, 3] - bbox[:, 2], bbox[:, 1] - bbox[:, 0]
    sizes = np.diff(offsets)
    row = np.repeat(np.arange(len(bbox)), sizes)
    local = np.arange(offsets[-1]) - np.repeat(offsets[:-1], sizes)
    nxr, nyr = nx[row], ny[row]
    x = bbox[row, 0] + local % nxr
    y = bbox[row, 2] + (local // nxr) % nyr
    z = bbox[row, 4] + local // (nxr * nyr)
    return row, z, y, x


def estimate_profile_model(
    bbox: np.ndarray, offsets: np.ndarray, data: np.ndarray, mask: np.ndarray,
    predicted_s1: np.ndarray, phi_calc_rad: np.ndarray, detector, beam, goniometer, scan, min_zeta: float = 0.05,
) -> dict:
    """σb and σm (degrees) from the strong-pixel shoeboxes of indexed spots (flat z-major
    ``data``/``mask`` with ``offsets``), using their predicted s1 and φ.

    Returns {"sigma_b_deg", "sigma_m_deg", "n_used", "n_total"}; spots with |ζ| < ``min_zeta``
    are left out, as DIALS does.
    """
    from algorithms.integration.kabsch import kabsch_frame

    _, _, _, zeta = kabsch_frame(predicted_s1, beam.s0, goniometer.rotation_axis_lab)
    use = np.abs(zeta) >= min_zeta
    row, z, y, x = shoebox_voxel_coordinates(bbox, offsets)
    strong = (np.asarray(mask).astype(np.int64) & (4 | 8)) != 0
    keep = strong & use[row]
    row, z, y, x, counts = row[keep], z[keep], y[keep], x[keep], np.asarray(data, float)[keep]
    pixel_s1 = detector.pixel_to_s1(np.column_stack([x + 0.5, y + 0.5]), beam.s0)
    sigma_b = estimate_sigma_b_deg(pixel_s1, counts, row, predicted_s1)
    # per (spot, frame) counts for σm
    n_rows = len(bbox)
    z_min = int(z.min()) if len(z) else 0
    key = row * (int(z.max()) - z_min + 1 if len(z) else 1) + (z - z_min)
    unique_key, inverse = np.unique(key, return_inverse=True)
    frame_counts = np.bincount(inverse, weights=counts)
    span = int(z.max()) - z_min + 1 if len(z) else 1
    frame_row = unique_key // span
    frame_z = unique_key % span + z_min
    positive = frame_counts > 0
    phi_mid = scan.angle_from_array_index(frame_z[positive] + 0.5)
    tau = phi_mid - np.degrees(phi_calc_rad[frame_row[positive]])
    sigma_m = estimate_sigma_m_deg(frame_counts[positive], tau, frame_row[positive], zeta, abs(scan.oscillation[1]))
    return {"sigma_b_deg": sigma_b, "sigma_m_deg": sigma_m, "n_used": int(use.sum()), "n_total": int(n_rows)}
