"""Test helper: a P1 indexing result with exact truth, as ``dials.index`` (no space group) gives it.

Centroids come from :mod:`algorithms.refinement.simulation` (the true crystal in its conventional
setting, noise of known σ); systematically absent reflections are dropped, the indices are
re-expressed in a scrambled primitive basis and the P1 crystal is the true one in that basis.
``index_distance_mm`` imitates indexing with a wrong detector distance: the experiment then has
that distance and the crystal every cell length scaled by index_distance/true distance, which is
what indexing finds (flat Ewald sphere, algorithms.md §10). Strong-spot intensities are a
function of the true symmetry-unique index (with 10 % noise), so that symmetry-related spots agree.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import gemmi
import numpy as np

from algorithms.geometry.models import Crystal, Experiment
from algorithms.reflection_table import ReflectionTable
from algorithms.refinement.simulation import ED_CELL, ed_experiment, simulate_reflections, xray_experiment

# a unimodular scramble, so the P1 basis is not the reduced one
SCRAMBLE = np.array([[1, 1, 0], [0, 1, 0], [1, -1, 1]], float)


@dataclass
class IndexedP1:
    truth: Experiment  # true models, crystal in its conventional setting and true space group
    experiment: Experiment  # what P1 indexing gives (distance and cell scaled if index_distance_mm)
    reflections: ReflectionTable  # P1 indices
    to_p1: np.ndarray  # P: conventional indices → P1 indices (h_p1 = P·h)


def primitive_basis(space_group: gemmi.SpaceGroup) -> np.ndarray:
    """Rows of a primitive basis of the centred lattice, in conventional coordinates."""
    centring = [np.array(t) / gemmi.Op.DEN for t in space_group.operations().cen_ops]
    points = [np.eye(3)[i] for i in range(3)] + [t for t in centring if np.any(t)]
    for triple in itertools.combinations(points, 3):
        if abs(abs(np.linalg.det(np.array(triple))) - 1.0 / len(centring)) < 1e-9:
            P = np.array(triple)
            return P if np.linalg.det(P) > 0 else -P
    raise AssertionError("no primitive basis")


def strong_intensities(asu_hkl: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    key = ((asu_hkl[:, 0].astype(np.int64) + 256) * 512 + asu_hkl[:, 1] + 256) * 512 + asu_hkl[:, 2] + 256
    true = 50.0 + 1000.0 * ((key * 2654435761) % 2**32) / 2**32  # Knuth's multiplicative hash: fixed per index
    observed = true * (1.0 + 0.1 * rng.normal(size=len(true)))
    return observed, np.maximum(observed, 1.0)


def indexed_p1(seed: int = 0, cell=ED_CELL, space_group: str = "C 1 2 1", distance_mm: float = 1762.0,
               index_distance_mm: float | None = None, n_reflections: int | None = 700, xray: bool = False,
               drift_orientation_deg: float = 0.0, drift_cell_fraction: float = 0.0) -> IndexedP1:
    if xray:
        truth = xray_experiment(seed, cell=cell, space_group=space_group)
    else:
        truth = ed_experiment(seed, cell=cell, space_group=space_group, distance_mm=distance_mm)
    sg = truth.crystal.space_group
    table, _ = simulate_reflections(truth, n_reflections=None, seed=seed + 100, d_min=2.5 if not xray else 2.0,
                                    drift_orientation_deg=drift_orientation_deg, drift_cell_fraction=drift_cell_fraction)
    hkl = np.asarray(table["miller_index"], np.int32)
    present = ~np.asarray(sg.operations().systematic_absences(hkl), bool)
    table = table.select(present)
    rng = np.random.default_rng(seed + 200)
    if n_reflections is not None and len(table) > n_reflections:
        table = table.select(np.sort(rng.choice(len(table), n_reflections, replace=False)))
    asu = gemmi.ReciprocalAsu(sg)
    ops = sg.operations()
    asu_hkl = np.array([asu.to_asu(h, ops)[0] for h in np.asarray(table["miller_index"]).tolist()])
    table["intensity.sum.value"], table["intensity.sum.variance"] = strong_intensities(asu_hkl, rng)
    to_p1 = SCRAMBLE @ primitive_basis(sg)
    new = np.asarray(table["miller_index"]) @ to_p1.T
    assert np.allclose(new, np.rint(new))
    table["miller_index"] = np.rint(new).astype(np.int32)
    experiment = truth.copy()
    experiment.crystal = Crystal(A=truth.crystal.change_basis(to_p1).A, space_group=gemmi.SpaceGroup("P 1"))
    if index_distance_mm is not None:
        scale = index_distance_mm / distance_mm
        experiment.detector.set_distance_mm(index_distance_mm)
        experiment.crystal = Crystal(A=experiment.crystal.A / scale, space_group=gemmi.SpaceGroup("P 1"))
    return IndexedP1(truth, experiment, table, to_p1)
