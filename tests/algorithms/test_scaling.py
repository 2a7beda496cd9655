"""End-to-end tests of joint scaling, error model, outliers, intensity combination and ΔCC½ filtering
on synthetic multi-crystal data with exact truth (tests/algorithms/scaling_simulation.py)."""
import json

import gemmi
import numpy as np
import pytest

from algorithms.errors import DataError
from algorithms.merging.cc_half import sigma_tau_cc_half
from algorithms.merging.symmetry import map_to_asu
from algorithms.scaling import ScalingOptions, prepare_intensities, refine_error_model, scale_and_filter
from algorithms.scaling.combine import combine_intensities, imid_candidates
from algorithms.scaling.delta_cc_half import delta_cc_half, edge_groups_below, image_groups, resolution_bins_inverse_d2
from algorithms.scaling.outliers import standard_outliers
from scaling_simulation import merged_against_truth, simulate_scaling

CORRUPTED = {k: ([1, 2, 36, 37, 71, 72] if k % 2 else [30, 31, 32]) for k in (1, 4, 7, 10, 13, 16)}


@pytest.fixture(scope="module")
def clean_run():
    sim = simulate_scaling(error_a=1.5, error_b=0.04, seed=11)
    return sim, scale_and_filter(sim.data, ScalingOptions(d_min=3.0))


def test_relative_scales_recovered_up_to_overall_scale_and_b(clean_run):
    """g/g_true may differ only by an overall factor and an overall B (both degenerate with Ĩ)."""
    sim, result = clean_run
    ratio = np.log(result.inverse_scale_factor / sim.true_g)
    design = np.stack([np.ones_like(ratio), 1 / (2 * sim.data.d**2)], axis=1)
    coefficients = np.linalg.lstsq(design, ratio, rcond=None)[0]
    residual = ratio - design @ coefficients
    assert np.std(residual) < 0.02
    assert np.max(np.abs(residual)) < 0.1
    for k in range(sim.data.n_datasets):  # per-crystal relative scale within a few %
        assert abs(np.mean(residual[sim.data.dataset == k])) < 0.03


def test_merged_intensities_correlate_with_truth(clean_run):
    sim, result = clean_run
    merged, truth = merged_against_truth(sim, result)
    assert np.corrcoef(merged, truth)[0, 1] >= 0.98
    assert result.merging_statistics.overall.cc_half > 0.98
    assert np.all(np.isfinite(result.inverse_scale_factor_variance)) and np.all(result.inverse_scale_factor_variance >= 0)
    assert result.models[0].scale.size == 11 and result.models[0].decay.size == 9 and result.models[0].absorption.size == 24
    assert result.models[0].scale_esd[0] == 0.0  # fix_initial: first scale parameter fixed in the full-matrix round


def test_error_model_in_scaling_recovers_a_and_b(clean_run):
    _, result = clean_run
    assert result.error_model.refined
    assert result.error_model.a == pytest.approx(1.5, rel=0.06)
    assert result.error_model.b == pytest.approx(0.04, rel=0.12)


@pytest.mark.parametrize("a, b", [(1.5, 0.04), (1.2, 0.02), (2.7, 0.05)])
def test_error_model_with_true_scales(a, b):
    sim = simulate_scaling(error_a=a, error_b=b, seed=3)
    data = sim.data
    mapping = map_to_asu(data.miller_index, data.space_group)
    model = refine_error_model(mapping.group, len(mapping.unique_asu_index), data.intensities.intensity_prf,
                               data.intensities.variance_prf, sim.true_g, np.ones(len(data), bool), data.partiality)
    assert model.a == pytest.approx(a, rel=0.06)
    assert model.b == pytest.approx(b, rel=0.12)
    assert model.isa == pytest.approx(1 / (a * b), rel=0.05)


def test_error_model_needs_enough_reflections():
    sim = simulate_scaling(n_datasets=2, obs_per_dataset=60, seed=2)
    data = sim.data
    mapping = map_to_asu(data.miller_index, data.space_group)
    model = refine_error_model(mapping.group, len(mapping.unique_asu_index), data.intensities.intensity_prf,
                               data.intensities.variance_prf, sim.true_g, np.ones(len(data), bool), data.partiality)
    assert not model.refined and model.a == 1.0 and model.b == 0.02 and "Insufficient" in model.message


def test_standard_outlier_rejection_finds_injected_outliers():
    sim = simulate_scaling(n_datasets=6, error_a=1.0, error_b=0.0, seed=5)
    data = sim.data
    mapping = map_to_asu(data.miller_index, data.space_group)
    intensity = data.intensities.intensity_prf.copy()
    variance = data.intensities.variance_prf
    rng = np.random.default_rng(0)
    n = np.bincount(mapping.group)[mapping.group]
    injected = rng.choice(np.nonzero(n >= 4)[0], 40, replace=False)
    intensity[injected] += 15 * np.sqrt(variance[injected]) * rng.choice([-1, 1], 40)
    outlier = standard_outliers(mapping.group, len(mapping.unique_asu_index), intensity, variance, sim.true_g,
                                np.ones(len(data), bool))
    assert outlier[injected].mean() >= 0.95
    assert outlier.sum() - outlier[injected].sum() <= 3


def test_prepare_intensities_applies_lp_qe_and_partiality():
    corrected = prepare_intensities(np.array([100.0]), np.array([25.0]), np.array([90.0]), np.array([16.0]),
                                    lp=np.array([0.5]), qe=np.array([2.0]), partiality=np.array([0.8]))
    conv = 0.25
    assert corrected.intensity_sum[0] == pytest.approx(100 * conv / 0.8)
    assert corrected.variance_sum[0] == pytest.approx(25 * conv**2 / 0.64)
    assert corrected.intensity_prf[0] == pytest.approx(90 * conv)  # profile intensities are not divided by p
    assert corrected.variance_prf[0] == pytest.approx(16 * conv**2)


def test_intensity_combination_weights_and_choice(clean_run):
    sim, result = clean_run
    c = sim.data.intensities
    mid = 500.0
    intensity, _ = combine_intensities(c, mid)
    w = 1 / (1 + (np.maximum(c.intensity_sum, 0) / mid) ** 3)
    w = np.where(c.intensity_sum > 0, w, 1.0)
    assert np.allclose(intensity, w * c.intensity_prf + (1 - w) * c.intensity_sum)
    candidates = imid_candidates(np.array([5.0, 20.0, 35.0, 12000.0]))
    assert candidates[:3] == [0.0, 1.0, max(10.0, np.mean([5.0, 20.0, 35.0, 12000.0]))]
    assert candidates[3:] == pytest.approx([1200.0])  # 12000/10 ≤ mean, the loop stops there
    # The simulated summation intensities are the profile ones plus extra noise: profile wins.
    labels = [row[0] for row in result.combination_table]
    rmeas = [row[2] for row in result.combination_table]
    assert labels[int(np.argmin(rmeas))] == "prf only" and result.imid == 0.0


def test_delta_cc_half_equals_brute_force_recomputation():
    sim = simulate_scaling(n_datasets=5, obs_per_dataset=500, corrupted_images={2: [10, 11]}, seed=8)
    data = sim.data
    mapping = map_to_asu(data.miller_index, data.space_group)
    n_refl = len(mapping.unique_asu_index)
    d_unique = np.asarray(data.unit_cell.calculate_d_array(mapping.unique_asu_index.astype(np.int32)))
    bins = resolution_bins_inverse_d2(d_unique)
    intensity = data.intensities.intensity_prf / sim.true_g
    groups = image_groups(data.dataset, data.image_number(), np.ones(len(data), bool), data.n_datasets, 10)
    cc_all, delta = delta_cc_half(mapping.group, n_refl, intensity, groups.group, len(groups.dataset), bins)
    _, expected_all = sigma_tau_cc_half(mapping.group, intensity, bins, 10)
    assert cc_all == pytest.approx(expected_all)
    for i in [0, 3, len(groups.dataset) - 1]:
        keep = groups.group != i
        _, without = sigma_tau_cc_half(mapping.group[keep], intensity[keep], bins, 10)
        assert delta[i] == pytest.approx(cc_all - without, abs=1e-12)


def test_image_groups_merge_short_last_block_and_skip_holes():
    dataset = np.zeros(9, int)
    image = np.array([1, 2, 10, 11, 12, 21, 22, 23, 25])
    groups = image_groups(dataset, image, np.ones(9, bool), 1, 10)
    assert list(groups.first_image) == [1, 11] and list(groups.last_image) == [10, 25]  # 21–25 joined 11–20
    hole = image_groups(np.zeros(4, int), np.array([1, 2, 30, 31]), np.ones(4, bool), 1, 10)
    assert list(hole.first_image) == [1, 21] and list(hole.last_image) == [10, 31]


def test_dials_edge_rule_removes_only_from_the_ends():
    groups = image_groups(np.zeros(6, int), np.arange(1, 7), np.ones(6, bool), 1, 1)
    below = np.array([True, True, False, True, False, True])
    removed = edge_groups_below(groups, below)
    assert list(removed) == [True, True, False, False, False, True]


@pytest.fixture(scope="module")
def filtered_run():
    sim = simulate_scaling(corrupted_images=CORRUPTED, bad_dataset=5, error_a=1.5, error_b=0.04, seed=0)
    options = ScalingOptions(d_min=3.0, filtering_method="deltacchalf", mode="image_group", group_size=1)
    return sim, scale_and_filter(sim.data, options)


def test_delta_cc_half_image_groups_remove_corrupted_images_and_bad_crystal(filtered_run):
    sim, result = filtered_run
    filtering = result.filtering
    assert filtering.removed_datasets == [sim.bad_dataset]
    removed = {(k, i) for k, a, b in filtering.removed_ranges for i in range(a, b + 1)}
    corrupted = sim.corrupted_images
    good_images = sim.data.n_datasets * 72 - len(corrupted) - 72
    assert len(removed & corrupted) >= 0.8 * len(corrupted)
    assert len(removed - corrupted) < 0.05 * good_images
    assert filtering.termination_reason in {"no_more_removed", "max_cycles", "max_percent_removed"}
    assert result.valid_image_ranges[sim.bad_dataset] == []
    ranges = result.valid_image_ranges[4]  # corrupted 30–32 in the middle: the sweep has a hole
    assert all(not (a <= 31 <= b) for a, b in ranges) and len(ranges) >= 2
    assert filtering.cycles[0].cumulative_percent_removed > 0
    document = json.loads(json.dumps(filtering.as_dict()))
    assert document["removed_datasets"] == [sim.bad_dataset] and len(document["cycles"]) == len(filtering.cycles)
    json.dumps(result.summary())
    merged, truth = merged_against_truth(sim, result)
    assert np.corrcoef(merged, truth)[0, 1] >= 0.98


def test_dials_edge_mode_keeps_middle_images_and_reports_them():
    sim = simulate_scaling(n_datasets=8, corrupted_images={3: [1, 2, 40, 41]}, error_a=1.5, error_b=0.04, seed=6)
    options = ScalingOptions(d_min=3.0, filtering_method="deltacchalf", mode="image_group", group_size=1,
                             image_group_removal="edges", remove_non_isomorphous=False, full_matrix=False)
    result = scale_and_filter(sim.data, options, with_merging_statistics=False)
    removed = {(k, i) for k, a, b in result.filtering.removed_ranges for i in range(a, b + 1)}
    assert {(3, 1), (3, 2)} <= removed
    assert not {(3, 40), (3, 41)} & removed
    reported = {(k, a) for c in result.filtering.cycles for k, a, b in c.below_cutoff_kept}
    assert {(3, 40), (3, 41)} & reported


def test_dataset_mode_removes_the_non_isomorphous_crystal():
    sim = simulate_scaling(n_datasets=10, bad_dataset=2, non_isomorphous_fraction=1.0, seed=9)
    options = ScalingOptions(d_min=3.0, filtering_method="deltacchalf", mode="dataset", stdcutoff=2.5,
                             full_matrix=False)
    result = scale_and_filter(sim.data, options, with_merging_statistics=False)
    assert result.filtering.removed_datasets == [2]


def test_crystal_with_a_cell_far_from_the_consensus_is_removed_before_scaling():
    sim = simulate_scaling(n_datasets=5, obs_per_dataset=800, seed=12)
    cells = [gemmi.UnitCell(99.06 * (1 + 0.003 * k), 31.01, 54.30, 90, 107.7, 90) for k in range(5)]
    cells[3] = gemmi.UnitCell(117.84, 37.02, 64.31, 90, 107.54, 90)  # a misindexed lattice
    sim.data.dataset_cells = cells
    result = scale_and_filter(sim.data, ScalingOptions(full_matrix=False), with_merging_statistics=False)
    assert list(result.cell_outliers) == [3] and "consensus" in result.cell_outliers[3]
    assert not result.scaled[sim.data.dataset == 3].any() and result.scaled[sim.data.dataset != 3].mean() > 0.95
    assert result.valid_image_ranges[3] == []


def test_min_completeness_stops_filtering_and_empty_dataset_is_harmless():
    sim = simulate_scaling(n_datasets=5, obs_per_dataset=800, corrupted_images={1: [3, 4]}, seed=13)
    sim.data.user_excluded = sim.data.dataset == 4  # a crystal the user left out entirely
    options = ScalingOptions(filtering_method="deltacchalf", mode="image_group", group_size=1, min_completeness=101.0)
    result = scale_and_filter(sim.data, options)
    assert result.filtering.termination_reason == "min_completeness" and len(result.filtering.cycles) == 1
    assert not result.scaled[sim.data.dataset == 4].any()
    assert np.all(result.models[4].scale == 1.0) and np.all(result.models[4].scale_esd == 0.0)
    assert np.all(np.isfinite(result.inverse_scale_factor_variance))


def test_unknown_option_values_are_reported():
    sim = simulate_scaling(n_datasets=2, obs_per_dataset=100, seed=1)
    with pytest.raises(DataError, match="mode='images'"):
        scale_and_filter(sim.data, ScalingOptions(filtering_method="deltacchalf", mode="images"))
