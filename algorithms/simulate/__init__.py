"""Simulated rotation-diffraction data (electron and X-ray) with exact ground truth.

Use: ``plans = plan_crystals(spec)``, ``structures = make_structures(spec, plans)``, then for each plan
``simulate_crystal(spec, plan, structures)`` → images and the true observation list.
Modules: :mod:`.spec` (settings, presets, per-crystal draws), :mod:`.structure` (Wilson
intensities in the ASU), :mod:`.observations` (geometry, partiality, Lorentz, counts),
:mod:`.render` (numba spot kernel, background, Poisson, corruption).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from algorithms.simulate.observations import Observations, simulate_observations
from algorithms.simulate.render import background_image, expected_spot_images, finish_images
from algorithms.simulate.spec import PRESETS, CrystalPlan, SimulationSpec, Stream, plan_crystals, rng_for
from algorithms.simulate.structure import StructureModel, wilson_structure

__all__ = [
    "PRESETS",
    "CrystalPlan",
    "Observations",
    "SimulatedCrystal",
    "SimulationSpec",
    "StructureModel",
    "make_structures",
    "plan_crystals",
    "simulate_crystal",
]


@dataclass
class SimulatedCrystal:
    """One crystal's draw, its true observations and its images."""

    plan: CrystalPlan
    observations: Observations
    images: np.ndarray  # (n_images, n_slow, n_fast): uint16 counts, or float64 expectations without Poisson


def data_d_min(spec: SimulationSpec, plans: list[CrystalPlan]) -> float:
    """The resolution the data reach: d_min, or the best detector corner of all crystals."""
    return spec.d_min or min(p.detector.max_resolution(p.beam.s0) for p in plans)


def structure_d_min(spec: SimulationSpec, plans: list[CrystalPlan]) -> float:
    """Resolution of the structure table: below every crystal's reach, with room for changed
    and drifting cells."""
    d_min = data_d_min(spec, plans)
    margin = 1.0 + (spec.bad_cell_change_percent * (spec.n_bad_crystals > 0) + abs(spec.drift_cell_percent)) / 100.0
    return d_min / margin * 0.98


def make_structures(spec: SimulationSpec, plans: list[CrystalPlan]) -> dict[str, StructureModel]:
    """The true structure and, if a crystal needs it, the impostor structure ("bad")."""
    d_min = structure_d_min(spec, plans)
    sg, cell = spec.gemmi_space_group, spec.gemmi_cell
    structures = {
        "true": wilson_structure(sg, cell, d_min, spec.wilson_b, spec.mean_intensity, rng_for(spec.seed, Stream.STRUCTURE))
    }
    if any(p.structure_key == "bad" for p in plans):
        rng = rng_for(spec.seed, Stream.BAD_STRUCTURE)
        structures["bad"] = wilson_structure(sg, cell, d_min, spec.wilson_b, spec.mean_intensity, rng)
    return structures


def simulate_crystal(spec: SimulationSpec, plan: CrystalPlan, structures: dict[str, StructureModel]) -> SimulatedCrystal:
    """Observations and images of one crystal (deterministic for a given spec and plan)."""
    observations = simulate_observations(
        spec, plan, structures[plan.structure_key], rng_for(spec.seed, Stream.OBSERVATIONS, plan.index)
    )
    spots = expected_spot_images(observations, spec.n_images, spec.image_size)
    centre = plan.detector.beam_centre_px(plan.beam.s0)
    background = background_image(spec, centre)
    images = finish_images(spots, background, plan.corrupted_images, spec.poisson, rng_for(spec.seed, Stream.NOISE, plan.index))
    return SimulatedCrystal(plan, observations, images)
