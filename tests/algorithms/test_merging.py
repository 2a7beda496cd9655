"""Tests of algorithms.merging against hand-computed values and exact formulas."""
import itertools
import math

import gemmi
import numpy as np
import pytest
from scipy import special, stats

from algorithms.merging import (format_merging_statistics_table, french_wilson, map_to_asu, merge_anomalous,
                                merge_bijvoet_amplitudes, merge_intensities, merging_statistics)
from algorithms.merging.cc_half import random_half_split, sigma_tau_cc_half
from algorithms.merging.french_wilson import french_wilson_table, posterior_moments


@pytest.mark.parametrize("symbol", ["C 1 2 1", "P 1", "P 3 2 1", "P 61 2 2", "I 41 3 2", "R 3 :H", "P 1 21/c 1"])
def test_asu_mapping_matches_gemmi_one_by_one(symbol):
    sg = gemmi.SpaceGroup(symbol)
    ops, asu = sg.operations(), gemmi.ReciprocalAsu(sg)
    hkl = np.random.default_rng(3).integers(-12, 13, (800, 3))
    mapping = map_to_asu(hkl, sg)
    expected = [asu.to_asu(h, ops) for h in hkl.tolist()]
    assert np.array_equal(mapping.asu_index, np.array([e[0] for e in expected]))
    assert np.array_equal(mapping.isym, np.array([e[1] for e in expected]))
    assert np.array_equal(mapping.unique_asu_index[mapping.group], mapping.asu_index)
    assert len(np.unique(mapping.unique_asu_index, axis=0)) == len(mapping.unique_asu_index)


# A tiny P2 data set (cell 10 Å cube, d = 10/|h|) whose statistics are worked out by hand below.
#   A = (1,1,1) acentric: originals (1,1,1), (-1,1,-1) [I+], (-1,-1,-1) [I-]; I 10, 12, 14; σ 1, 1, 2
#   B = (2,0,1) centric (h0l):  originals (2,0,1), (-2,0,-1);                 I 20, 24;     σ 2, 2
#   C = (1,2,3) acentric:       original (1,2,3);                             I 5;          σ 1
TINY_HKL = np.array([[1, 1, 1], [-1, 1, -1], [-1, -1, -1], [2, 0, 1], [-2, 0, -1], [1, 2, 3]])
TINY_I = np.array([10.0, 12.0, 14.0, 20.0, 24.0, 5.0])
TINY_SIGMA = np.array([1.0, 1.0, 2.0, 2.0, 2.0, 1.0])
TINY_CELL = gemmi.UnitCell(10, 10, 10, 90, 90, 90)
TINY_SG = gemmi.SpaceGroup("P 1 2 1")


def _count_unique_p2(s_min: int, s_max: int) -> int:
    """Reflections of point group 2/m with s_min ≤ h²+k²+l² ≤ s_max, counted by brute force."""
    orbits = set()
    for h, k, l in itertools.product(range(-4, 5), repeat=3):
        if s_min <= h * h + k * k + l * l <= s_max:
            orbits.add(max([(h, k, l), (-h, k, -l), (-h, -k, -l), (h, -k, l)]))
    return len(orbits)


def test_merging_statistics_tiny_dataset_equal_hand_values():
    stats_ = merging_statistics(TINY_HKL, TINY_I, TINY_SIGMA**2, TINY_CELL, TINY_SG, n_bins=1)
    o = stats_.overall
    mean_a = (10 + 12 + 14 / 4) / 2.25
    dev_a = abs(10 - mean_a) + abs(12 - mean_a) + abs(14 - mean_a)
    dev_b = 4.0
    assert o.n_obs == 6 and o.n_unique == 3
    assert o.multiplicity == pytest.approx(2.0)
    assert o.r_merge == pytest.approx((dev_a + dev_b) / 80.0)
    assert o.r_meas == pytest.approx((math.sqrt(3 / 2) * dev_a + math.sqrt(2) * dev_b) / 80.0)
    assert o.r_pim == pytest.approx((math.sqrt(1 / 2) * dev_a + dev_b) / 80.0)
    assert o.i_over_sigma == pytest.approx((mean_a * 1.5 + 22 * math.sqrt(0.5) + 5.0) / 3)
    assert o.mean_intensity == pytest.approx((mean_a + 22 + 5) / 3)
    assert o.completeness == pytest.approx(100.0 * 3 / _count_unique_p2(3, 14))
    assert o.d_max == pytest.approx(10 / math.sqrt(3)) and o.d_min == pytest.approx(10 / math.sqrt(14))
    # Anomalous: A+ = {10, 12}, A- = {14}, B centric = {20, 24}, C = {5}.
    assert o.r_merge_anom == pytest.approx((2.0 + 4.0) / (22.0 + 44.0))
    assert o.anom_completeness == pytest.approx(50.0)
    assert o.anom_multiplicity == pytest.approx(6 / 4)
    table = format_merging_statistics_table(stats_)
    assert "Merging statistics by resolution bin" in table and "Summary of merging statistics" in table
    assert ("Rmerge(I)".ljust(44) + "%7.3f" % o.r_merge) in table
    assert ("Total observations".ljust(44) + "%7d" % 6) in table
    assert ("High resolution limit".ljust(44) + " %7.2f" % o.d_min) in table
    header = [line for line in table.splitlines() if "Overall" in line][0]
    assert header == " " * 45 + "Overall    Low     High"


def test_weighted_and_anomalous_merge_by_hand():
    mapping = map_to_asu(TINY_HKL, TINY_SG)
    merged = merge_intensities(mapping.group, TINY_I, TINY_SIGMA**2, len(mapping.unique_asu_index))
    row = {tuple(h): i for i, h in enumerate(mapping.unique_asu_index.tolist())}
    a, b = row[(1, 1, 1)], row[(2, 0, 1)]
    assert merged.intensity[a] == pytest.approx(25.5 / 2.25) and merged.sigma[a] == pytest.approx(1 / 1.5)
    assert merged.intensity[b] == pytest.approx(22.0) and merged.multiplicity[b] == 2
    anomalous = merge_anomalous(mapping, TINY_I, TINY_SIGMA**2)
    assert anomalous.plus.intensity[a] == pytest.approx(11.0) and anomalous.minus.intensity[a] == pytest.approx(14.0)
    assert anomalous.plus.multiplicity[b] == 2 and anomalous.minus.multiplicity[b] == 0


def _synthetic_unmerged(n_unique=3000, multiplicity=6, noise=0.5, seed=1):
    rng = np.random.default_rng(seed)
    truth = rng.exponential(1.0, n_unique)
    group = np.repeat(np.arange(n_unique), multiplicity)
    intensity = truth[group] + rng.normal(0, noise, len(group))
    return group, intensity, truth


def test_cc_half_sigma_tau_and_random_split_match_theory():
    noise, n = 0.8, 6
    group, intensity, truth = _synthetic_unmerged(noise=noise, multiplicity=n)
    expected = 1.0 / (1.0 + 2 * noise**2 / n)  # var(truth) = 1 for an exponential of mean 1
    cc_bins, cc_all = sigma_tau_cc_half(group, intensity, np.zeros(truth.size, int), 1)
    assert cc_all == pytest.approx(expected, abs=0.02)
    first = random_half_split(group, truth.size, np.random.default_rng(0))
    assert np.all(np.bincount(group[first], minlength=truth.size) == n // 2)
    hkl = np.stack([np.arange(truth.size) % 15 + 1, np.arange(truth.size) // 15 % 15, np.arange(truth.size) // 225], axis=1)
    cell, sg = gemmi.UnitCell(60, 60, 60, 90, 90, 90), gemmi.SpaceGroup("P 1")
    stats_ = merging_statistics(hkl[group], intensity, np.full(group.size, noise**2), cell, sg)
    assert stats_.overall.cc_half == pytest.approx(expected, abs=0.02)
    assert stats_.overall.cc_half_sigma_tau == pytest.approx(expected, abs=0.02)
    assert stats_.overall.cc_half_significant


def test_odd_groups_split_into_floor_and_ceil_halves():
    group = np.repeat(np.arange(2000), 5)
    first = random_half_split(group, 2000, np.random.default_rng(7))
    sizes = np.bincount(group[first], minlength=2000)
    assert set(np.unique(sizes)) == {2, 3}
    assert 0.45 < np.mean(sizes == 3) < 0.55


def test_french_wilson_tables_equal_truncated_normal_moments():
    grid, values = french_wilson_table(centric=False)
    assert len(grid) == 71 and grid[0] == pytest.approx(-4.0) and grid[-1] == pytest.approx(3.0)
    # Acentric posterior of J/σ is N(h, 1) truncated at 0: mean h + φ(h)/Φ(h).
    mean = grid + stats.norm.pdf(grid) / stats.norm.cdf(grid)
    var = 1 - stats.norm.pdf(grid) / stats.norm.cdf(grid) * (grid + stats.norm.pdf(grid) / stats.norm.cdf(grid))
    assert np.allclose(values[:, 0], mean, atol=1e-5)
    assert np.allclose(values[:, 1], np.sqrt(var), atol=1e-5)
    # The 1978 table's first entry: <J>/σ = 0.226, <F>/√σ = 0.423.
    assert values[0, 0] == pytest.approx(0.226, abs=1e-3) and values[0, 2] == pytest.approx(0.423, abs=1e-3)
    assert len(french_wilson_table(centric=True)[0]) == 81
    # Centric at h = 0: density ∝ exp(-u⁴/2) so <F>/√σ = 2^¼ Γ(½)/Γ(¼).
    centric_h0 = posterior_moments(np.array([0.0]), centric=True)[0]
    assert centric_h0[2] == pytest.approx(2**0.25 * special.gamma(0.5) / special.gamma(0.25), rel=1e-5)


def test_french_wilson_limits_and_rejections():
    cell, sg = gemmi.UnitCell(40, 50, 60, 90, 90, 90), gemmi.SpaceGroup("P 21 21 21")
    hkl = gemmi.make_miller_array(cell, sg, 2.5, 0)
    rng = np.random.default_rng(2)
    intensity = rng.exponential(1000.0, len(hkl))
    sigma = np.full(len(hkl), 10.0)
    intensity[:5] = [-50.0, 0.0, 0.0, 40000.0, 25.0]
    sigma[1:3] = [0.0, -1.0]
    sigma[4] = 0.0
    result = french_wilson(hkl, intensity, sigma, cell, sg)
    assert not result.accepted[0]  # I/σ = -5 < -3.7
    assert not result.accepted[1] and not result.accepted[2]  # σ = 0 with I = 0; σ < 0
    assert result.accepted[4] and result.f[4] == pytest.approx(5.0) and result.sigma_f[4] == 0
    i_over_sigma = np.divide(intensity, sigma, out=np.zeros_like(intensity), where=sigma > 0)
    strong = result.accepted & (i_over_sigma > 30)
    assert np.allclose(result.f[strong], np.sqrt(intensity[strong]), rtol=2e-3)
    assert np.allclose(result.sigma_f[strong], sigma[strong] / (2 * np.sqrt(intensity[strong])), rtol=2e-2)
    weak = result.accepted & (sigma > 0) & (np.abs(i_over_sigma) < 1)
    assert np.all(result.f[weak] > 0)


def test_bijvoet_amplitudes_merge_by_weight():
    f, sigma = merge_bijvoet_amplitudes(np.array([10.0, 4.0, np.nan, 7.0]), np.array([1.0, 2.0, np.nan, 0.0]),
                                        np.array([12.0, np.nan, np.nan, 9.0]), np.array([2.0, np.nan, np.nan, 1.0]))
    assert f[0] == pytest.approx((10 * 1 + 12 * 0.25) / 1.25)
    assert sigma[0] == pytest.approx(max(1 / np.sqrt(1.25), abs(10 - 12) / 2))
    assert f[1] == 4.0 and sigma[1] == 2.0
    assert np.isnan(f[2]) and np.isnan(sigma[2])
    assert f[3] == 7.0 and sigma[3] == 0.0


def test_french_wilson_and_amplitude_merge_reproduce_a_dials_merged_mtz(shared_data):
    """dials.merge output of real 3D ED lysozyme data: F(±) from I(±), rejections, and F/SIGF."""
    mtz = gemmi.read_mtz_file(str(shared_data / "ed_lysozyme_cred" / "reference_dials" / "combined" / "merged.mtz"))
    table = np.array(mtz.array, dtype=float)
    labels = mtz.column_labels()
    col = lambda name: table[:, labels.index(name)]
    hkl = table[:, :3].astype(int)
    plus, minus = np.isfinite(col("I(+)")), np.isfinite(col("I(-)"))
    result = french_wilson(np.concatenate([hkl[plus], -hkl[minus]]), np.concatenate([col("I(+)")[plus], col("I(-)")[minus]]),
                           np.concatenate([col("SIGI(+)")[plus], col("SIGI(-)")[minus]]), mtz.cell, mtz.spacegroup)
    f_ref = np.concatenate([col("F(+)")[plus], col("F(-)")[minus]])
    sigma_ref = np.concatenate([col("SIGF(+)")[plus], col("SIGF(-)")[minus]])
    assert np.array_equal(result.accepted, np.isfinite(f_ref))
    ok = result.accepted
    assert np.median(np.abs(result.f[ok] / f_ref[ok] - 1)) < 1e-3
    assert np.max(np.abs(result.f[ok] / f_ref[ok] - 1)) < 0.03
    assert np.median(np.abs(result.sigma_f[ok] / sigma_ref[ok] - 1)) < 1e-3
    f, sigma = merge_bijvoet_amplitudes(col("F(+)"), col("SIGF(+)"), col("F(-)"), col("SIGF(-)"))
    present = np.isfinite(col("F"))
    assert np.array_equal(np.isfinite(f), present)
    assert np.allclose(f[present], col("F")[present], rtol=1e-5)
    assert np.allclose(sigma[present], col("SIGF")[present], rtol=1e-5)

