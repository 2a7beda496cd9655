"""Profile/summation intensity combination (DIALS intensity_choice = combine).

w = 1/(1 + (I_sum/Imid)³) (w = 1 for I_sum ≤ 0), I = w·I_prf + (1 − w)·I_sum,
σ² = w·σ²_prf + (1 − w)·σ²_sum. Candidates: profile only (Imid = 0), summation only (Imid = 1),
⟨I⟩ = max(10, mean I_sum), then I_max/10, I_max/100, … down to the first value below ⟨I⟩.
The candidate whose scaled data (current g) give the lowest Rmeas is chosen. Observations without a
valid profile intensity keep their summation value in every candidate.
"""
from __future__ import annotations

import numpy as np

from algorithms.merging.cc_half import sigma_tau_cc_half
from algorithms.scaling.data import CorrectedIntensities
from algorithms.scaling.grouping import r_meas

PROFILE_ONLY = 0.0
SUM_ONLY = 1.0


def imid_candidates(i_sum: np.ndarray) -> list[float]:
    average = max(10.0, float(np.mean(i_sum)))
    candidates = [PROFILE_ONLY, SUM_ONLY, average]
    value = float(np.max(i_sum))
    while value > average:
        value /= 10.0
        candidates.append(value)
    return candidates


def combine_intensities(c: CorrectedIntensities, imid: float) -> tuple[np.ndarray, np.ndarray]:
    has_prf = np.isfinite(c.intensity_prf) & (np.nan_to_num(c.variance_prf) > 0)
    if imid == PROFILE_ONLY:
        w = np.ones(len(c.intensity_sum))
    elif imid == SUM_ONLY:
        w = np.zeros(len(c.intensity_sum))
    else:
        ratio = np.maximum(c.intensity_sum, 0.0) / imid
        w = np.where(c.intensity_sum > 0, 1.0 / (1.0 + ratio**3), 1.0)
    w = np.where(has_prf, w, 0.0)
    i_prf = np.where(has_prf, c.intensity_prf, 0.0)
    v_prf = np.where(has_prf, c.variance_prf, 0.0)
    return w * i_prf + (1 - w) * c.intensity_sum, w * v_prf + (1 - w) * c.variance_sum


def imid_label(imid: float) -> str:
    if imid == PROFILE_ONLY:
        return "prf only"
    if imid == SUM_ONLY:
        return "sum only"
    return f"Imid = {imid:.2f}"


def choose_combination(c: CorrectedIntensities, group: np.ndarray, n_groups: int, g: np.ndarray,
                       active: np.ndarray) -> tuple[float, list[tuple[str, float, float]]]:
    """Best Imid by lowest Rmeas of scaled data, and the table (label, CC½ σ-τ, Rmeas)."""
    has_prf = np.isfinite(c.intensity_prf) & (np.nan_to_num(c.variance_prf) > 0)
    if not has_prf[active].any():
        return SUM_ONLY, []
    table = []
    best, best_rmeas = SUM_ONLY, np.inf
    for imid in imid_candidates(c.intensity_sum[active]):
        intensity, variance = combine_intensities(c, imid)
        usable = active & (variance > 0)
        rm = r_meas(group, n_groups, intensity / g, variance / g**2, usable)
        idx = np.nonzero(usable)[0]
        _, cc = sigma_tau_cc_half(group[idx], (intensity / g)[idx], np.zeros(n_groups, dtype=np.int64), 1)
        table.append((imid_label(imid), cc, rm))
        if rm < best_rmeas:
            best, best_rmeas = imid, rm
    return best, table
