"""The columns of a merged MTZ as dials.merge writes them (§9.2): IMEAN, I(±), N(±), F(±), F.

Non-anomalous and anomalous 1/σ²-weighted merging of scaled intensities (I/g, σ²/g²); French–Wilson
on the anomalous merged array (every observed I(+) and I(−) entry, as cctbx does) gives F(+), F(−);
F, SIGF merge the two mates (:func:`merge_bijvoet_amplitudes`). Rows are the unique ASU reflections;
NaN marks a value that is absent (e.g. I(−) of a centric reflection, F of a rejected intensity).
"""
from __future__ import annotations

from dataclasses import dataclass

import gemmi
import numpy as np

from algorithms.merging.french_wilson import french_wilson, merge_bijvoet_amplitudes
from algorithms.merging.merge import merge_anomalous, merge_intensities
from algorithms.merging.symmetry import map_to_asu


@dataclass
class MergedDataset:
    miller_index: np.ndarray  # (m, 3) ASU indices
    imean: np.ndarray
    sigimean: np.ndarray
    i_plus: np.ndarray
    sigi_plus: np.ndarray
    i_minus: np.ndarray
    sigi_minus: np.ndarray
    n_plus: np.ndarray
    n_minus: np.ndarray
    f: np.ndarray
    sigf: np.ndarray
    f_plus: np.ndarray
    sigf_plus: np.ndarray
    f_minus: np.ndarray
    sigf_minus: np.ndarray
    n_rejected_french_wilson: int


def merge_dataset(miller_index: np.ndarray, intensity: np.ndarray, variance: np.ndarray, unit_cell: gemmi.UnitCell,
                  space_group: gemmi.SpaceGroup) -> MergedDataset:
    """Merge scaled unmerged intensities into the merged-MTZ columns (original indices in ``miller_index``)."""
    mapping = map_to_asu(miller_index, space_group)
    n_unique = len(mapping.unique_asu_index)
    mean = merge_intensities(mapping.group, intensity, variance, n_unique)
    anomalous = merge_anomalous(mapping, intensity, variance)
    plus, minus = anomalous.plus, anomalous.minus
    has_plus, has_minus = plus.multiplicity > 0, minus.multiplicity > 0
    hkl = mapping.unique_asu_index
    entries = np.concatenate([hkl[has_plus], -hkl[has_minus]])
    fw = french_wilson(entries, np.concatenate([plus.intensity[has_plus], minus.intensity[has_minus]]),
                       np.concatenate([plus.sigma[has_plus], minus.sigma[has_minus]]), unit_cell, space_group)
    n_plus = int(has_plus.sum())
    f_plus, sigf_plus, f_minus, sigf_minus = (np.full(n_unique, np.nan) for _ in range(4))
    accepted = fw.accepted
    f_plus[np.nonzero(has_plus)[0][accepted[:n_plus]]] = fw.f[:n_plus][accepted[:n_plus]]
    sigf_plus[np.nonzero(has_plus)[0][accepted[:n_plus]]] = fw.sigma_f[:n_plus][accepted[:n_plus]]
    f_minus[np.nonzero(has_minus)[0][accepted[n_plus:]]] = fw.f[n_plus:][accepted[n_plus:]]
    sigf_minus[np.nonzero(has_minus)[0][accepted[n_plus:]]] = fw.sigma_f[n_plus:][accepted[n_plus:]]
    f, sigf = merge_bijvoet_amplitudes(f_plus, sigf_plus, f_minus, sigf_minus)
    absent = lambda values, present: np.where(present, values, np.nan)
    return MergedDataset(miller_index=hkl, imean=mean.intensity, sigimean=mean.sigma,
                         i_plus=absent(plus.intensity, has_plus), sigi_plus=absent(plus.sigma, has_plus),
                         i_minus=absent(minus.intensity, has_minus), sigi_minus=absent(minus.sigma, has_minus),
                         n_plus=plus.multiplicity, n_minus=minus.multiplicity, f=f, sigf=sigf, f_plus=f_plus,
                         sigf_plus=sigf_plus, f_minus=f_minus, sigf_minus=sigf_minus,
                         n_rejected_french_wilson=int((~accepted).sum()))
