"""Small integrated (and ideally scaled) data sets with known truth, for scale/export/merge tests.

Each crystal is a real rotation-scan geometry (predicted with algorithms.geometry.prediction); every
observation has a true intensity I_h (Wilson-like, shared by all crystals), a true inverse scale
g = C_k·(1 + s_k·z/N)·exp(B_k·z/N/(2d²)), a partiality p and an LP factor, and its integrated
values are what integration would give: summation counts I_h·g·p/lp, profile counts I_h·g/lp, with
Poisson-like noise (variance = counts + background) drawn from a seeded generator.
"""
from __future__ import annotations

from dataclasses import dataclass

import gemmi
import numpy as np

from algorithms.geometry.models import Beam, Crystal, Detector, Experiment, Goniometer, Scan
from algorithms.geometry.prediction import miller_indices_to_d_min, predict_rotation
from algorithms.reflection_table import Flags, ReflectionTable


@dataclass
class SimulatedDataset:
    experiment: Experiment
    reflections: ReflectionTable
    true_intensity: np.ndarray  # per row, I_h
    true_inverse_scale: np.ndarray  # per row, g


def true_intensities(asu_hkl: np.ndarray, d: np.ndarray, seed: int = 7) -> np.ndarray:
    """I_h for ASU indices: exponential (acentric Wilson) around a falloff, the same for h in every crystal."""
    key = ((asu_hkl[:, 0] + 64) * 128 + asu_hkl[:, 1] + 64) * 128 + asu_hkl[:, 2] + 64
    uniform = np.random.default_rng(seed).random(128**3)[key]
    return 300.0 * np.exp(-8.0 / (4 * d**2)) * (0.05 - np.log1p(-uniform))


def make_dataset(index: int, identifier: str, n_images: int = 30, cell=(12.0, 15.0, 18.0, 90, 90, 90),
                 space_group: str = "P 21 21 21", d_min: float = 1.4, seed: int = 0, scale=1.0, slope=0.2,
                 b_factor=-4.0, image_offset: int = 0) -> SimulatedDataset:
    rng = np.random.default_rng([seed, index])
    beam = Beam(direction=np.array([0.0, 0.0, 1.0]), wavelength=0.9)
    detector = Detector(origin=np.array([-86.0, 86.0, -120.0]), pixel_size=(0.172, 0.172), image_size=(1000, 1000))
    goniometer = Goniometer(rotation_axis=np.array([1.0, 0.0, 0.0]))
    scan = Scan(image_range=(1 + image_offset, n_images + image_offset), oscillation=(10.0 * index, 1.0))
    axis = rng.normal(size=3)
    angle = rng.uniform(0, np.pi)
    k = axis / np.linalg.norm(axis)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    U = np.eye(3) + np.sin(angle) * kx + (1 - np.cos(angle)) * kx @ kx
    crystal = Crystal.from_cell_and_U(cell, U, space_group=space_group)
    hkl = miller_indices_to_d_min(crystal.A, d_min)
    sg = gemmi.SpaceGroup(space_group)
    hkl = hkl[~np.asarray(sg.operations().systematic_absences(hkl.astype(np.int32)), bool)]
    pred = predict_rotation(hkl, crystal.A, beam, detector, goniometer, scan)
    inside = (pred.z_px >= scan.array_range[0] + 0.2) & (pred.z_px < scan.array_range[1] - 0.2)
    pred = pred.select(inside)
    n = len(pred)
    miller = pred.miller_index.astype(np.int64)
    unit_cell = gemmi.UnitCell(*cell)
    d = np.asarray(unit_cell.calculate_d_array(miller.astype(np.int32)))
    asu = gemmi.ReciprocalAsu(sg)
    ops = sg.operations()
    asu_hkl = np.array([asu.to_asu(h, ops)[0] for h in miller.tolist()])
    intensity = true_intensities(asu_hkl, d)
    z_rel = pred.z_px - scan.array_range[0]
    g = scale * (1 + slope * z_rel / n_images) * np.exp(b_factor * z_rel / n_images / (2 * d**2))
    partiality = np.where(rng.random(n) < 0.15, rng.uniform(0.2, 0.99, n), 1.0)
    lp = rng.uniform(0.4, 1.0, n)
    background = 20.0
    full_counts = intensity * g / lp
    sum_counts = full_counts * partiality
    sum_var = sum_counts + background
    prf_var = 0.8 * full_counts + background
    sum_obs = sum_counts + rng.normal(size=n) * np.sqrt(sum_var)
    prf_obs = full_counts + rng.normal(size=n) * np.sqrt(prf_var)
    xyzobs = np.column_stack([pred.xy_px + rng.normal(scale=0.2, size=(n, 2)), pred.z_px + rng.normal(scale=0.1, size=n)])
    flags = np.full(n, int(Flags.integrated_sum | Flags.integrated_prf | Flags.predicted), dtype=np.uint64)
    no_profile = rng.random(n) < 0.05
    flags[no_profile] = np.uint64(int(Flags.integrated_sum | Flags.predicted))
    s1 = np.asarray(pred.s1)
    table = ReflectionTable({
        "id": np.zeros(n, np.int32), "miller_index": miller.astype(np.int32), "entering": pred.entering,
        "panel": np.zeros(n, np.uint64), "d": d, "s1": s1,
        "xyzcal.px": pred.xyzcal_px, "xyzcal.mm": pred.xyzcal_mm, "xyzobs.px.value": xyzobs,
        "xyzobs.px.variance": np.full((n, 3), 0.05),
        "partiality": partiality, "partial_id": np.arange(n, dtype=np.uint64), "lp": lp, "qe": np.ones(n),
        "intensity.sum.value": sum_obs, "intensity.sum.variance": sum_var,
        "intensity.prf.value": np.where(no_profile, 0.0, prf_obs), "intensity.prf.variance": np.where(no_profile, -1.0, prf_var),
        "background.sum.value": np.full(n, background * 9), "background.sum.variance": np.full(n, background * 9),
        "flags": flags,
    }, {0: identifier})
    experiment = Experiment(beam=beam, detector=detector, goniometer=goniometer, scan=scan, crystal=crystal,
                            imageset={"__id__": "ImageSequence", "template": f"sim_{index}_#####.img"},
                            identifier=identifier)
    return SimulatedDataset(experiment, table, intensity, g)


def make_datasets(n_crystals: int = 3, shared_identifier: bool = False, **kw) -> list[SimulatedDataset]:
    scales = [1.0, 0.6, 1.5, 0.8, 1.2, 0.9]
    return [make_dataset(k, "0" if shared_identifier else f"sim-{k}", scale=scales[k % len(scales)], **kw)
            for k in range(n_crystals)]


def ideally_scaled(datasets: list[SimulatedDataset]) -> tuple[list[Experiment], ReflectionTable]:
    """Experiments and one table as ``ewald scale`` writes them, with the true g as the scale.

    intensity.scale.value is the LP-corrected profile intensity (summation/p where profile fitting
    failed), so that I/g estimates the true intensity."""
    experiments, tables = [], []
    for k, data in enumerate(datasets):
        t = data.reflections.copy()
        t.experiment_identifiers = {k: data.experiment.identifier}
        t["id"] = np.full(len(t), k, np.int32)
        has_prf = t.get_flags(Flags.integrated_prf)
        conv = t["lp"] / t["qe"]
        t["intensity.scale.value"] = np.where(has_prf, t["intensity.prf.value"] * conv,
                                              t["intensity.sum.value"] * conv / t["partiality"])
        t["intensity.scale.variance"] = np.where(has_prf, t["intensity.prf.variance"] * conv**2,
                                                 t["intensity.sum.variance"] * conv**2 / t["partiality"] ** 2)
        t["inverse_scale_factor"] = data.true_inverse_scale
        t["inverse_scale_factor_variance"] = (0.01 * data.true_inverse_scale) ** 2
        t.set_flags(np.ones(len(t), bool), Flags.scaled)
        t.set_flags(t["partiality"] < 0.4, Flags.excluded_for_scaling)
        t.unset_flags(t["partiality"] < 0.4, Flags.scaled)
        tables.append(t)
        experiments.append(data.experiment)
    return experiments, ReflectionTable.concat(tables)
