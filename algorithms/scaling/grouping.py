"""Small vectorised helpers over symmetry groups (np.bincount; no loops over reflections)."""
from __future__ import annotations

import numpy as np


def weighted_group_means(group: np.ndarray, n_groups: int, intensity: np.ndarray, variance: np.ndarray,
                         mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """1/σ²-weighted mean, Σw and count per group over masked observations."""
    w = np.where(mask, 1.0 / np.where(mask, variance, 1.0), 0.0)
    sum_w = np.bincount(group, w, n_groups)
    mean = np.divide(np.bincount(group, w * intensity, n_groups), sum_w, out=np.zeros(n_groups), where=sum_w > 0)
    return mean, sum_w, np.bincount(group, mask.astype(float), n_groups)


def r_meas(group: np.ndarray, n_groups: int, intensity: np.ndarray, variance: np.ndarray, mask: np.ndarray) -> float:
    """Rmeas over groups with ≥ 2 masked observations (weighted group means)."""
    mean, _, n = weighted_group_means(group, n_groups, intensity, variance, mask)
    multi = (n >= 2)[group] & mask
    factor = np.sqrt(n / np.maximum(n - 1, 1))[group]
    num = np.sum((factor * np.abs(intensity - mean[group]))[multi])
    den = np.sum(intensity[multi])
    return float(num / den) if den != 0 else float("nan")
