"""Input of joint scaling: per-observation arrays and per-dataset scans.

Intensities arrive already corrected as in DIALS' input preparation (dials.scale, Beilsten-Edmands
et al. 2020, Acta D 76:385): conv = lp/qe; profile I·conv, Var·conv²; summation I·conv/p,
Var·conv²/p² (p = partiality; profile intensities are not divided by p). :func:`prepare_intensities`
does that conversion; :func:`excluded_for_scaling` applies DIALS' per-reflection exclusion rules.
"""
from __future__ import annotations

from dataclasses import dataclass

import gemmi
import numpy as np


@dataclass
class DatasetScan:
    """Rotation of one dataset: start angle and width of an image, 1-based inclusive image range."""

    oscillation_start_deg: float
    oscillation_width_deg: float
    image_range: tuple[int, int]

    @property
    def n_images(self) -> int:
        return self.image_range[1] - self.image_range[0] + 1

    @property
    def wedge_deg(self) -> float:
        return self.n_images * self.oscillation_width_deg


@dataclass
class CorrectedIntensities:
    intensity_sum: np.ndarray
    variance_sum: np.ndarray
    intensity_prf: np.ndarray  # NaN where profile fitting failed or is absent
    variance_prf: np.ndarray


def prepare_intensities(intensity_sum: np.ndarray, variance_sum: np.ndarray, intensity_prf: np.ndarray | None,
                        variance_prf: np.ndarray | None, lp: np.ndarray, qe: np.ndarray | None,
                        partiality: np.ndarray, prf_valid: np.ndarray | None = None) -> CorrectedIntensities:
    """Apply conv = lp/qe to both intensities and divide summation values by the partiality."""
    conv = np.asarray(lp, float) / (np.asarray(qe, float) if qe is not None else 1.0)
    p = np.asarray(partiality, float)
    safe_p = np.where(p > 0, p, 1.0)
    i_sum = np.asarray(intensity_sum, float) * conv / safe_p
    v_sum = np.asarray(variance_sum, float) * conv**2 / safe_p**2
    if intensity_prf is None:
        i_prf = np.full_like(i_sum, np.nan)
        v_prf = np.full_like(i_sum, np.nan)
    else:
        valid = np.ones(len(i_sum), bool) if prf_valid is None else np.asarray(prf_valid, bool)
        i_prf = np.where(valid, np.asarray(intensity_prf, float) * conv, np.nan)
        v_prf = np.where(valid, np.asarray(variance_prf, float) * conv**2, np.nan)
    return CorrectedIntensities(i_sum, v_sum, i_prf, v_prf)


@dataclass
class ScalingData:
    """Everything joint scaling needs, one row per observation.

    ``z_obs`` is the image coordinate relative to the scan: 0 at the start of its first image (DIALS'
    xyzobs.px z minus (image_range[0] − 1)), so image number = ⌊z⌋ + first image of the scan;
    ``s0c``/``s1c`` are crystal-frame unit vectors for the absorption surface (optional; see
    :func:`algorithms.scaling.absorption.crystal_frame_directions`).
    """

    dataset: np.ndarray
    miller_index: np.ndarray
    intensities: CorrectedIntensities
    z_obs: np.ndarray
    d: np.ndarray
    partiality: np.ndarray
    scans: list[DatasetScan]
    space_group: gemmi.SpaceGroup
    unit_cell: gemmi.UnitCell  # mean/best cell, for d of merged data and completeness
    s0c: np.ndarray | None = None
    s1c: np.ndarray | None = None
    user_excluded: np.ndarray | None = None  # rows excluded by the user (e.g. exclude_images)
    dataset_cells: list[gemmi.UnitCell] | None = None  # refined cell of each dataset (consensus check)
    conversion: np.ndarray | None = None  # lp/qe of each row (corrected = integrated × conversion); None = 1

    def __post_init__(self):
        self.dataset = np.asarray(self.dataset, dtype=np.int64)
        self.miller_index = np.asarray(self.miller_index, dtype=np.int64).reshape(-1, 3)
        self.z_obs = np.asarray(self.z_obs, float)
        self.d = np.asarray(self.d, float)
        self.partiality = np.asarray(self.partiality, float)
        if self.user_excluded is None:
            self.user_excluded = np.zeros(len(self.dataset), bool)

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def n_datasets(self) -> int:
        return len(self.scans)

    def image_number(self) -> np.ndarray:
        """1-based image number of each observation: ⌊z_obs⌋ + first image of its scan."""
        first = np.array([s.image_range[0] for s in self.scans])
        return np.floor(self.z_obs).astype(np.int64) + first[self.dataset]


def excluded_for_scaling(data: ScalingData, d_min: float | None, d_max: float | None,
                         partiality_cutoff: float = 0.4, min_isigi: float = -5.0) -> np.ndarray:
    """DIALS' exclusion rules: no valid intensity, variance ≤ 0, partiality < cutoff, I/σ < min_isigi, d range."""
    c = data.intensities
    has_prf = np.isfinite(c.intensity_prf) & (np.nan_to_num(c.variance_prf) > 0)
    has_sum = np.isfinite(c.intensity_sum) & (np.nan_to_num(c.variance_sum) > 0)
    intensity = np.where(has_prf, c.intensity_prf, c.intensity_sum)
    variance = np.where(has_prf, c.variance_prf, c.variance_sum)
    with np.errstate(invalid="ignore", divide="ignore"):
        i_over_sigma = intensity / np.sqrt(variance)
    bad = ~(has_prf | has_sum) | (data.partiality < partiality_cutoff) | ~(i_over_sigma >= min_isigi)
    if d_min is not None:
        bad |= data.d < d_min
    if d_max is not None:
        bad |= data.d > d_max
    return bad


def cell_outlier_datasets(cells: list[gemmi.UnitCell], max_length_percent: float, max_angle_deg: float) -> dict[int, str]:
    """Datasets whose cell is far from the consensus (median) cell of all datasets, with the reason.

    Needs ≥ 3 datasets (with two there is no majority)."""
    if len(cells) < 3:
        return {}
    parameters = np.array([c.parameters for c in cells], float)
    median = np.median(parameters, axis=0)
    length_percent = 100.0 * np.abs(parameters[:, :3] / median[:3] - 1.0)
    angle_deg = np.abs(parameters[:, 3:] - median[3:])
    outliers = {}
    for k in np.nonzero((length_percent.max(axis=1) > max_length_percent) | (angle_deg.max(axis=1) > max_angle_deg))[0]:
        cell = ", ".join(f"{v:.2f}" for v in parameters[k])
        consensus = ", ".join(f"{v:.2f}" for v in median)
        outliers[int(k)] = (f"cell ({cell}) differs from the consensus ({consensus}) by up to "
                            f"{length_percent[k].max():.1f} % in length and {angle_deg[k].max():.1f}° in angle")
    return outliers
