"""Merging statistics by resolution bin, as iotbx.merging_statistics reports them for DIALS.

Bins: ``n_bins`` shells of equal reciprocal-space volume (equal steps of d*³) between the observed
d_max and d_min of the unique reflections. Per bin and overall: completeness against the complete
set (gemmi, systematic absences excluded, non-anomalous), multiplicity, ⟨I⟩, ⟨I/σ⟩ of merged values
(1/σ² weights, counting σ), Rmerge/Rmeas/Rpim (sums over h with n ≥ 2; denominator Σ I without
abs), half-dataset CC½ (random split, 1/σ²-weighted half means; significance at the 1 % level by a
one-sided t-test), σ-τ CC½ and CC* = sqrt(2CC½/(1+CC½)). The anomalous set (Bijvoet mates kept
apart) gives R(I+/-), anomalous completeness (acentric observed h with both mates / acentric observed
h), anomalous multiplicity, anomalous half-dataset CC of ΔI (unweighted half means), and overall the
normal-probability slope of ΔI/σ(ΔI) (|x| < 0.9), dF/F and ⟨|ΔI|⟩/⟨σ(ΔI)⟩. Statistics: Diederichs &
Karplus 1997 (Rmeas), Weiss 2001 (Rpim), Karplus & Diederichs 2012 (CC½, CC*).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

import gemmi
import numpy as np
from scipy import special, stats

from algorithms.merging.cc_half import (group_moments, half_means, pearson_by_bin, random_half_split,
                                        sigma_tau_bin_sums, cc_half_from_bin_sums)
from algorithms.merging.merge import merge_intensities
from algorithms.merging.symmetry import AsuMapping, map_to_asu

CC_HALF_SIGNIFICANCE_LEVEL = 0.01


@dataclass
class BinStatistics:
    """One resolution shell (or the whole data set)."""

    d_max: float
    d_min: float
    n_obs: int
    n_unique: int
    n_possible: int
    completeness: float  # %
    multiplicity: float
    mean_intensity: float
    i_over_sigma: float
    r_merge: float
    r_meas: float
    r_pim: float
    cc_half: float
    cc_half_significant: bool
    cc_half_sigma_tau: float
    cc_star: float
    r_merge_anom: float
    r_meas_anom: float
    r_pim_anom: float
    r_anom: float
    anom_completeness: float  # %
    anom_multiplicity: float
    anom_cc: float
    anom_cc_significant: bool


@dataclass
class MergingStatistics:
    bins: list[BinStatistics]
    overall: BinStatistics
    anomalous_slope: float
    anomalous_signal: float  # dF/F
    delta_i_over_sigma: float  # dI/s(dI)

    def as_dict(self) -> dict:
        return {"bins": [asdict(b) for b in self.bins], "overall": asdict(self.overall),
                "anomalous_slope": self.anomalous_slope, "anomalous_signal": self.anomalous_signal,
                "delta_i_over_sigma": self.delta_i_over_sigma}


def cc_significant(cc: np.ndarray, n: np.ndarray, level: float = CC_HALF_SIGNIFICANCE_LEVEL) -> np.ndarray:
    """One-sided t-test of a Pearson CC from n pairs against zero."""
    cc = np.asarray(cc, float)
    n = np.asarray(n, float)
    ok = np.isfinite(cc) & (n > 2) & (np.abs(cc) < 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.where(ok, cc * np.sqrt((n - 2) / (1 - cc * cc)), 0.0)
        p = stats.t.sf(t, np.maximum(n - 2, 1))
    return (ok & (p < level)) | (np.isfinite(cc) & (cc >= 1) & (n > 2))


def cc_star(cc_half: np.ndarray) -> np.ndarray:
    cc = np.asarray(cc_half, float)
    with np.errstate(invalid="ignore"):
        return np.where(cc > 0, np.sqrt(2 * cc / (1 + cc)), np.nan)


@lru_cache(maxsize=16)
def _normal_quantiles(n: int, c: float) -> np.ndarray:
    values = special.ndtri((np.arange(n) + 1 - c) / (n + 1 - 2 * c))
    values.flags.writeable = False
    return values


def normal_quantiles(n: int, c: float = 0.5) -> np.ndarray:
    """Expected order statistics of a standard normal sample: Φ⁻¹((i + 1 − c)/(n + 1 − 2c)) (read-only,
    cached: the error model asks for the same n many times)."""
    return _normal_quantiles(int(n), float(c))


def normal_probability_slope(values: np.ndarray, x_limit: float) -> float:
    """Slope of sorted values against expected normal quantiles, fitted where |x| < x_limit."""
    if len(values) < 3:
        return float("nan")
    x = normal_quantiles(len(values))
    y = np.sort(values)
    keep = np.abs(x) < x_limit
    if keep.sum() < 2:
        return float("nan")
    return float(np.polyfit(x[keep], y[keep], 1)[0])


def resolution_bin_edges(d_max: float, d_min: float, n_bins: int) -> np.ndarray:
    """Edges in d*³ (ascending), equal reciprocal volume per bin."""
    return np.linspace(d_max ** -3.0, d_min ** -3.0, n_bins + 1)


def assign_bins(d: np.ndarray, edges: np.ndarray) -> np.ndarray:
    n_bins = len(edges) - 1
    return np.clip(np.searchsorted(edges, d ** -3.0, side="right") - 1, 0, n_bins - 1)


def _r_factor_sums(group, intensity, variance, n_groups, bin_of_group, n_bins):
    """Per-bin numerators of Rmerge/Rmeas/Rpim and the denominator Σ I (groups with n ≥ 2)."""
    merged = merge_intensities(group, intensity, variance, n_groups)
    n = merged.multiplicity.astype(float)
    abs_dev = np.abs(intensity - merged.intensity[group])
    dev_sum = np.bincount(group, abs_dev, n_groups)
    i_sum = np.bincount(group, intensity, n_groups)
    multi = n >= 2
    safe = np.where(multi, n, 2.0)
    pick = lambda values: np.bincount(bin_of_group, np.where(multi, values, 0.0), n_bins)
    return (pick(dev_sum), pick(np.sqrt(safe / (safe - 1)) * dev_sum), pick(np.sqrt(1 / (safe - 1)) * dev_sum),
            pick(i_sum), merged)


def _ratio(num, den):
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den != 0, num / np.where(den != 0, den, 1.0), np.nan)


def merging_statistics(miller_index: np.ndarray, intensity: np.ndarray, variance: np.ndarray,
                       unit_cell: gemmi.UnitCell, space_group: gemmi.SpaceGroup, n_bins: int = 20,
                       seed: int = 0, mapping: AsuMapping | None = None) -> MergingStatistics:
    """Merging statistics of unmerged scaled intensities (I/g, σ²/g²) in ``n_bins`` shells."""
    intensity = np.asarray(intensity, float)
    variance = np.asarray(variance, float)
    mapping = mapping or map_to_asu(miller_index, space_group)
    n_groups = len(mapping.unique_asu_index)
    group = mapping.group
    d_unique = np.asarray(unit_cell.calculate_d_array(mapping.unique_asu_index.astype(np.int32)))
    d_max, d_min = float(d_unique.max()), float(d_unique.min())
    edges = resolution_bin_edges(d_max, d_min, n_bins)
    bin_of_group = assign_bins(d_unique, edges)
    rng = np.random.default_rng(seed)
    labels = np.arange(n_bins)
    overall_label = np.zeros(n_groups, dtype=np.int64)

    complete = gemmi.make_miller_array(unit_cell, space_group, d_min * (1 - 1e-6), d_max * (1 + 1e-6))
    complete_bins = assign_bins(np.asarray(unit_cell.calculate_d_array(complete)), edges)
    n_possible = np.bincount(complete_bins, minlength=n_bins)

    def summarise(bin_label, nb):
        rmerge, rmeas, rpim, isum, merged = _r_factor_sums(group, intensity, variance, n_groups, bin_label, nb)
        observed = merged.observed
        count = lambda values: np.bincount(bin_label, np.where(observed, values, 0.0), nb)
        n_unique = count(1.0)
        n_obs = count(merged.multiplicity.astype(float))
        mean_i = _ratio(count(merged.intensity), n_unique)
        i_over_sigma = _ratio(count(merged.intensity / merged.sigma), n_unique)
        return dict(n_unique=n_unique, n_obs=n_obs, mean_i=mean_i, i_over_sigma=i_over_sigma,
                    r_merge=_ratio(rmerge, isum), r_meas=_ratio(rmeas, isum), r_pim=_ratio(rpim, isum))

    binned, whole = summarise(bin_of_group, n_bins), summarise(overall_label, 1)

    # Half-dataset CC½ from one random split shared by the bins and the overall value.
    first_half = random_half_split(group, n_groups, rng)
    half_a, half_b, both = half_means(group, intensity, variance, first_half, n_groups, weighted=True)
    sel = np.nonzero(both)[0]
    cc_bins = pearson_by_bin(half_a[sel], half_b[sel], bin_of_group[sel], n_bins)
    n_pairs_bins = np.bincount(bin_of_group[sel], minlength=n_bins)
    cc_all = pearson_by_bin(half_a[sel], half_b[sel], overall_label[sel], 1)
    s1, s2, nn = group_moments(group, intensity, n_groups)
    tau_bins = cc_half_from_bin_sums(**vars(sigma_tau_bin_sums(s1, s2, nn, bin_of_group, n_bins)))[0]
    tau_all = cc_half_from_bin_sums(**vars(sigma_tau_bin_sums(s1, s2, nn, overall_label, 1)))[0]

    anom = _anomalous_statistics(mapping, intensity, variance, bin_of_group, n_bins, rng)

    def make(i, src, label_count, d_hi, d_lo, cc, n_pairs, tau, anom_part):
        n_unique = int(src["n_unique"][i])
        possible = int(label_count)
        return BinStatistics(
            d_max=d_hi, d_min=d_lo, n_obs=int(src["n_obs"][i]), n_unique=n_unique, n_possible=possible,
            completeness=100.0 * n_unique / possible if possible else float("nan"),
            multiplicity=src["n_obs"][i] / n_unique if n_unique else float("nan"),
            mean_intensity=float(src["mean_i"][i]), i_over_sigma=float(src["i_over_sigma"][i]),
            r_merge=float(src["r_merge"][i]), r_meas=float(src["r_meas"][i]), r_pim=float(src["r_pim"][i]),
            cc_half=float(cc), cc_half_significant=bool(cc_significant(cc, n_pairs)),
            cc_half_sigma_tau=float(tau), cc_star=float(cc_star(cc)), **anom_part)

    d_edges = edges ** (-1.0 / 3.0)
    bins = [make(i, binned, n_possible[i], float(d_edges[i]), float(d_edges[i + 1]), cc_bins[i], n_pairs_bins[i],
                 tau_bins[i], anom["bins"][i]) for i in labels]
    bins[0].d_max, bins[-1].d_min = d_max, d_min
    overall = make(0, whole, n_possible.sum(), d_max, d_min, cc_all[0], len(sel), tau_all[0], anom["overall"])
    return MergingStatistics(bins=bins, overall=overall, anomalous_slope=anom["slope"],
                             anomalous_signal=anom["signal"], delta_i_over_sigma=anom["di_over_sigma"])


def _anomalous_statistics(mapping: AsuMapping, intensity, variance, bin_of_group, n_bins, rng) -> dict:
    n_unique = len(mapping.unique_asu_index)
    anom_group, n_anom = mapping.anomalous_group()
    anom_bin = np.repeat(bin_of_group, 2)
    acentric = ~mapping.centric

    def r_values(label, nb):
        rmerge, rmeas, rpim, isum, merged = _r_factor_sums(anom_group, intensity, variance, n_anom, label, nb)
        return _ratio(rmerge, isum), _ratio(rmeas, isum), _ratio(rpim, isum), merged

    rb = r_values(anom_bin, n_bins)
    ro = r_values(np.zeros(n_anom, dtype=np.int64), 1)
    merged = rb[3]
    n_plus, n_minus = merged.multiplicity[0::2], merged.multiplicity[1::2]
    i_plus, i_minus = merged.intensity[0::2], merged.intensity[1::2]
    s_plus, s_minus = merged.sigma[0::2], merged.sigma[1::2]
    observed = (n_plus + n_minus) > 0
    pair = acentric & (n_plus > 0) & (n_minus > 0)

    def per_label(label, nb, values, mask):
        return np.bincount(label, np.where(mask, values, 0.0), nb)

    # Anomalous half-dataset CC of ΔI with unweighted half means.
    first_half = random_half_split(anom_group, n_anom, rng)
    a, b, both = half_means(anom_group, intensity, variance, first_half, n_anom, weighted=False)
    usable = acentric & both[0::2] & both[1::2]
    delta_a, delta_b = (a[0::2] - a[1::2]), (b[0::2] - b[1::2])
    sel = np.nonzero(usable)[0]

    delta = i_plus - i_minus
    sigma_delta = np.sqrt(s_plus ** 2 + s_minus ** 2)

    def part(label, nb, r):
        n_obs_groups = per_label(np.repeat(label, 2), nb, np.ones(n_anom), merged.multiplicity > 0)
        n_obs = per_label(np.repeat(label, 2), nb, merged.multiplicity.astype(float), merged.multiplicity > 0)
        acentric_observed = per_label(label, nb, np.ones(n_unique), acentric & observed)
        with_both = per_label(label, nb, np.ones(n_unique), pair)
        cc = pearson_by_bin(delta_a[sel], delta_b[sel], label[sel], nb)
        n_cc = np.bincount(label[sel], minlength=nb)
        r_anom = _ratio(per_label(label, nb, np.abs(delta), pair), per_label(label, nb, 0.5 * (i_plus + i_minus), pair))
        return [dict(r_merge_anom=float(r[0][i]), r_meas_anom=float(r[1][i]), r_pim_anom=float(r[2][i]),
                     r_anom=float(r_anom[i]),
                     anom_completeness=float(100.0 * with_both[i] / acentric_observed[i]) if acentric_observed[i] else float("nan"),
                     anom_multiplicity=float(n_obs[i] / n_obs_groups[i]) if n_obs_groups[i] else float("nan"),
                     anom_cc=float(cc[i]), anom_cc_significant=bool(cc_significant(cc[i], n_cc[i])))
                for i in range(nb)]

    pairs = np.nonzero(pair)[0]
    slope = normal_probability_slope(delta[pairs] / sigma_delta[pairs], 0.9) if len(pairs) else float("nan")
    positive = pair & (i_plus > 0) & (i_minus > 0)
    f_plus, f_minus = np.sqrt(np.where(positive, i_plus, 0.0)), np.sqrt(np.where(positive, i_minus, 0.0))
    signal_den = np.sum((f_plus ** 2 + f_minus ** 2)[positive])
    signal = float(np.sqrt(2 * np.sum(((f_plus - f_minus) ** 2)[positive]) / signal_den)) if signal_den > 0 else float("nan")
    with_sigma = pair & (sigma_delta > 0)
    di = float(np.mean(np.abs(delta[with_sigma])) / np.mean(sigma_delta[with_sigma])) if with_sigma.any() else float("nan")
    return {"bins": part(bin_of_group, n_bins, rb), "overall": part(np.zeros(n_unique, dtype=np.int64), 1, ro)[0],
            "slope": slope, "signal": signal, "di_over_sigma": di}
