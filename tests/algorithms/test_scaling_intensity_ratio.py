"""The intensity-ratio test of image groups (ewald, next to ΔCC½): frames whose observations are
uniformly too weak (a frame recorded without diffraction) are removed; exact truth from
tests/algorithms/scaling_simulation.py."""
import numpy as np

from algorithms.scaling import ScalingOptions, scale_and_filter
from algorithms.scaling.delta_cc_half import group_intensity_ratios, ratio_outliers
from scaling_simulation import simulate_scaling

# (dataset 0-based, image): fraction of the intensity left. 0.85 is a deficit ΔCC½ alone misses on some of
# these frames (it catches 0.8 on all of them in this simulation).
DARK = {(0, 40): 0.85, (1, 10): 0.85, (2, 30): 0.85, (3, 60): 0.85, (5, 50): 0.85, (6, 20): 0.85, (7, 35): 0.85}


def test_group_ratio_is_exact_on_noiseless_data():
    """Three reflections seen by groups 0–2; group 1 records 0.3 of each: its ratio is exactly 0.3
    (its Ĩ_−l comes from the other groups only)."""
    truth = np.array([100.0, 200.0, 400.0])
    reflection = np.repeat(np.arange(3), 3)
    group = np.tile(np.arange(3), 3)
    scaled = truth[reflection] * np.where(group == 1, 0.3, 1.0)
    variance = np.full(len(scaled), 1.0)
    ratio = group_intensity_ratios(reflection, 3, scaled, variance, group, 3, min_observations=3)
    # Group 0's Ĩ_−l is the mean of groups 1 and 2: (0.3 + 1)/2 of the truth → ratio 1/0.65.
    assert np.allclose(ratio, [1 / 0.65, 0.3, 1 / 0.65])
    assert np.isnan(group_intensity_ratios(reflection, 3, scaled, variance, group, 3, min_observations=4)).all()
    values = np.array([1.0, 1.01, 0.99, 1.02, 0.98, 0.3, 1.5, np.nan])
    flagged, lower, upper = ratio_outliers(values, 4.0, 0.1)
    # median 1.0, MAD 0.02: half width 4·1.4826·0.02 = 0.1186 (above the 0.1 floor); excess only on request
    assert list(flagged) == [False] * 5 + [True, False, False]
    assert np.isclose(lower, 1 - 0.118608) and np.isclose(upper, 1 + 0.118608)
    assert list(ratio_outliers(values, 4.0, 0.1, flag_excess=True)[0]) == [False] * 5 + [True, True, False]
    assert np.isclose(ratio_outliers(values[:5], 4.0, 0.1)[1], 0.9)  # tiny MAD: the floor decides


def _darkened_simulation():
    sim = simulate_scaling(n_datasets=8, obs_per_dataset=4000, d_min=2.5, error_a=1.5, error_b=0.04, seed=3)
    image = sim.data.image_number()
    for (k, i), fraction in DARK.items():
        rows = (sim.data.dataset == k) & (image == i)
        for name in ("intensity_sum", "intensity_prf"):
            getattr(sim.data.intensities, name)[rows] *= fraction
    return sim


def _removed_images(use_ratio: bool):
    sim = _darkened_simulation()
    options = ScalingOptions(d_min=2.5, filtering_method="deltacchalf", mode="image_group", group_size=1,
                             full_matrix=False, intensity_ratio_filter=use_ratio)
    result = scale_and_filter(sim.data, options, with_merging_statistics=False)
    removed = {(k, i) for k, a, b in result.filtering.removed_ranges for i in range(a, b + 1)}
    return sim, result, removed


def test_dark_frames_are_removed_by_the_ratio_and_missed_without_it():
    sim, result, removed = _removed_images(True)
    good_images = sim.data.n_datasets * 72 - len(DARK)
    assert set(DARK) <= removed
    assert len(removed - set(DARK)) < 0.01 * good_images
    assert result.filtering.removed_datasets == []
    by_ratio = {(k, a): r for c in result.filtering.cycles for k, a, b, r in c.removed_by_ratio}
    for key, fraction in DARK.items():  # the ratio measures the deficit (the smooth model absorbs a little of it)
        assert fraction - 0.01 < by_ratio[key] < fraction + 0.05
    document = result.filtering.as_dict()
    assert document["cycles"][0]["removed_by_intensity_ratio"]
    _, _, removed_without = _removed_images(False)
    assert len(set(DARK) - removed_without) >= 2  # ΔCC½ alone misses some of them

