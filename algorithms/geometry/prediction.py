"""Rotation-diffraction prediction and its inverse (spot position → reciprocal-lattice point).

For a reciprocal-lattice vector r₀ = F·A·h in the φ-axis frame and s0' = S⁻¹·s0, the Laue
condition |s0' + R(ê,φ)·r₀| = |s0'| becomes P cos φ + Q sin φ = C with
P = s0'·r⊥, Q = s0'·(ê×r⊥), C = −|r₀|²/2 − s0'·r∥, whose two solutions are
φ = atan2(Q, P) ± arccos(C/√(P²+Q²)).  (Equivalent to XDS' rotation-angle formula, Kabsch 2010,
Acta Cryst. D66, 125–132; DIALS' ``RotationAngles``.)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from algorithms.geometry.models import Beam, Detector, Goniometer, Scan, rotation_matrix


def miller_indices_to_d_min(A: np.ndarray, d_min: float, d_max: float | None = None) -> np.ndarray:
    """All (h, k, l) ≠ 0 with d_min ≤ d (≤ d_max) for the setting matrix A, shape (n, 3) int."""
    M = np.linalg.inv(A)  # rows a, b, c
    hmax = np.floor(np.linalg.norm(M, axis=1) / d_min).astype(int)
    h, k, l = np.meshgrid(*(np.arange(-m, m + 1) for m in hmax), indexing="ij")
    hkl = np.stack([h.ravel(), k.ravel(), l.ravel()], axis=1)
    inv_d2 = np.sum((hkl @ A.T) ** 2, axis=1)
    keep = (inv_d2 > 0) & (inv_d2 <= 1.0 / d_min**2)
    if d_max is not None:
        keep &= inv_d2 >= 1.0 / d_max**2
    return hkl[keep]


def rotation_angles(r0: np.ndarray, s0: np.ndarray, axis: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The two angles (rad) at which r₀ (n, 3), rotated about the unit ``axis``, meets the
    Ewald sphere of ``s0`` (both in the same frame). Returns (phi1, phi2, ok)."""
    r0 = np.atleast_2d(r0)
    r_par = (r0 @ axis)[:, None] * axis
    r_perp = r0 - r_par
    P = r_perp @ s0
    Q = np.cross(axis, r_perp) @ s0
    C = -0.5 * np.sum(r0 * r0, axis=1) - r_par @ s0
    R = np.hypot(P, Q)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos_arg = C / R
    ok = (R > 0) & (np.abs(cos_arg) <= 1.0) & (np.sum(r0 * r0, axis=1) <= 4.0 * (s0 @ s0))
    base = np.arctan2(Q, P)
    delta = np.arccos(np.clip(cos_arg, -1.0, 1.0))
    return base + delta, base - delta, ok


def _wrap_into_scan(phi_rad: np.ndarray, scan: Scan) -> tuple[np.ndarray, np.ndarray]:
    """Bring angles into the scan's range by whole turns; return (phi, inside)."""
    lo_deg, hi_deg = sorted(scan.oscillation_range_deg)
    lo = np.radians(lo_deg)
    two_pi = 2.0 * np.pi
    phi = lo + np.mod(phi_rad - lo, two_pi)
    return phi, phi <= np.radians(hi_deg)


@dataclass
class Predictions:
    """Predicted rotation-diffraction observations, one row per (h, crossing)."""

    miller_index: np.ndarray  # (n, 3) int
    phi_rad: np.ndarray  # (n,)
    s1: np.ndarray  # (n, 3)
    entering: np.ndarray  # (n,) bool
    xy_mm: np.ndarray  # (n, 2)
    xy_px: np.ndarray  # (n, 2)
    z_px: np.ndarray  # (n,) 0-based array index
    source_row: np.ndarray  # (n,) index into the input hkl array

    def __len__(self) -> int:
        return len(self.phi_rad)

    def select(self, mask) -> "Predictions":
        return Predictions(**{k: v[mask] for k, v in self.__dict__.items()})

    @property
    def xyzcal_px(self) -> np.ndarray:
        return np.column_stack([self.xy_px, self.z_px])

    @property
    def xyzcal_mm(self) -> np.ndarray:
        return np.column_stack([self.xy_mm, self.phi_rad])


def predict_rotation(
    hkl: np.ndarray,
    A: np.ndarray,
    beam: Beam,
    detector: Detector,
    goniometer: Goniometer,
    scan: Scan,
    require_on_panel: bool = True,
) -> Predictions:
    """Predict every crossing of the Ewald sphere within the scan for a static crystal.

    Returns rows for each solution whose angle lies in the scan and whose diffracted ray hits
    the front of the detector plane (and, with ``require_on_panel``, the panel itself).
    """
    hkl = np.atleast_2d(np.asarray(hkl)).astype(int)
    F, S = goniometer.fixed_rotation, goniometer.setting_rotation
    axis = goniometer.rotation_axis
    s0 = beam.s0
    s0_axis_frame = np.linalg.solve(S, s0)
    r0 = hkl @ (F @ A).T
    phi1, phi2, ok = rotation_angles(r0, s0_axis_frame, axis)
    rows = np.concatenate([np.nonzero(ok)[0]] * 2)
    phis = np.concatenate([phi1[ok], phi2[ok]])
    phis, inside = _wrap_into_scan(phis, scan)
    rows, phis = rows[inside], phis[inside]
    rot = rotation_matrix(axis, phis)  # (n, 3, 3)
    r_lab = np.einsum("ij,njk,nk->ni", S, rot, r0[rows])
    s1 = s0 + r_lab
    entering = (s1 @ np.cross(s0, S @ axis)) < 0
    z = scan.array_index_from_angle(np.degrees(phis))
    return _on_detector(hkl, rows, phis, z, s1, entering, detector, require_on_panel)


def _on_detector(hkl, rows, phi, z, s1, entering, detector: Detector, require_on_panel: bool) -> Predictions:
    """The crossings whose rays hit the front of the detector plane (and, if asked, the panel),
    ordered by input row and angle."""
    xy_mm, front = detector.ray_intersection_mm(s1)
    xy_px = detector.mm_to_pixel(xy_mm)
    keep = front
    if require_on_panel:
        nf, ns = detector.image_size
        with np.errstate(invalid="ignore"):
            keep = keep & (xy_px[:, 0] >= 0) & (xy_px[:, 0] < nf) & (xy_px[:, 1] >= 0) & (xy_px[:, 1] < ns)
    order = np.lexsort((phi[keep], rows[keep]))
    sel = np.nonzero(keep)[0][order]
    return Predictions(
        miller_index=hkl[rows[sel]],
        phi_rad=phi[sel],
        s1=s1[sel],
        entering=entering[sel],
        xy_mm=xy_mm[sel],
        xy_px=xy_px[sel],
        z_px=z[sel],
        source_row=rows[sel],
    )


def reciprocal_lattice_points(
    xyz_px: np.ndarray, beam: Beam, detector: Detector, goniometer: Goniometer, scan: Scan
) -> np.ndarray:
    """Observed spots (x_px, y_px, z) → reciprocal-lattice points in the φ = 0 frame.

    rlp = F⁻¹ · R(ê, −φ) · S⁻¹ · (s1 − s0), so that rlp = A·h for an indexed spot.
    """
    xyz_px = np.atleast_2d(np.asarray(xyz_px, float))
    s0 = beam.s0
    s1 = detector.pixel_to_s1(xyz_px[:, :2], s0)
    phi = np.radians(scan.angle_from_array_index(xyz_px[:, 2]))
    S_inv = np.linalg.inv(goniometer.setting_rotation)
    F_inv = np.linalg.inv(goniometer.fixed_rotation)
    back = rotation_matrix(goniometer.rotation_axis, -phi)
    return np.einsum("ij,njk,kl,nl->ni", F_inv, back, S_inv, s1 - s0)


def predict_rotation_scan_varying(
    hkl: np.ndarray,
    A_at_scan_points: np.ndarray,
    beam: Beam,
    detector: Detector,
    goniometer: Goniometer,
    scan: Scan,
    require_on_panel: bool = True,
) -> Predictions:
    """Predict with a crystal model sampled at the scan's image boundaries (DIALS' scan-varying
    predictor): within frame j the lab vector moves linearly from r₁ = R(φ_j)A_j·h to
    r₂ = R(φ_{j+1})A_{j+1}·h and the crossing solves |s0 + r₁ + α(r₂ − r₁)|² = |s0|² for α ∈ [0, 1].
    """
    hkl = np.atleast_2d(np.asarray(hkl)).astype(int)
    A_sp = np.asarray(A_at_scan_points, float).reshape(-1, 3, 3)
    n_img = scan.num_images
    if len(A_sp) != n_img + 1:
        raise ValueError(f"need {n_img + 1} scan points for {n_img} images, got {len(A_sp)}")
    s0 = beam.s0
    s0_sq = s0 @ s0
    first = scan.image_range[0]
    phis = np.radians(scan.angle_from_image_index(np.arange(first, first + n_img + 1)))
    R = goniometer.rotation_matrix(phis) @ A_sp  # lab setting matrix at each boundary
    rows_out, alpha_out, frame_out, s1_out, entering_out = [], [], [], [], []
    r_prev = hkl @ R[0].T
    f_prev = np.sum((s0 + r_prev) ** 2, axis=1) - s0_sq
    for j in range(n_img):
        r_next = hkl @ R[j + 1].T
        f_next = np.sum((s0 + r_next) ** 2, axis=1) - s0_sq
        cross = np.nonzero(np.sign(f_prev) != np.sign(f_next))[0]
        if len(cross):
            r1, dr = r_prev[cross], r_next[cross] - r_prev[cross]
            # |s0 + r1 + α dr|² − |s0|² = a α² + b α + c
            a = np.sum(dr * dr, axis=1)
            b = 2.0 * np.sum((s0 + r1) * dr, axis=1)
            c = f_prev[cross]
            disc = np.sqrt(np.maximum(b * b - 4 * a * c, 0.0))
            with np.errstate(divide="ignore", invalid="ignore"):
                roots = np.stack([(-b - disc) / (2 * a), (-b + disc) / (2 * a)], axis=1)
            ok = (roots >= 0) & (roots <= 1)
            alpha = np.where(ok[:, 0], roots[:, 0], roots[:, 1])
            good = ok.any(axis=1)
            rows_out.append(cross[good])
            alpha_out.append(alpha[good])
            frame_out.append(np.full(good.sum(), j))
            s1_out.append(s0 + r1[good] + alpha[good, None] * dr[good])
            entering_out.append(f_prev[cross][good] > 0)  # starts outside the sphere
        r_prev, f_prev = r_next, f_next
    if rows_out:
        rows, alpha, frame = np.concatenate(rows_out), np.concatenate(alpha_out), np.concatenate(frame_out)
        s1, entering = np.concatenate(s1_out), np.concatenate(entering_out)
    else:
        rows, alpha, frame = np.zeros(0, int), np.zeros(0), np.zeros(0, int)
        s1, entering = np.zeros((0, 3)), np.zeros(0, bool)
    z = scan.array_range[0] + frame + alpha
    phi = np.radians(scan.angle_from_array_index(z))
    return _on_detector(hkl, rows, phi, z, s1, entering, detector, require_on_panel)
