"""The true observation list of one crystal: where each reflection is, on which images, with
how many counts.

Model of one observation (one crossing of the Ewald sphere by reflection h):

- position: predicted by the rotation geometry (algorithms.md §1.7) with the crystal's
  setting A(z) at the observation's own z (linear in z between the image boundaries when the
  crystal drifts); the spot stays at that (x, y) on all the images it covers;
- partiality on image j (0-based, covering φ_j … φ_j+1):
  p_j = ½[erf(k(φ_j+1 − φ)) − erf(k(φ_j − φ))], k = |ζ|/(√2 σm), ζ = ê·unit(s1 × s0)
  (the Kabsch frame, §1.8); ``partiality`` = Σ_j p_j over the scan's images;
- counts: counts = I_true · scale_factor · decay · dynamical_factor · partiality / lp,
  with ``lp`` DIALS' L/P (§7.8), scale_factor = crystal scale · exp(−B_rel/(2d²)),
  decay = exp(−k_decay · max(z, 0)), dynamical_factor log-normal with mean 1.
  Hence integrated counts × lp / partiality = I_true · scale_factor · decay · dynamical_factor.
- spot shape: a 2-D Gaussian on the detector, the image of an isotropic Gaussian of angular
  width σb in the (e1, e2) plane of the Kabsch frame (covariance σb²·J·Jᵀ, J the local
  Jacobian of the detector position with respect to the two angles).

Reflections whose rocking curve only grazes the scan (centre outside it) are included with
their in-scan partiality; their z lies outside [0, n_images).
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
from scipy.special import erf

from algorithms.geometry.models import rotation_matrix
from algorithms.geometry.prediction import miller_indices_to_d_min, predict_rotation
from algorithms.simulate.spec import CrystalPlan, SimulationSpec
from algorithms.simulate.structure import StructureModel, is_systematically_absent

ROCKING_HALF_WIDTH_SIGMAS = 5.0  # images covered: φ ± 5σm/|ζ| (the tails beyond hold < 10⁻⁶)
MIN_PARTIALITY = 1e-3  # observations with less of their rocking curve inside the scan are dropped
MIN_ZETA = 1e-3  # closer to the rotation axis the rocking curve spans the whole scan


@dataclass
class Observations:
    """One row per observation; ragged per-image fractions in CSR form.

    The fractions of observation i are ``partial_fractions[partial_offsets[i]:partial_offsets[i+1]]``
    on images ``partial_first_image[i], partial_first_image[i]+1, …`` (1-based file numbers).
    """

    miller_index: np.ndarray  # (n, 3) int
    asu_miller_index: np.ndarray  # (n, 3) int
    entering: np.ndarray  # (n,) bool
    phi_rad: np.ndarray  # (n,) rotation angle at the centre of the rocking curve
    xyz_px: np.ndarray  # (n, 3) x, y (px), z (0-based array index)
    xy_mm: np.ndarray  # (n, 2)
    s1: np.ndarray  # (n, 3) Å⁻¹
    d: np.ndarray  # (n,) Å
    zeta: np.ndarray  # (n,)
    lp: np.ndarray  # (n,) DIALS' L/P
    intensity_true: np.ndarray  # (n,) kinematic intensity of the structure (before any scale)
    scale_factor: np.ndarray  # (n,) crystal scale × exp(−B_rel/(2d²))
    decay: np.ndarray  # (n,)
    dynamical_factor: np.ndarray  # (n,)
    partiality: np.ndarray  # (n,) fraction of the rocking curve inside the scan
    counts: np.ndarray  # (n,) expected recorded counts summed over the scan's images
    spot_covariance_px: np.ndarray  # (n, 3) xx, xy, yy of the spot's Gaussian on the detector
    partial_first_image: np.ndarray  # (n,) int, 1-based
    partial_offsets: np.ndarray  # (n+1,) int64
    partial_fractions: np.ndarray  # (m,) fraction of the whole rocking curve on each image

    def __len__(self) -> int:
        return len(self.d)

    def counts_per_image(self) -> np.ndarray:
        """Expected counts of each (observation, image) pair, aligned with partial_fractions."""
        lengths = np.diff(self.partial_offsets)
        full = self.counts / self.partiality
        return np.repeat(full, lengths) * self.partial_fractions

    def image_index_per_fraction(self) -> np.ndarray:
        """0-based image index (into the scan's images) of every entry of partial_fractions."""
        lengths = np.diff(self.partial_offsets)
        within = np.arange(self.partial_offsets[-1]) - np.repeat(self.partial_offsets[:-1], lengths)
        return np.repeat(self.partial_first_image - 1, lengths) + within

    def columns(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _wrap(angle: np.ndarray) -> np.ndarray:
    return (angle + np.pi) % (2.0 * np.pi) - np.pi


def _extended_scan(plan: CrystalPlan, spec: SimulationSpec):
    """The scan widened on both sides by as much as a rocking-curve tail can reach (capped so
    that the widened scan stays below a full turn)."""
    width = spec.oscillation_width
    margin_deg = ROCKING_HALF_WIDTH_SIGMAS * spec.sigma_m / 0.05
    margin_deg = min(margin_deg, max(0.0, (359.0 - spec.n_images * width) / 2.0))
    m = int(np.floor(margin_deg / width))
    scan = plan.scan.copy()
    scan.image_range = (1, spec.n_images + 2 * m)
    scan.oscillation = (plan.scan.oscillation[0] - m * width, width)
    scan.exposure_times = np.zeros(scan.num_images)
    scan.epochs = np.zeros(scan.num_images)
    return scan


class _DriftingLattice:
    """r₀(z) = F·A(z)·h for a set of reflections, A linear in z between the image boundaries
    (constant beyond the scan), and the Laue residual f(φ) = 2 s0'·R(ê,φ)·r₀(z(φ)) + |r₀|²,
    which is zero on the Ewald sphere (s0' = S⁻¹s0 in the axis frame)."""

    def __init__(self, plan: CrystalPlan, h: np.ndarray):
        gonio = plan.goniometer
        self.scan = plan.scan
        self.axis = gonio.rotation_axis
        self.s0_axis = np.linalg.solve(gonio.setting_rotation, plan.beam.s0)
        # (n, N+1, 3): each reflection's vector at every image boundary
        FA = gonio.fixed_rotation @ plan.crystal.A_at_scan_points
        self.points = np.ascontiguousarray((h @ FA.transpose(0, 2, 1)).transpose(1, 0, 2))

    def r0(self, rows: np.ndarray, phi: np.ndarray) -> np.ndarray:
        n_points = self.points.shape[1]
        z = np.clip(self.scan.array_index_from_angle(np.degrees(phi)), 0.0, n_points - 1.0)
        k0 = np.minimum(np.floor(z).astype(int), n_points - 2) if n_points > 1 else np.zeros(len(z), int)
        t = (z - k0)[..., None]
        return (1.0 - t) * self.points[rows, k0] + t * self.points[rows, np.minimum(k0 + 1, n_points - 1)]

    def residual(self, rows: np.ndarray, phi: np.ndarray) -> np.ndarray:
        r = self.r0(rows, phi)
        e = self.axis
        c, s = np.cos(phi)[..., None], np.sin(phi)[..., None]
        rotated = r * c + np.cross(e, r) * s + (r @ e)[..., None] * e * (1.0 - c)
        return 2.0 * rotated @ self.s0_axis + np.sum(r * r, axis=-1)


def _solve_with_drift(lattice: _DriftingLattice, phi_static: np.ndarray, r0_static: np.ndarray,
                      window_images: int = 20):
    """The crossing nearest to each static solution, with the crystal drifting.

    The Laue residual is evaluated at image boundaries around the static angle; the nearest
    interval where it changes sign in the same direction as the static crossing brackets the
    root, which bisection then finds to 10⁻¹² rad. A fixed-point iteration would diverge for
    reflections close to the rotation axis (small |ζ|), where a tiny drift moves φ a lot.
    Returns (phi, ok).
    """
    n = len(phi_static)
    rows = np.arange(n)
    scan = lattice.scan
    width = np.radians(scan.oscillation[1])
    # the static crossing's direction: f just before it has the sign of −f′ = −2 s0'·(ê × R r₀)
    e = lattice.axis
    c, s = np.cos(phi_static)[:, None], np.sin(phi_static)[:, None]
    r = r0_static
    rotated = r * c + np.cross(e, r) * s + (r @ e)[:, None] * e * (1.0 - c)
    before_sign = -np.sign(np.cross(e, rotated) @ lattice.s0_axis)
    z_static = scan.array_index_from_angle(np.degrees(phi_static))
    k = np.floor(z_static)[:, None] + np.arange(-window_images, window_images + 2)[None, :]
    phi_k = np.radians(scan.angle_from_array_index(k))
    f_k = lattice.residual(np.repeat(rows, k.shape[1]).reshape(k.shape), phi_k)
    sign_k = np.sign(f_k)
    crossing = (sign_k[:, :-1] == before_sign[:, None]) & (sign_k[:, 1:] == -before_sign[:, None])
    distance = np.abs(k[:, :-1] + 0.5 - z_static[:, None])
    distance[~crossing] = np.inf
    best = np.argmin(distance, axis=1)
    ok = np.isfinite(distance[rows, best])
    lo, hi = phi_k[rows, best], phi_k[rows, best + 1]
    for _ in range(int(np.ceil(np.log2(width / 1e-12)))):
        mid = 0.5 * (lo + hi)
        same_as_before = np.sign(lattice.residual(rows, mid)) == before_sign
        lo = np.where(same_as_before, mid, lo)
        hi = np.where(same_as_before, hi, mid)
    return 0.5 * (lo + hi), ok


def _may_reach_scan(static, plan: CrystalPlan, spec: SimulationSpec) -> np.ndarray:
    """Static predictions whose rocking curve can reach the scan's images and whose spot can
    reach the panel, with room for the drift (which moves spots by ≪ 10 px and angles by
    ≪ 1° except near the axis, where the rocking curve is wide anyway)."""
    nf, ns = plan.detector.image_size
    size = max(nf, ns)
    margin_px = 10.0 + size * (np.radians(abs(spec.drift_rotation_deg)) + abs(spec.drift_cell_percent) / 100.0)
    margin_deg = 1.0 + abs(spec.drift_rotation_deg)
    zeta = np.abs(kabsch_zeta(static.s1, plan.beam.s0, plan.goniometer.rotation_axis_lab))
    reach_deg = ROCKING_HALF_WIDTH_SIGMAS * spec.sigma_m / np.maximum(zeta, MIN_ZETA) + margin_deg
    z = plan.scan.array_index_from_angle(np.degrees(static.phi_rad)) - (plan.scan.image_range[0] - 1)
    outside_images = np.maximum(-z, z - plan.scan.num_images)
    x, y = static.xy_px[:, 0], static.xy_px[:, 1]
    with np.errstate(invalid="ignore"):
        near_panel = (x > -margin_px) & (x < nf + margin_px) & (y > -margin_px) & (y < ns + margin_px)
    return near_panel & (outside_images * spec.oscillation_width <= reach_deg)


def _predict(plan: CrystalPlan, spec: SimulationSpec, d_min: float):
    """Every crossing of the Ewald sphere near the scan, with each observation at its own A(z)."""
    gonio, beam, scan = plan.goniometer, plan.beam, plan.scan
    hkl = miller_indices_to_d_min(plan.crystal.A, d_min * 0.98)
    hkl = hkl[~is_systematically_absent(hkl, plan.crystal.space_group)]
    static = predict_rotation(hkl, plan.crystal.A, beam, plan.detector, gonio, _extended_scan(plan, spec),
                              require_on_panel=False)
    static = static.select(_may_reach_scan(static, plan, spec))
    h = static.miller_index.astype(float)
    lattice = _DriftingLattice(plan, h)
    drifts = not np.allclose(plan.crystal.A_at_scan_points, plan.crystal.A, rtol=0.0, atol=1e-15)
    if drifts:
        phi, ok = _solve_with_drift(lattice, static.phi_rad, h @ (gonio.fixed_rotation @ plan.crystal.A).T)
    else:
        phi, ok = static.phi_rad, np.ones(len(h), bool)
    z = scan.array_index_from_angle(np.degrees(phi))
    rows = np.arange(len(h))
    s0 = beam.s0
    S = gonio.setting_rotation
    s1 = s0 + np.einsum("ij,njk,nk->ni", S, rotation_matrix(gonio.rotation_axis, phi), lattice.r0(rows, phi))
    entering = (s1 @ np.cross(s0, S @ gonio.rotation_axis)) < 0
    xy_mm, front = plan.detector.ray_intersection_mm(s1)
    xy_px = plan.detector.mm_to_pixel(xy_mm)
    nf, ns = plan.detector.image_size
    with np.errstate(invalid="ignore"):
        on_panel = front & (xy_px[:, 0] >= 0) & (xy_px[:, 0] < nf) & (xy_px[:, 1] >= 0) & (xy_px[:, 1] < ns)
    d = 1.0 / np.linalg.norm(s1 - s0, axis=1)
    keep = ok & on_panel & (d >= d_min)
    return static.miller_index[keep], phi[keep], z[keep], s1[keep], entering[keep], xy_mm[keep], xy_px[keep], d[keep]


def kabsch_zeta(s1: np.ndarray, s0: np.ndarray, axis_lab: np.ndarray) -> np.ndarray:
    """ζ = ê·e1 with e1 = unit(s1 × s0)."""
    e1 = np.cross(s1, s0)
    e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
    return e1 @ axis_lab


def lorentz_polarisation(s1: np.ndarray, s0: np.ndarray, axis_lab: np.ndarray,
                         polarization_normal: np.ndarray, polarization_fraction: float) -> np.ndarray:
    """DIALS' lp = L/P: L = |s1·(ê × s0)|/(|s1||s0|), P = (1−2f)(1−(n̂·ŝ1)²) + f(1 + cos²2θ)."""
    n1, n0 = np.linalg.norm(s1, axis=1), np.linalg.norm(s0)
    L = np.abs(s1 @ np.cross(axis_lab, s0)) / (n1 * n0)
    u1 = s1 / n1[:, None]
    cos2t = u1 @ (s0 / n0)
    f = polarization_fraction
    P = (1.0 - 2.0 * f) * (1.0 - (u1 @ polarization_normal) ** 2) + f * (1.0 + cos2t**2)
    return L / P


def spot_covariance_px(s1: np.ndarray, s0: np.ndarray, xy_px: np.ndarray, detector, sigma_b_rad: float) -> np.ndarray:
    """(xx, xy, yy) covariance in pixels of a Gaussian of angular width σb around each s1."""
    e1 = np.cross(s1, s0)
    e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
    e2 = np.cross(s1, e1)
    e2 /= np.linalg.norm(e2, axis=1, keepdims=True)
    n1 = np.linalg.norm(s1, axis=1, keepdims=True)
    step = 1e-6  # rad; the map is smooth on this scale
    jac = []
    for e in (e1, e2):
        xy, _ = detector.ray_intersection_px(s1 + step * n1 * e)
        jac.append((xy - xy_px) / step)
    J = np.stack(jac, axis=2)  # (n, 2, 2): columns d(x, y)/dc1, d(x, y)/dc2
    C = sigma_b_rad**2 * np.einsum("nij,nkj->nik", J, J)
    return np.column_stack([C[:, 0, 0], C[:, 0, 1], C[:, 1, 1]])


def _image_fractions(phi: np.ndarray, zeta: np.ndarray, z: np.ndarray, plan: CrystalPlan, sigma_m_rad: float):
    """Ragged per-image fractions of the rocking curve over the scan's images."""
    n_images = plan.scan.num_images
    width_rad = np.radians(plan.scan.oscillation[1])
    half = ROCKING_HALF_WIDTH_SIGMAS * sigma_m_rad / np.abs(zeta) / width_rad
    lo = np.clip(np.floor(z - half), 0, n_images).astype(np.int64)
    hi = np.clip(np.ceil(z + half), 0, n_images).astype(np.int64)
    lengths = np.maximum(hi - lo, 0)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    owner = np.repeat(np.arange(len(phi)), lengths)
    image = lo[owner] + np.arange(offsets[-1]) - offsets[:-1][owner]  # 0-based
    phi_start = np.radians(plan.scan.angle_from_array_index(image))
    k = np.abs(zeta[owner]) / (np.sqrt(2.0) * sigma_m_rad)
    fractions = 0.5 * (erf(k * (phi_start + width_rad - phi[owner])) - erf(k * (phi_start - phi[owner])))
    partiality = np.bincount(owner, weights=fractions, minlength=len(phi))
    return lo + 1, offsets, fractions, partiality


def _select_ragged(first, offsets, fractions, keep):
    lengths = np.diff(offsets)[keep]
    new_offsets = np.concatenate([[0], np.cumsum(lengths)])
    entry_keep = np.repeat(keep, np.diff(offsets))
    return first[keep], new_offsets, fractions[entry_keep]


def simulate_observations(
    spec: SimulationSpec, plan: CrystalPlan, structure: StructureModel, rng: np.random.Generator
) -> Observations:
    """All observations of one crystal with their true intensities, partialities and counts."""
    s0 = plan.beam.s0
    d_min = spec.d_min or plan.detector.max_resolution(s0)
    hkl, phi, z, s1, entering, xy_mm, xy_px, d = _predict(plan, spec, d_min)
    axis_lab = plan.goniometer.rotation_axis_lab
    zeta = kabsch_zeta(s1, s0, axis_lab)
    keep = np.abs(zeta) >= MIN_ZETA
    hkl, phi, z, s1, entering, xy_mm, xy_px, d, zeta = (a[keep] for a in (hkl, phi, z, s1, entering, xy_mm, xy_px, d, zeta))
    sigma_m_rad = np.radians(spec.sigma_m)
    first, offsets, fractions, partiality = _image_fractions(phi, zeta, z, plan, sigma_m_rad)
    keep = partiality >= MIN_PARTIALITY
    first, offsets, fractions = _select_ragged(first, offsets, fractions, keep)
    hkl, phi, z, s1, entering, xy_mm, xy_px, d, zeta, partiality = (
        a[keep] for a in (hkl, phi, z, s1, entering, xy_mm, xy_px, d, zeta, partiality)
    )
    asu, intensity = structure.lookup(hkl)
    lp = lorentz_polarisation(s1, s0, axis_lab, plan.beam.polarization_normal, plan.beam.polarization_fraction)
    scale_factor = plan.scale * np.exp(-plan.relative_b / (2.0 * d * d))
    decay = np.exp(-plan.decay_per_image * np.maximum(z, 0.0))
    sigma = spec.dynamical_error
    dynamical = np.exp(sigma * rng.standard_normal(len(d)) - 0.5 * sigma * sigma) if sigma > 0 else np.ones(len(d))
    counts = intensity * scale_factor * decay * dynamical * partiality / lp
    covariance = spot_covariance_px(s1, s0, xy_px, plan.detector, np.radians(spec.sigma_b))
    return Observations(
        miller_index=hkl,
        asu_miller_index=asu,
        entering=entering,
        phi_rad=phi,
        xyz_px=np.column_stack([xy_px, z]),
        xy_mm=xy_mm,
        s1=s1,
        d=d,
        zeta=zeta,
        lp=lp,
        intensity_true=intensity,
        scale_factor=scale_factor,
        decay=decay,
        dynamical_factor=dynamical,
        partiality=partiality,
        counts=counts,
        spot_covariance_px=covariance,
        partial_first_image=first,
        partial_offsets=offsets,
        partial_fractions=fractions,
    )
