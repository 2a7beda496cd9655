"""Ranking of candidate lattices (DIALS ``solution_scorer = weighted``, power 1, all weights 1).

score = log₂(V/V_min) + log₂(f_max/f) + log₂(rmsd/rmsd_min); the lowest score wins.  V is the
cell volume, f the fraction of spots indexed, rmsd the positional rmsd after the candidate's
short refinement (√(rmsd_x² + rmsd_y²) in DIALS).
"""
from __future__ import annotations

import numpy as np


def score_candidates(volumes, fractions_indexed, rmsds) -> dict[str, np.ndarray]:
    """Per-candidate score components and the overall score (arrays aligned with the inputs)."""
    volumes = np.asarray(volumes, float)
    fractions = np.asarray(fractions_indexed, float)
    rmsds = np.asarray(rmsds, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        volume_score = np.log2(volumes / volumes.min())
        fraction_score = np.log2(fractions.max() / fractions)
        rmsd_score = np.log2(rmsds / rmsds.min()) if rmsds.min() > 0 else np.where(rmsds > 0, np.inf, 0.0)
    overall = volume_score + fraction_score + rmsd_score
    return {"volume_score": volume_score, "fraction_indexed_score": fraction_score, "rmsd_score": rmsd_score,
            "overall_score": np.nan_to_num(overall, nan=np.inf)}
