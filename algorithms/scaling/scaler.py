"""Joint scaling of many datasets with optional ΔCC½ filtering (the sequence of dials.scale).

One scaling run (Beilsten-Edmands et al. 2020, Acta D 76:385):
  1. L-BFGS on all model parameters (reflections with partiality > 0.95 in groups with n ≥ 2 and
     ⟨I/σ⟩ ≥ Isigma_cutoff);
  2. scales for all reflections, outlier rejection, profile/summation combination (lowest Rmeas;
     chosen in the first run and kept by later filtering cycles);
  3. L-BFGS again, outlier rejection, error-model refinement;
  4. (final run only) full-matrix Levenberg–Marquardt with ``fix_initial`` → parameter covariance;
  5. scales and Var(g) for all reflections, outlier rejection, error model re-evaluated.
With ``filtering_method = 'deltacchalf'`` runs 1–3, 5 alternate with ΔCC½ analysis and removal
(:mod:`delta_cc_half`) until nothing is removed, more than max_percent_removed % of the reflections
are gone, completeness drops below min_completeness, or max_cycles is reached; then a final full run.

Beyond DIALS (ewald): ΔCC½ is computed with the outlier-rejected observations included (an image of
scrambled intensities otherwise hides behind its rejected outliers; ``include_outliers_in_delta_cc_half``);
in image_group mode, blocks below the cutoff are removed anywhere in the sweep
(``image_group_removal = 'anywhere'``; DIALS' ``'edges'`` rule is an option), and a crystal whose
whole-crystal ΔCC½ is negative and below a robust cutoff (median − stdcutoff·1.4826·MAD) is removed
as non-isomorphous; so is, before scaling, a crystal whose refined cell is far from the consensus
(median) cell (``max_cell_deviation_percent`` of a length or ``max_cell_deviation_deg``).
Groups are judged against a robust cutoff, median − stdcutoff·1.4826·MAD of ΔCC½, and only if their
ΔCC½ is negative (``cutoff_rule = 'robust'``; DIALS' mean − stdcutoff·SD is ``'mean_sd'``).
In image_group mode a second test (``intensity_ratio_filter``) removes, in the same cycle, blocks whose
intensities are systematically below the model (Σ I/g over Σ Ĩ of the other observations below
median − stdcutoff·1.4826·MAD across blocks, and by at least ``intensity_ratio_min_deviation``; above
too with ``intensity_ratio_flag_excess``):
a frame without diffraction leaves the reflections centred on it uniformly weak, which ΔCC½ barely sees.
Observations whose inverse scale g falls below ``min_relative_inverse_scale`` (0.1) × the median g of
their crystal are excluded after every minimisation: there the smooth scale extrapolates towards zero
where a crystal stops diffracting, and I/g explodes (DIALS has no such rule; None switches it off).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import gemmi
import numpy as np

from algorithms.errors import DataError
from algorithms.merging.statistics import MergingStatistics, merging_statistics
from algorithms.merging.symmetry import map_to_asu
from algorithms.scaling.combine import PROFILE_ONLY, SUM_ONLY, choose_combination, combine_intensities
from algorithms.scaling.data import ScalingData, cell_outlier_datasets, excluded_for_scaling
from algorithms.scaling.delta_cc_half import (cutoff, delta_cc_half, edge_groups_below, group_intensity_ratios, image_groups,
                                              ratio_outliers, resolution_bins_inverse_d2, robust_cutoff)
from algorithms.scaling.error_model import ErrorModel, refine_error_model
from algorithms.scaling.grouping import weighted_group_means
from algorithms.scaling.model import ModelOptions, PhysicalModel
from algorithms.scaling.outliers import standard_outliers, wilson_outliers
from algorithms.scaling.target import ScalingTarget, inverse_scale_variance, minimise_lbfgs, minimise_levmar


@dataclass
class ScalingOptions:
    """dials.scale parameters (same names and defaults) plus ewald's filtering extensions."""

    d_min: float | None = None
    d_max: float | None = None
    partiality_cutoff: float = 0.4
    min_isigi: float = -5.0
    # ewald: observations whose g < this × the median g of their crystal are excluded (None = keep, as DIALS)
    min_relative_inverse_scale: float | None = 0.1
    model: ModelOptions = field(default_factory=ModelOptions)
    fix_initial: bool = True
    intensity_choice: str = "combine"  # combine | profile | sum
    error_model: str | None = "basic"
    min_Ih: float = 25.0
    # ewald: min_Ih in counts of the integrated intensity (× LP/QE); False = DIALS (LP-corrected units)
    min_Ih_in_counts: bool = True
    error_model_n_bins: int = 10
    outlier_rejection: str | None = "standard"
    outlier_zmax: float = 6.0
    full_matrix: bool = True
    Isigma_cutoff: float = 1.0
    min_partiality: float = 0.95  # reflections used to refine the model (DIALS: "min_partiality > 0.95")
    lbfgs_tolerance: float = 1e-7
    rmsd_tolerance: float = 1e-4
    filtering_method: str | None = None  # None | deltacchalf
    max_cycles: int = 6
    max_percent_removed: float = 10.0
    min_completeness: float | None = None
    mode: str = "dataset"  # dataset | image_group
    group_size: int = 10
    stdcutoff: float = 4.0
    cutoff_rule: str = "robust"  # robust (ewald): median − stdcutoff·1.4826·MAD and ΔCC½ < 0 | mean_sd (DIALS)
    image_group_removal: str = "anywhere"  # anywhere (ewald) | edges (DIALS)
    remove_non_isomorphous: bool = True
    include_outliers_in_delta_cc_half: bool = True  # ewald; DIALS analyses only non-outliers
    intensity_ratio_filter: bool = True  # ewald: image_group mode, also remove blocks below the model's intensity
    intensity_ratio_min_deviation: float = 0.1  # least median − ratio flagged, whatever the MAD
    intensity_ratio_min_observations: int = 20  # blocks with fewer strong observations are not judged
    intensity_ratio_flag_excess: bool = False  # also remove blocks above the model (not only below)
    max_cell_deviation_percent: float | None = 5.0  # ewald: drop crystals whose cell is off the consensus
    max_cell_deviation_deg: float = 5.0
    seed: int = 0


@dataclass
class DatasetModelResult:
    scale: np.ndarray
    scale_esd: np.ndarray
    decay: np.ndarray
    decay_esd: np.ndarray
    absorption: np.ndarray
    absorption_esd: np.ndarray
    scale_rot_interval_deg: float
    decay_rot_interval_deg: float | None


@dataclass
class FilteringCycle:
    cycle: int
    cc_half: float  # σ-τ CC½ of the data analysed in this cycle
    completeness: float  # % of the analysed data
    mean_delta_cc_half: float
    sd_delta_cc_half: float
    cutoff: float
    group_dataset: np.ndarray  # one entry per analysed group
    group_first_image: np.ndarray
    group_last_image: np.ndarray
    delta_cc_half: np.ndarray
    removed_ranges: list  # (dataset, first image, last image)
    below_cutoff_kept: list  # (dataset, first, last) below the cutoff but not removed (edge rule)
    removed_datasets: list
    dataset_delta_cc_half: np.ndarray | None
    n_removed: int
    cumulative_percent_removed: float
    intensity_ratio: np.ndarray | None = None  # per group: Σ I/g / Σ Ĩ (NaN = too few observations)
    intensity_ratio_limits: tuple | None = None  # (lower, upper)
    removed_by_ratio: list = field(default_factory=list)  # (dataset, first, last, ratio)


@dataclass
class FilteringResult:
    cycles: list[FilteringCycle]
    termination_reason: str
    removed_ranges: list
    removed_datasets: list
    n_initial_reflections: int
    n_removed_reflections: int

    def as_dict(self) -> dict:
        """Plain JSON-ready values (the content of DIALS' scale_and_filter_results.json)."""
        cycles = [{"cycle": c.cycle, "cc_half": c.cc_half, "completeness": c.completeness,
                   "mean_delta_cc_half": c.mean_delta_cc_half, "sd_delta_cc_half": c.sd_delta_cc_half,
                   "cutoff": c.cutoff, "n_removed": c.n_removed,
                   "cumulative_percent_removed": c.cumulative_percent_removed,
                   "removed_image_ranges": [list(r) for r in c.removed_ranges],
                   "below_cutoff_kept": [list(r) for r in c.below_cutoff_kept],
                   "removed_datasets": list(c.removed_datasets),
                   "groups": {"dataset": c.group_dataset.tolist(), "first_image": c.group_first_image.tolist(),
                              "last_image": c.group_last_image.tolist(), "delta_cc_half": c.delta_cc_half.tolist()},
                   "dataset_delta_cc_half": None if c.dataset_delta_cc_half is None else c.dataset_delta_cc_half.tolist(),
                   "intensity_ratio": None if c.intensity_ratio is None else
                   [None if not np.isfinite(v) else float(v) for v in c.intensity_ratio],
                   "intensity_ratio_limits": None if c.intensity_ratio_limits is None else list(c.intensity_ratio_limits),
                   "removed_by_intensity_ratio": [list(r) for r in c.removed_by_ratio]}
                  for c in self.cycles]
        return {"cycles": cycles, "termination_reason": self.termination_reason,
                "removed_image_ranges": [list(r) for r in self.removed_ranges],
                "removed_datasets": list(self.removed_datasets),
                "n_initial_reflections": self.n_initial_reflections, "n_removed_reflections": self.n_removed_reflections}


@dataclass
class ScalingResult:
    inverse_scale_factor: np.ndarray
    inverse_scale_factor_variance: np.ndarray
    intensity: np.ndarray  # combined, corrected, not divided by g (intensity.scale.value)
    variance: np.ndarray  # error-model adjusted (intensity.scale.variance)
    asu_index: np.ndarray
    isym: np.ndarray
    excluded_for_scaling: np.ndarray  # DIALS flag excluded_for_scaling (§8.2 rules, and low_scale)
    user_excluded: np.ndarray  # excluded by the user, by the cell check or by ΔCC½ filtering
    outlier: np.ndarray  # DIALS flag outlier_in_scaling (standard rejection and Wilson E²)
    scaled: np.ndarray  # in the final scaled data: not excluded, not removed, not an outlier, g > 0
    parameters: np.ndarray
    models: list[DatasetModelResult]
    error_model: ErrorModel
    imid: float
    combination_table: list
    valid_image_ranges: list[list[tuple[int, int]]]
    filtering: FilteringResult | None
    merging_statistics: MergingStatistics | None
    cell_outliers: dict = field(default_factory=dict)  # dataset → reason, removed before scaling
    low_scale: np.ndarray | None = None  # excluded because g fell below min_relative_inverse_scale × median
    model_options: ModelOptions = field(default_factory=ModelOptions)
    history: list = field(default_factory=list)

    def summary(self) -> dict:
        return {"n_scaled": int(self.scaled.sum()), "n_outliers": int(self.outlier.sum()),
                "n_excluded": int(self.excluded_for_scaling.sum()), "n_user_excluded": int(self.user_excluded.sum()),
                "n_low_scale": int(self.low_scale.sum()) if self.low_scale is not None else 0,
                "error_model": {"a": self.error_model.a, "b": self.error_model.b, "isa": self.error_model.isa,
                                "refined": self.error_model.refined},
                "imid": self.imid, "valid_image_ranges": self.valid_image_ranges,
                "removed_datasets": self.filtering.removed_datasets if self.filtering else [],
                "cell_outliers": {str(k): v for k, v in self.cell_outliers.items()},
                "removed_image_ranges": self.filtering.removed_ranges if self.filtering else []}


class _JointScaler:
    """State shared by the scaling runs and filtering cycles."""

    def __init__(self, data: ScalingData, options: ScalingOptions):
        if data.n_datasets == 0 or len(data) == 0:
            raise DataError("scaling: no reflections to scale; check that integration produced intensities")
        self.data, self.options = data, options
        self.mapping = map_to_asu(data.miller_index, data.space_group)
        self.group, self.n_groups = self.mapping.group, len(self.mapping.unique_asu_index)
        self.excluded = excluded_for_scaling(data, options.d_min, options.d_max, options.partiality_cutoff, options.min_isigi)
        self.removed = data.user_excluded.copy()
        self.cell_outliers = {}
        if options.max_cell_deviation_percent is not None and data.dataset_cells is not None:
            self.cell_outliers = cell_outlier_datasets(data.dataset_cells, options.max_cell_deviation_percent,
                                                       options.max_cell_deviation_deg)
            self.removed |= np.isin(data.dataset, list(self.cell_outliers))
        self.model = PhysicalModel(data, options.model)
        self.parameters = self.model.initial_parameters()
        self.imid = {"combine": PROFILE_ONLY, "profile": PROFILE_ONLY, "sum": SUM_ONLY}[options.intensity_choice]
        self.intensity, self.raw_variance = combine_intensities(data.intensities, self.imid)
        self.excluded |= ~(self.raw_variance > 0)
        self.low_scale = np.zeros(len(data), bool)
        self.error_model = ErrorModel()
        self.combination_table: list = []
        self.covariance = np.zeros((self.model.n_parameters, self.model.n_parameters))
        self.history: list = []
        ops = data.space_group.operations()
        centric = self.mapping.centric[self.group]
        epsilon = np.asarray(ops.epsilon_factor_without_centering_array(self.mapping.asu_index.astype(np.int32)), float)
        self.wilson_outlier = wilson_outliers(self.intensity, data.d, centric, epsilon, self.usable)
        self.outlier = self.wilson_outlier.copy()
        d_unique = np.asarray(data.unit_cell.calculate_d_array(self.mapping.unique_asu_index.astype(np.int32)))
        self.d_unique = d_unique

    @property
    def usable(self) -> np.ndarray:
        return ~self.excluded & ~self.removed

    @property
    def variance(self) -> np.ndarray:
        """Error-model variances; the b term uses the expected intensity g·Ĩ_h (as when the model was
        fitted), the observation's own intensity where h was measured once."""
        g = self.model.inverse_scale(self.parameters)
        mean, _, n = weighted_group_means(self.group, self.n_groups, self.intensity / g, self.raw_variance / g**2,
                                          self.usable & ~self.outlier & (self.raw_variance > 0))
        expected = np.where(n[self.group] >= 2, g * mean[self.group], self.intensity)
        return self.error_model.adjust_variance(self.raw_variance, expected)

    @property
    def active(self) -> np.ndarray:
        return self.usable & ~self.outlier

    def _selection_weights(self) -> np.ndarray:
        """1/σ² for reflections used in minimisation: partiality > min_partiality, in groups with ≥ 2
        such members and ⟨I/σ⟩ ≥ Isigma_cutoff (partials at the sweep ends would bias the edge scales)."""
        active = self.active & (self.data.partiality > self.options.min_partiality)
        variance = self.variance
        n = np.bincount(self.group, active.astype(float), self.n_groups)
        ratio = np.divide(self.intensity, np.sqrt(np.abs(variance)), out=np.zeros(len(variance)), where=active & (variance > 0))
        i_over_sigma = np.bincount(self.group, ratio, self.n_groups)
        mean_i_over_sigma = i_over_sigma / np.maximum(n, 1)
        selected = active & (n[self.group] >= 2) & (mean_i_over_sigma[self.group] >= self.options.Isigma_cutoff)
        return np.divide(1.0, variance, out=np.zeros(len(variance)), where=selected & (variance > 0))

    def _target(self) -> ScalingTarget:
        return ScalingTarget(self.model, self.group, self.n_groups, self.intensity, self._selection_weights(), self.history)

    def _lbfgs(self) -> None:
        self.parameters = minimise_lbfgs(self._target(), self.parameters, self.options.lbfgs_tolerance)

    def _exclude_low_scales(self) -> None:
        """Exclude observations whose g is below min_relative_inverse_scale × their crystal's median g.

        Where a crystal stops diffracting (it leaves the beam or dies) the smooth scale falls towards
        zero and is fitted by a few weak reflections; dividing by such a g multiplies both the noise
        and any error of the extrapolated g (which σ does not contain), and the exploding I/g ruin
        merging (real cRED lysozyme: CC½ 0.01 → 0.69 by dropping them). The median is over the crystal's
        usable observations, so the rule does not depend on the overall scale or on the units."""
        fraction = self.options.min_relative_inverse_scale
        if fraction is None:
            return
        g = self.model.inverse_scale(self.parameters)
        usable = self.usable
        median = np.zeros(self.data.n_datasets)
        for k in np.unique(self.data.dataset[usable]):  # loop over datasets
            median[k] = np.median(g[usable & (self.data.dataset == k)])
        low = usable & (g < fraction * median[self.data.dataset])
        self.low_scale |= low
        self.excluded |= low

    def _reject_outliers(self) -> None:
        """After every minimisation: low-scale exclusion, then outlier rejection with the new scales."""
        self._exclude_low_scales()
        self.outlier = self.wilson_outlier.copy()
        if self.options.outlier_rejection == "standard":
            g = self.model.inverse_scale(self.parameters)
            self.outlier |= standard_outliers(self.group, self.n_groups, self.intensity, self.variance, g,
                                              self.usable & ~self.wilson_outlier, self.options.outlier_zmax)

    def _refine_error_model(self) -> None:
        if self.options.error_model != "basic":
            return
        g = self.model.inverse_scale(self.parameters)
        self.error_model = refine_error_model(self.group, self.n_groups, self.intensity, self.raw_variance, g,
                                              self.active, self.data.partiality, self.options.min_Ih,
                                              self.options.error_model_n_bins, self._min_Ih_unit())

    def _min_Ih_unit(self) -> np.ndarray | float:
        if self.options.min_Ih_in_counts and self.data.conversion is not None:
            return self.data.conversion
        return 1.0

    def run(self, full_matrix: bool) -> None:
        """One scaling run (steps 1–3 and 5; step 4 when ``full_matrix``)."""
        self._lbfgs()
        self._reject_outliers()
        if self.options.intensity_choice == "combine" and not self.combination_table:
            # Chosen once, in the first run: filtering cycles change the data only slightly.
            g = self.model.inverse_scale(self.parameters)
            self.imid, self.combination_table = choose_combination(self.data.intensities, self.group, self.n_groups,
                                                                   g, self.usable & ~self.outlier)
            self.intensity, self.raw_variance = combine_intensities(self.data.intensities, self.imid)
        self._lbfgs()
        self._reject_outliers()
        self._refine_error_model()
        if full_matrix:
            fixed = np.zeros(self.model.n_parameters, bool)
            if self.options.fix_initial:
                for layout in self.model.layouts:
                    fixed[layout.scale_slice.start] = True
            self.parameters, self.covariance = minimise_levmar(self._target(), self.parameters, fixed,
                                                               self.options.rmsd_tolerance)
        self._reject_outliers()
        self._refine_error_model()

    def completeness(self, active: np.ndarray) -> float:
        groups = np.unique(self.group[active])
        if len(groups) == 0:
            return 0.0
        d = self.d_unique[groups]
        complete = gemmi.make_miller_array(self.data.unit_cell, self.data.space_group, float(d.min()) * (1 - 1e-6),
                                           float(d.max()) * (1 + 1e-6))
        return 100.0 * len(groups) / max(len(complete), 1)


def _below_cutoff(values: np.ndarray, options: ScalingOptions) -> tuple[np.ndarray, float]:
    """Groups to remove and the cutoff. DIALS: ΔCC½ < mean − stdcutoff·SD. ewald ('robust'):
    ΔCC½ < median − stdcutoff·1.4826·MAD and < 0, because with few groups (real cRED lysozyme: 8
    groups of 10 images from 2 crystals) one very bad group inflates the SD so much that mean − 4·SD flags nothing
    (real cRED lysozyme: ΔCC½ −0.587 among values of ~0.01), and a group that raises CC½ is never bad."""
    if options.cutoff_rule == "mean_sd":
        limit = cutoff(values, options.stdcutoff)
        return values < limit, limit
    limit = robust_cutoff(values, options.stdcutoff)
    return (values < limit) & (values < 0), limit


def _analyse_and_remove(scaler: _JointScaler, cycle: int, n_initial: int, removed_so_far: int) -> FilteringCycle:
    options, data = scaler.options, scaler.data
    # An image whose intensities are scrambled loses its worst observations to outlier rejection and
    # then looks harmless; analysing the outliers too keeps the evidence (ewald's default).
    active = (scaler.usable & ~scaler.wilson_outlier) if options.include_outliers_in_delta_cc_half else scaler.active
    g = scaler.model.inverse_scale(scaler.parameters)
    idx = np.nonzero(active)[0]
    reflection = scaler.group[idx]
    scaled = scaler.intensity[idx] / g[idx]
    bins = resolution_bins_inverse_d2(scaler.d_unique)
    image = data.image_number()
    completeness = scaler.completeness(active)

    def dataset_delta(keep=None):
        rows = idx if keep is None else idx[keep]
        sub = np.ones(len(idx), bool) if keep is None else keep
        present = np.unique(data.dataset[rows])
        lookup = np.full(data.n_datasets, -1)
        lookup[present] = np.arange(len(present))
        cc, delta = delta_cc_half(reflection[sub], scaler.n_groups, scaled[sub], lookup[data.dataset[rows]], len(present), bins)
        return cc, present, delta

    removed_ranges, kept_below, removed_datasets = [], [], []
    dataset_values = ratio = ratio_limits = None
    removed_by_ratio = []
    if options.mode == "dataset":
        cc_all, present, delta = dataset_delta()
        group_dataset = present
        first = np.array([data.scans[k].image_range[0] for k in present])
        last = np.array([data.scans[k].image_range[1] for k in present])
        below, limit = _below_cutoff(delta, options)
        removed_datasets = [int(k) for k in present[below]]
    else:
        groups = image_groups(data.dataset, image, active, data.n_datasets, options.group_size)
        cc_all, delta = delta_cc_half(reflection, scaler.n_groups, scaled, groups.group[idx], len(groups.dataset), bins)
        group_dataset, first, last = groups.dataset, groups.first_image, groups.last_image
        judged = np.ones(len(delta), bool)
        if options.remove_non_isomorphous and len(np.unique(data.dataset[idx])) > 2:
            # Judge whole crystals without their already-suspect image blocks, so that a few bad images
            # do not condemn a crystal; then judge blocks without the blocks of removed crystals, which
            # would inflate the spread.
            suspect, _ = _below_cutoff(delta, options)
            _, present, dataset_values = dataset_delta(~suspect[groups.group[idx]])
            outlying = (dataset_values < robust_cutoff(dataset_values, options.stdcutoff)) & (dataset_values < 0)
            removed_datasets = [int(k) for k in present[outlying]]
            judged = ~np.isin(group_dataset, removed_datasets)
        below_judged, limit = _below_cutoff(delta[judged], options)
        below = np.zeros(len(delta), bool)
        below[np.nonzero(judged)[0]] = below_judged
        if options.intensity_ratio_filter:
            variance = scaler.variance[idx] / g[idx] ** 2
            ratio = group_intensity_ratios(reflection, scaler.n_groups, scaled, variance, groups.group[idx], len(delta),
                                           options.intensity_ratio_min_observations)
            ratio[~judged] = np.nan
            off_model, lower, upper = ratio_outliers(ratio, options.stdcutoff, options.intensity_ratio_min_deviation,
                                                     options.intensity_ratio_flag_excess)
            ratio_limits = (lower, upper)
            below |= off_model
        remove = edge_groups_below(groups, below) if options.image_group_removal == "edges" else below
        removed_ranges = [(int(k), int(a), int(b)) for k, a, b in zip(group_dataset[remove], first[remove], last[remove])]
        kept_below = [(int(k), int(a), int(b)) for k, a, b in zip(group_dataset[below & ~remove], first[below & ~remove],
                                                                   last[below & ~remove])]
        if ratio is not None:
            by_ratio = remove & off_model
            removed_by_ratio = [(int(k), int(a), int(b), float(r)) for k, a, b, r in
                                zip(group_dataset[by_ratio], first[by_ratio], last[by_ratio], ratio[by_ratio])]

    newly = np.zeros(len(data), bool)
    for k in removed_datasets:
        newly |= data.dataset == k
    for k, a, b in removed_ranges:
        newly |= (data.dataset == k) & (image >= a) & (image <= b)
    newly &= scaler.usable
    n_removed = int(newly.sum())
    scaler.removed |= newly
    removed_ranges = [r for r in removed_ranges if r[0] not in removed_datasets]
    return FilteringCycle(cycle=cycle, cc_half=cc_all, completeness=completeness, mean_delta_cc_half=float(np.mean(delta)),
                          sd_delta_cc_half=float(np.std(delta)), cutoff=limit, group_dataset=group_dataset,
                          group_first_image=first, group_last_image=last, delta_cc_half=delta,
                          removed_ranges=removed_ranges, below_cutoff_kept=kept_below, removed_datasets=removed_datasets,
                          dataset_delta_cc_half=dataset_values, n_removed=n_removed,
                          cumulative_percent_removed=100.0 * (removed_so_far + n_removed) / max(n_initial, 1),
                          intensity_ratio=ratio, intensity_ratio_limits=ratio_limits,
                          removed_by_ratio=[r for r in removed_by_ratio if r[0] not in removed_datasets])


def _valid_image_ranges(data: ScalingData, removed_datasets: list, removed_ranges: list) -> list[list[tuple[int, int]]]:
    result = []
    for k, scan in enumerate(data.scans):
        if k in removed_datasets:
            result.append([])
            continue
        keep = np.ones(scan.n_images, bool)
        for kk, a, b in removed_ranges:
            if kk == k:
                keep[a - scan.image_range[0]: b - scan.image_range[0] + 1] = False
        images = np.arange(scan.image_range[0], scan.image_range[1] + 1)[keep]
        breaks = np.nonzero(np.diff(images) > 1)[0]
        starts = np.concatenate([[0], breaks + 1]) if len(images) else []
        ends = np.concatenate([breaks, [len(images) - 1]]) if len(images) else []
        result.append([(int(images[s]), int(images[e])) for s, e in zip(starts, ends)])
    return result


_CHOICES = {"intensity_choice": ("combine", "profile", "sum"), "error_model": (None, "basic"),
            "outlier_rejection": (None, "standard"), "filtering_method": (None, "deltacchalf"),
            "mode": ("dataset", "image_group"), "image_group_removal": ("anywhere", "edges"),
            "cutoff_rule": ("robust", "mean_sd")}


def _check_options(options: ScalingOptions) -> None:
    for name, allowed in _CHOICES.items():
        value = getattr(options, name)
        if value not in allowed:
            raise DataError(f"scaling: {name}={value!r} is not one of {', '.join(map(str, allowed))}; choose one of those")


def scale_and_filter(data: ScalingData, options: ScalingOptions | None = None, with_merging_statistics: bool = True) -> ScalingResult:
    """Scale all datasets jointly (and filter by ΔCC½ if asked); see the module docstring."""
    options = options or ScalingOptions()
    _check_options(options)
    scaler = _JointScaler(data, options)
    filtering = None
    if options.filtering_method == "deltacchalf":
        n_initial = int(scaler.usable.sum())
        cycles, removed_total, reason = [], 0, "max_cycles"
        for cycle in range(1, options.max_cycles + 1):
            scaler.run(full_matrix=False)
            record = _analyse_and_remove(scaler, cycle, n_initial, removed_total)
            cycles.append(record)
            removed_total += record.n_removed
            if record.n_removed == 0:
                reason = "no_more_removed"
                break
            if record.cumulative_percent_removed > options.max_percent_removed:
                reason = "max_percent_removed"
                break
            if options.min_completeness is not None and scaler.completeness(scaler.active) < options.min_completeness:
                reason = "min_completeness"
                break
        removed_datasets = sorted({k for c in cycles for k in c.removed_datasets})
        removed_ranges = [r for c in cycles for r in c.removed_ranges if r[0] not in removed_datasets]
        filtering = FilteringResult(cycles=cycles, termination_reason=reason, removed_ranges=removed_ranges,
                                    removed_datasets=removed_datasets, n_initial_reflections=n_initial,
                                    n_removed_reflections=removed_total)
    scaler.run(full_matrix=options.full_matrix)

    p = scaler.parameters
    g = scaler.model.inverse_scale(p)
    var_g = inverse_scale_variance(scaler.model, p, scaler.covariance, data.dataset)
    esd = np.sqrt(np.maximum(np.diag(scaler.covariance), 0.0))
    models = [DatasetModelResult(scale=p[l.scale_slice], scale_esd=esd[l.scale_slice], decay=p[l.decay_slice],
                                 decay_esd=esd[l.decay_slice], absorption=p[l.absorption_slice],
                                 absorption_esd=esd[l.absorption_slice], scale_rot_interval_deg=l.scale_axis.rot_interval_deg,
                                 decay_rot_interval_deg=l.decay_axis.rot_interval_deg if l.decay_axis else None)
              for l in scaler.model.layouts]
    variance = scaler.variance
    scaled = scaler.active & (g > 0)
    stats = None
    if with_merging_statistics and scaled.sum() > 1:
        idx = np.nonzero(scaled)[0]
        stats = merging_statistics(data.miller_index[idx], scaler.intensity[idx] / g[idx], variance[idx] / g[idx] ** 2,
                                   data.unit_cell, data.space_group, seed=options.seed)
    removed_datasets = sorted(set(filtering.removed_datasets if filtering else []) | set(scaler.cell_outliers))
    removed_ranges = filtering.removed_ranges if filtering else []
    return ScalingResult(inverse_scale_factor=g, inverse_scale_factor_variance=var_g, intensity=scaler.intensity,
                         variance=variance, asu_index=scaler.mapping.asu_index, isym=scaler.mapping.isym,
                         excluded_for_scaling=scaler.excluded, user_excluded=scaler.removed, outlier=scaler.outlier,
                         scaled=scaled, parameters=p, models=models, error_model=scaler.error_model, imid=scaler.imid,
                         combination_table=scaler.combination_table,
                         valid_image_ranges=_valid_image_ranges(data, removed_datasets, removed_ranges),
                         filtering=filtering, merging_statistics=stats, cell_outliers=scaler.cell_outliers,
                         low_scale=scaler.low_scale,
                         model_options=options.model,
                         history=scaler.history)
