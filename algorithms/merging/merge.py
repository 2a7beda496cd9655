"""Inverse-variance weighted merging of symmetry-equivalent intensities.

Ī_h = Σ w I / Σ w, σ(Ī_h) = 1/sqrt(Σ w) with w = 1/σ² (counting errors only, cctbx
``use_internal_variance=False``); a single observation is its own merged value. Anomalous merging
keeps I(+) and I(−) apart (centric reflections all count as I(+)).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from algorithms.merging.symmetry import AsuMapping


@dataclass
class MergedIntensities:
    """One row per group id 0…n_groups−1; ``multiplicity`` 0 marks a group with no data."""

    intensity: np.ndarray
    sigma: np.ndarray
    multiplicity: np.ndarray

    @property
    def observed(self) -> np.ndarray:
        return self.multiplicity > 0


def merge_intensities(group: np.ndarray, intensity: np.ndarray, variance: np.ndarray, n_groups: int) -> MergedIntensities:
    """Weighted mean and its counting-error σ per group (observations with variance ≤ 0 are ignored)."""
    usable = variance > 0
    weight = np.where(usable, 1.0 / np.where(usable, variance, 1.0), 0.0)
    sum_w = np.bincount(group, weight, minlength=n_groups)
    sum_wi = np.bincount(group, weight * intensity, minlength=n_groups)
    count = np.bincount(group[usable], minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(sum_w > 0, sum_wi / sum_w, np.nan)
        sigma = np.where(sum_w > 0, 1.0 / np.sqrt(sum_w), np.nan)
    return MergedIntensities(intensity=mean, sigma=sigma, multiplicity=count)


@dataclass
class AnomalousMerged:
    """I(+) and I(−) per unique reflection (NaN where the mate was not observed)."""

    plus: MergedIntensities
    minus: MergedIntensities


def merge_anomalous(mapping: AsuMapping, intensity: np.ndarray, variance: np.ndarray) -> AnomalousMerged:
    """Merge with Bijvoet mates kept apart; rows follow ``mapping.unique_asu_index``."""
    anomalous_group, n = mapping.anomalous_group()
    merged = merge_intensities(anomalous_group, intensity, variance, n)
    plus = MergedIntensities(merged.intensity[0::2], merged.sigma[0::2], merged.multiplicity[0::2])
    minus = MergedIntensities(merged.intensity[1::2], merged.sigma[1::2], merged.multiplicity[1::2])
    return AnomalousMerged(plus=plus, minus=minus)
