"""French & Wilson (1978, Acta Cryst. A34:517) posterior estimates of F from merged intensities.

With a Wilson prior of mean Σ and a Gaussian likelihood N(I; J, σ²), the posterior of the true
intensity J in units of σ is, with x = J/σ ≥ 0:
    acentric  p(x) ∝ exp(−(x − h)²/2),          h = I/σ − σ/Σ
    centric   p(x) ∝ x^(−1/2) exp(−(x − h)²/2), h = I/σ − σ/(2Σ)
The 1978 tables tabulate ⟨J⟩/σ, σ_J/σ, ⟨F⟩/√σ and σ_F/√σ of this posterior on h = −4.0, −3.9, …
(acentric up to 3.0, centric up to 4.0). They are not typed in here but computed by quadrature in
u = √x (acentric density ∝ u·exp(−(u² − h)²/2), centric ∝ exp(−(u² − h)²/2)) and then linearly
interpolated as cctbx does; beyond the tables cctbx's large-h forms are used. Σ comes from resolution
bins (60, fewer until every non-empty bin holds ≥ 40 reflections), linearly interpolated in d between
bin centres, times the epsilon factor. Rejected: I/σ < −3.7 or h < −4, and σ ≤ 0 unless I > 0 with σ = 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import gemmi
import numpy as np

TABLE_H_MIN = -4.0
TABLE_H_STEP = 0.1
ACENTRIC_H_MAX = 3.0
CENTRIC_H_MAX = 4.0
MIN_I_OVER_SIGMA = -3.7
MAX_BINS = 60
MIN_BIN_SIZE = 40


def posterior_moments(h: np.ndarray, centric: bool, n_points: int = 40001) -> np.ndarray:
    """(len(h), 4) array of ⟨J⟩/σ, σ_J/σ, ⟨F⟩/√σ, σ_F/√σ by quadrature of the posterior."""
    h = np.atleast_1d(np.asarray(h, float))
    u_max = np.sqrt(np.maximum(h, 0.0) + 14.0)
    u = np.linspace(0.0, 1.0, n_points)[None, :] * u_max[:, None]
    log_density = -0.5 * (u * u - h[:, None]) ** 2
    density = np.exp(log_density - log_density.max(axis=1, keepdims=True))
    if not centric:
        density = density * u
    norm = np.trapezoid(density, u, axis=1)
    moment = lambda power: np.trapezoid(density * u ** power, u, axis=1) / norm
    m1, m2, m4 = moment(1), moment(2), moment(4)
    return np.stack([m2, np.sqrt(np.maximum(m4 - m2 * m2, 0)), m1, np.sqrt(np.maximum(m2 - m1 * m1, 0))], axis=1)


@lru_cache(maxsize=2)
def french_wilson_table(centric: bool) -> tuple[np.ndarray, np.ndarray]:
    """Grid of h and the four tabulated posterior quantities (the 1978 tables, recomputed)."""
    h_max = CENTRIC_H_MAX if centric else ACENTRIC_H_MAX
    grid = TABLE_H_MIN + TABLE_H_STEP * np.arange(int(round((h_max - TABLE_H_MIN) / TABLE_H_STEP)) + 1)
    return grid, posterior_moments(grid, centric)


@dataclass
class FrenchWilsonResult:
    f: np.ndarray
    sigma_f: np.ndarray
    j: np.ndarray  # posterior mean intensity
    sigma_j: np.ndarray
    accepted: np.ndarray  # False where the reflection is rejected (no F)
    mean_intensity: np.ndarray  # Σ used for each reflection


def _interpolate_table(h: np.ndarray, centric: bool) -> np.ndarray:
    grid, values = french_wilson_table(centric)
    return np.stack([np.interp(h, grid, values[:, k]) for k in range(4)], axis=1)


def expected_intensity(d: np.ndarray, intensity: np.ndarray, epsilon: np.ndarray) -> np.ndarray:
    """Σ per reflection: binned ⟨I/ε⟩ interpolated in d between bin centres, times ε."""
    s3 = d ** -3.0
    lo, hi = s3.min(), s3.max()
    n_bins = MAX_BINS
    while True:
        edges = np.linspace(lo, hi, n_bins + 1)
        bins = np.clip(np.searchsorted(edges, s3, side="right") - 1, 0, n_bins - 1)
        counts = np.bincount(bins, minlength=n_bins)
        if n_bins == 1 or np.all((counts == 0) | (counts >= MIN_BIN_SIZE)):
            break
        n_bins -= 1
    filled = counts > 0
    means = np.bincount(bins, intensity / epsilon, n_bins)[filled] / counts[filled]
    d_edges = edges ** (-1.0 / 3.0)
    centres = 0.5 * (d_edges[:-1] + d_edges[1:])[filled]
    order = np.argsort(centres)
    interpolated = np.interp(d, centres[order], means[order])
    floor = 1e-6 * max(np.abs(means).max(), 1e-30)
    return np.maximum(interpolated, floor) * epsilon


def french_wilson(miller_index: np.ndarray, intensity: np.ndarray, sigma: np.ndarray,
                  unit_cell: gemmi.UnitCell, space_group: gemmi.SpaceGroup) -> FrenchWilsonResult:
    """F, σ_F (and posterior J, σ_J) for merged intensities, ASU indices in ``miller_index``."""
    hkl = np.asarray(miller_index, dtype=np.int32).reshape(-1, 3)
    intensity = np.asarray(intensity, float)
    sigma = np.asarray(sigma, float)
    ops = space_group.operations()
    centric = np.asarray(ops.centric_flag_array(hkl), dtype=bool)
    epsilon = np.asarray(ops.epsilon_factor_without_centering_array(hkl), float)
    d = np.asarray(unit_cell.calculate_d_array(hkl))
    n = len(intensity)
    f, sig_f, j, sig_j = (np.full(n, np.nan) for _ in range(4))
    mean_intensity = expected_intensity(d, intensity, epsilon) if n else np.zeros(0)

    positive_sigma = sigma > 0
    exact = (sigma == 0) & (intensity > 0)
    f[exact], sig_f[exact], j[exact], sig_j[exact] = np.sqrt(intensity[exact]), 0.0, intensity[exact], 0.0
    safe_sigma = np.where(positive_sigma, sigma, 1.0)
    i_over_sigma = intensity / safe_sigma
    h = i_over_sigma - safe_sigma / (np.where(centric, 2.0, 1.0) * mean_intensity)
    usable = positive_sigma & (i_over_sigma >= MIN_I_OVER_SIGMA) & (h >= TABLE_H_MIN)
    root_sigma = np.sqrt(safe_sigma)

    for is_centric, h_max in ((False, ACENTRIC_H_MAX), (True, CENTRIC_H_MAX)):
        kind = usable & (centric == is_centric)
        tabulated = kind & (h < h_max)
        values = _interpolate_table(h[tabulated], is_centric)
        s, rs = safe_sigma[tabulated], root_sigma[tabulated]
        j[tabulated], sig_j[tabulated] = values[:, 0] * s, values[:, 1] * s
        f[tabulated], sig_f[tabulated] = values[:, 2] * rs, values[:, 3] * rs
        large = kind & (h >= h_max)
        hl, s, rs = h[large], safe_sigma[large], root_sigma[large]
        j[large], sig_j[large] = hl * s, s
        if is_centric:
            f[large] = rs * np.sqrt(hl) * (1 - 3 / (8 * hl**2) - 87 / (128 * hl**4) - 2889 / (1024 * hl**6))
            sig_f[large] = rs * np.sqrt(hl * (1 / (4 * hl**2) + 15 / (32 * hl**4) + 273 / (128 * hl**6)))
        else:
            f[large] = np.sqrt(hl * s)
            sig_f[large] = s / (2 * f[large])
    accepted = usable | exact
    return FrenchWilsonResult(f=f, sigma_f=sig_f, j=j, sigma_j=sig_j, accepted=accepted, mean_intensity=mean_intensity)


def merge_bijvoet_amplitudes(f_plus: np.ndarray, sigma_plus: np.ndarray, f_minus: np.ndarray,
                             sigma_minus: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """F, σ_F of a reflection from its mates' F(+), F(−) (NaN = absent), as dials.merge writes them.

    F is the 1/σ²-weighted mean; σ_F = max(1/sqrt(Σw), |F(+) − F(−)|/2) — cctbx's merging of
    amplitudes uses the larger of the counting error and the internal spread (the standard error of
    the unweighted mean, |ΔF|/2 for a pair); checked against a DIALS-written merged.mtz. A mate with
    σ_F = 0 (an exactly known F) is taken as it is."""
    values = np.stack([f_plus, f_minus])
    sigmas = np.stack([sigma_plus, sigma_minus])
    present = np.isfinite(values) & np.isfinite(sigmas)
    exact = present & (sigmas == 0)
    weight = np.where(present & ~exact, 1.0 / np.where(present & ~exact, sigmas, 1.0) ** 2, 0.0)
    sum_w = weight.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        f = np.where(sum_w > 0, (weight * np.nan_to_num(values)).sum(axis=0) / sum_w, np.nan)
        sigma = np.where(sum_w > 0, 1.0 / np.sqrt(sum_w), np.nan)
    pair = present.all(axis=0)
    sigma = np.where(pair, np.maximum(sigma, 0.5 * np.abs(np.nan_to_num(values[0]) - np.nan_to_num(values[1]))), sigma)
    any_exact = exact.any(axis=0)
    f = np.where(any_exact, np.nanmax(np.where(exact, values, -np.inf), axis=0), f)
    sigma = np.where(any_exact, 0.0, sigma)
    return f, sigma
