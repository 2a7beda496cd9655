"""The Tukey options dials.index's candidate refinement uses (IQR multiplier 3.0, no φ blocks),
on residuals with planted outliers at known distances."""
from __future__ import annotations

import numpy as np

from algorithms.refinement import RefinementOptions
from algorithms.refinement.outliers import reject_outliers


def _residuals(n=400, seed=3):
    rng = np.random.default_rng(seed)
    residuals = rng.normal(size=(n, 3))
    phi_rad = np.radians(np.linspace(0.0, 60.0, n))
    q1, q3 = np.percentile(residuals[:, 0], [25, 75])
    moderate, far = np.arange(0, n, 50), np.arange(25, n, 50)
    residuals[moderate, 0] = q3 + 2.0 * (q3 - q1)  # outside the 1.5·IQR fence, inside the 3.0 one
    residuals[far, 0] = q3 + 6.0 * (q3 - q1)
    return residuals, phi_rad, moderate, far


def test_iqr_multiplier_moves_the_fences():
    residuals, phi_rad, moderate, far = _residuals()
    default = reject_outliers(residuals, phi_rad, "tukey", block_width_deg=None)
    wide = reject_outliers(residuals, phi_rad, "tukey", block_width_deg=None, iqr_multiplier=3.0)
    assert default[moderate].all() and default[far].all()
    assert not wide[moderate].any() and wide[far].all()
    assert wide.sum() == len(far)  # a normal sample has (almost) nothing beyond 3·IQR: exactly the planted ones


def test_one_block_keeps_a_sparse_stretch_that_blocks_reject_whole():
    residuals, phi_rad, _, _ = _residuals()
    phi_rad = phi_rad.copy()
    sparse = np.arange(1, 11)  # row 0 is a planted outlier
    phi_rad[sparse] = np.radians(np.linspace(-30.0, -12.0, 10))  # 10 spots alone in the first 18° block
    blocks = reject_outliers(residuals, phi_rad, "tukey")
    single = reject_outliers(residuals, phi_rad, "tukey", block_width_deg=None, iqr_multiplier=3.0)
    assert blocks[sparse].all()  # fewer than 20 in a block: rejected, as in DIALS
    assert not single[sparse].any()


def test_refinement_options_keep_dials_refine_defaults():
    options = RefinementOptions()
    assert options.outlier_iqr_multiplier == 1.5 and options.outlier_block_width_deg == 18.0
