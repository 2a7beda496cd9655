"""ewald's robustness rules for real 3D ED data, on simulated data with exact truth: exclusion of
observations whose scale extrapolates towards zero, the robust ΔCC½ cutoff with few groups, and the
error model's min_Ih in counts (LP factors ~10⁻³)."""
import numpy as np
import pytest

from algorithms.scaling import CorrectedIntensities, ScalingOptions, scale_and_filter
from scaling_simulation import merged_against_truth, simulate_scaling


def _cc_with_truth(sim, result):
    merged, truth = merged_against_truth(sim, result)
    return np.corrcoef(merged, truth)[0, 1]


@pytest.fixture(scope="module")
def fading_crystal():
    """Crystal 0 leaves the beam after image 60: its signal falls as exp(−(z − 60)/1.5); the noise stays."""
    sim = simulate_scaling(n_datasets=4, obs_per_dataset=2500, error_a=1.0, error_b=0.02, seed=21)
    data = sim.data
    rng = np.random.default_rng(5)
    fading = np.where((data.dataset == 0) & (data.z_obs > 60), np.exp(-(data.z_obs - 60) / 1.5), 1.0)
    expected = fading * sim.true_g * sim.observation_truth
    c = data.intensities
    noise = rng.normal(0, 1, len(data)) * np.sqrt(c.variance_prf)
    data.intensities = CorrectedIntensities(np.where(fading < 1, expected + noise * 1.2, c.intensity_sum), c.variance_sum,
                                            np.where(fading < 1, expected + noise, c.intensity_prf), c.variance_prf)
    return sim, fading


def test_observations_whose_scale_falls_towards_zero_are_excluded(fading_crystal):
    sim, fading = fading_crystal
    options = ScalingOptions(full_matrix=False, intensity_choice="profile")
    result = scale_and_filter(sim.data, options)
    low = result.low_scale
    assert np.all(result.excluded_for_scaling[low]) and not np.any(result.scaled[low])
    assert result.summary()["n_low_scale"] == low.sum()
    # Only crystal 0's fading end is hit, and nearly everything there whose true signal is < 5 %.
    assert not np.any(low & (fading > 0.3))
    assert low[fading < 0.05].mean() > 0.9
    kept_all = scale_and_filter(sim.data, ScalingOptions(full_matrix=False, intensity_choice="profile",
                                                         min_relative_inverse_scale=None))
    assert not kept_all.low_scale.any()
    # Weighted merging already discounts them (σ/g grows with 1/g); the half-data-set CC½ and Rmeas,
    # where I/g of a dying crystal's last images counts as much as any other, do not.
    ours, theirs = result.merging_statistics.overall, kept_all.merging_statistics.overall
    assert ours.cc_half > theirs.cc_half + 0.01 and ours.r_meas < 0.7 * theirs.r_meas
    assert _cc_with_truth(sim, result) >= _cc_with_truth(sim, kept_all) > 0.98


def test_robust_cutoff_removes_a_very_bad_group_among_few():
    """2 crystals × 40 images in 10-image groups: 8 groups. Images 31–40 of crystal 0 carry intensities
    off by random factors (log-normal, σ 1.5: I/g of a wrongly extrapolated scale); their ΔCC½ (≈ −0.56,
    as the real cRED lysozyme's −0.587) inflates the SD so that DIALS' mean − 4·SD flags nothing, while
    median − 4·1.4826·MAD finds exactly that group."""
    sim = simulate_scaling(n_datasets=2, n_images=40, obs_per_dataset=2500, error_a=1.2, error_b=0.03, drift=False, seed=3)
    data = sim.data
    bad = (data.dataset == 0) & (data.image_number() >= 31)
    factor = np.where(bad, np.exp(np.random.default_rng(1).normal(0, 1.5, len(data))), 1.0)
    c = data.intensities
    data.intensities = CorrectedIntensities(c.intensity_sum * factor, c.variance_sum, c.intensity_prf * factor, c.variance_prf)
    common = dict(d_min=3.0, filtering_method="deltacchalf", mode="image_group", group_size=10, full_matrix=False)
    robust = scale_and_filter(data, ScalingOptions(**common), with_merging_statistics=False)
    dials = scale_and_filter(data, ScalingOptions(**common, cutoff_rule="mean_sd"), with_merging_statistics=False)
    first = robust.filtering.cycles[0]
    assert len(first.delta_cc_half) == 8 and np.min(first.delta_cc_half) < -0.3
    assert robust.filtering.removed_ranges == [(0, 31, 40)] and robust.filtering.removed_datasets == []
    assert dials.filtering.removed_ranges == [] and dials.filtering.cycles[0].n_removed == 0


def test_error_model_is_fitted_on_ed_sized_lp_factors():
    """LP-corrected intensities 1000× smaller than the counts (ED: lp ~ 10⁻³): with min_Ih in counts
    the model is fitted and a, b recovered; with DIALS' absolute min_Ih = 25 nothing qualifies."""
    sim = simulate_scaling(n_datasets=6, error_a=1.5, error_b=0.04, seed=11)
    data = sim.data
    lp = 1e-3
    c = data.intensities
    data.intensities = CorrectedIntensities(c.intensity_sum * lp, c.variance_sum * lp**2, c.intensity_prf * lp,
                                            c.variance_prf * lp**2)
    data.conversion = np.full(len(data), lp)
    counts = scale_and_filter(data, ScalingOptions(d_min=3.0, full_matrix=False), with_merging_statistics=False)
    assert counts.error_model.refined
    assert counts.error_model.a == pytest.approx(1.5, rel=0.08)
    assert counts.error_model.b == pytest.approx(0.04, rel=0.15)
    # In counts, every threshold of the error model means the same whatever the LP factor: the fit is
    # the one on the unconverted intensities.
    unconverted = scale_and_filter(simulate_scaling(n_datasets=6, error_a=1.5, error_b=0.04, seed=11).data,
                                   ScalingOptions(d_min=3.0, full_matrix=False), with_merging_statistics=False)
    assert counts.error_model.a == pytest.approx(unconverted.error_model.a, rel=1e-6)
    assert counts.error_model.b == pytest.approx(unconverted.error_model.b, rel=1e-6)
    absolute = scale_and_filter(data, ScalingOptions(d_min=3.0, full_matrix=False, min_Ih_in_counts=False),
                                with_merging_statistics=False)
    assert not absolute.error_model.refined and "Insufficient" in absolute.error_model.message
