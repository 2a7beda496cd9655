"""Synthetic multi-crystal scaling input with exact truth (Wilson intensities, smooth scale and B per
image, Gaussian noise with an error model a, b, scrambled images, a non-isomorphous crystal), and
crystals indexed in known alternative settings (indexing ambiguity)."""
from __future__ import annotations

from dataclasses import dataclass

import gemmi
import numpy as np

from algorithms.merging.symmetry import map_to_asu, point_group_rotations
from algorithms.scaling.data import CorrectedIntensities, DatasetScan, ScalingData

MYD88_CELL = (99.06, 31.01, 54.30, 90.0, 107.7, 90.0)


@dataclass
class SimulatedScaling:
    data: ScalingData
    true_intensity: np.ndarray  # per unique ASU reflection (row of asu_index)
    asu_index: np.ndarray
    true_g: np.ndarray  # per observation
    observation_truth: np.ndarray  # per observation: the true (merged) intensity it measures
    corrupted_images: set  # {(dataset, image_number)}
    bad_dataset: int | None
    error_a: float
    error_b: float


def simulate_scaling(n_datasets: int = 18, n_images: int = 72, width_deg: float = 0.9149, obs_per_dataset: int = 2000,
                     d_min: float = 3.0, error_a: float = 1.5, error_b: float = 0.04, background_sigma: float = 15.0,
                     corrupted_images: dict | None = None, bad_dataset: int | None = None,
                     non_isomorphous_fraction: float = 0.8, drift: bool = True, seed: int = 0) -> SimulatedScaling:
    """``corrupted_images`` maps dataset → list of 1-based image numbers whose intensities are scrambled;
    ``drift=False`` keeps each crystal's scale and B constant over its sweep."""
    rng = np.random.default_rng(seed)
    cell, sg = gemmi.UnitCell(*MYD88_CELL), gemmi.SpaceGroup("C 1 2 1")
    asu = gemmi.make_miller_array(cell, sg, d_min, 0).astype(np.int64)
    d_asu = np.asarray(cell.calculate_d_array(asu.astype(np.int32)))
    wilson_mean = 3000.0 * np.exp(-15.0 / (2 * d_asu**2))
    truth = rng.exponential(wilson_mean)
    other_truth = (1 - non_isomorphous_fraction) * truth + non_isomorphous_fraction * rng.exponential(wilson_mean)
    rotations = point_group_rotations(sg)
    columns = {k: [] for k in ("dataset", "hkl", "z", "d", "true", "g", "i_prf", "v_prf", "i_sum", "v_sum", "s0c", "s1c")}
    corrupted = set()
    for k in range(n_datasets):
        n_obs = int(obs_per_dataset * rng.uniform(0.9, 1.1))
        rows = rng.choice(len(asu), n_obs, replace=False)
        op = rotations[rng.integers(0, len(rotations), n_obs)]
        sign = rng.choice([-1, 1], n_obs)[:, None]
        original = np.einsum("ni,nij->nj", asu[rows], op) * sign
        z = rng.uniform(0, n_images, n_obs)
        phase = rng.uniform(0, 2 * np.pi)
        along = 1.0 if drift else 0.0
        scale = rng.uniform(0.5, 2.0) * (1 + along * 0.25 * np.sin(2 * np.pi * z / (1.3 * n_images) + phase))
        b_factor = -along * rng.uniform(0.0, 8.0) * z / n_images - rng.uniform(0, 3)
        d = d_asu[rows]
        g = scale * np.exp(b_factor / (2 * d**2))
        true_i = (other_truth if k == bad_dataset else truth)[rows]
        mean_obs = g * true_i
        sigma2 = np.maximum(mean_obs, 0) + background_sigma**2
        noise_sd = error_a * np.sqrt(sigma2 + (error_b * mean_obs) ** 2)
        i_prf = mean_obs + rng.normal(0, 1, n_obs) * noise_sd
        i_sum = i_prf + rng.normal(0, 1, n_obs) * 0.7 * noise_sd
        image = np.floor(z).astype(int) + 1
        for bad_image in (corrupted_images or {}).get(k, []):
            on_image = np.nonzero(image == bad_image)[0]
            shuffled = rng.permutation(on_image)
            i_prf[on_image], i_sum[on_image] = i_prf[shuffled], i_sum[shuffled]
            corrupted.add((k, bad_image))
        phi = np.deg2rad(z * width_deg)
        s0c = np.stack([np.cos(-phi), np.sin(-phi), np.zeros(n_obs)], axis=1)
        s1c = s0c + 0.01 * rng.normal(0, 1, (n_obs, 3))
        for key, value in (("dataset", np.full(n_obs, k)), ("hkl", original), ("z", z), ("d", d), ("true", true_i),
                           ("g", g), ("i_prf", i_prf), ("v_prf", sigma2), ("i_sum", i_sum), ("v_sum", 1.49 * sigma2),
                           ("s0c", s0c), ("s1c", s1c / np.linalg.norm(s1c, axis=1, keepdims=True))):
            columns[key].append(value)
    c = {key: np.concatenate(value) for key, value in columns.items()}
    scans = [DatasetScan(0.0, width_deg, (1, n_images)) for _ in range(n_datasets)]
    data = ScalingData(dataset=c["dataset"], miller_index=c["hkl"],
                       intensities=CorrectedIntensities(c["i_sum"], c["v_sum"], c["i_prf"], c["v_prf"]),
                       z_obs=c["z"], d=c["d"], partiality=np.ones(len(c["z"])), scans=scans, space_group=sg,
                       unit_cell=cell, s0c=c["s0c"], s1c=c["s1c"])
    return SimulatedScaling(data=data, true_intensity=truth, asu_index=asu, true_g=c["g"], observation_truth=c["true"],
                            corrupted_images=corrupted, bad_dataset=bad_dataset, error_a=error_a, error_b=error_b)


def simulate_ambiguous_crystals(cell, space_group, settings, true_symmetry=None, n_obs=500, d_min=3.0, seed=0):
    """Crystals observing random symmetry equivalents of one set of true intensities, each then
    indexed in its own setting: observed h = P·h_true with P = settings[k] (None = as is).

    ``true_symmetry``: space group whose ASU the true intensities are drawn in (a higher symmetry
    than ``space_group`` makes the alternative indexings true symmetries of the data)."""
    rng = np.random.default_rng(seed)
    sg = gemmi.SpaceGroup(space_group)
    asu = gemmi.make_miller_array(cell, sg, d_min, 0).astype(np.int64)
    d = np.asarray(cell.calculate_d_array(asu.astype(np.int32)))
    mean = 1000.0 * np.exp(-10.0 / (2 * d**2))
    if true_symmetry is None:
        truth = rng.exponential(mean)
    else:
        mapping = map_to_asu(asu, gemmi.SpaceGroup(true_symmetry))
        truth = rng.exponential(1.0, len(mapping.unique_asu_index))[mapping.group] * mean
    rotations = point_group_rotations(sg)
    columns = {"dataset": [], "hkl": [], "intensity": [], "d": []}
    for k, setting in enumerate(settings):
        rows = rng.choice(len(asu), n_obs, replace=False)
        hkl = np.einsum("ni,nij->nj", asu[rows], rotations[rng.integers(0, len(rotations), n_obs)])
        scale = rng.uniform(0.3, 3.0) * np.exp(-rng.uniform(0, 10) / (2 * d[rows] ** 2))
        intensity = scale * truth[rows] + rng.normal(0, 1, n_obs) * np.sqrt(scale * truth[rows] + 20.0)
        if setting is not None:
            hkl = hkl @ np.asarray(setting).T
        for key, value in (("dataset", np.full(n_obs, k)), ("hkl", hkl), ("intensity", intensity), ("d", d[rows])):
            columns[key].append(value)
    return {key: np.concatenate(value) for key, value in columns.items()}, sg


def merged_against_truth(sim, result) -> tuple[np.ndarray, np.ndarray]:
    """Merged scaled intensities of the observations scaling kept (I/g, σ²/g²) and the true
    merged intensities of the same unique reflections."""
    from algorithms.merging import merge_intensities

    keep = result.scaled
    mapping = map_to_asu(sim.data.miller_index[keep], sim.data.space_group)
    g = result.inverse_scale_factor[keep]
    merged = merge_intensities(mapping.group, result.intensity[keep] / g, result.variance[keep] / g**2,
                               len(mapping.unique_asu_index))
    truth_row = {tuple(h): i for i, h in enumerate(sim.asu_index.tolist())}
    truth = sim.true_intensity[[truth_row[tuple(h)] for h in mapping.unique_asu_index.tolist()]]
    return merged.intensity, truth
