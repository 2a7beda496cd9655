"""Test helpers for integration against the simulator's truth: a simulated crystal whose strong
spots are indexed with the true model, and the pairing of integrated reflections with their
true observations."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.formats.expt import read_experiments
from pipeline.params import parse_parameters
from pipeline.steps import find_spots, simulate
from truth_indexing import index_with_truth


def simulated_and_indexed(folder: Path, crystal: int, *simulate_args: str):
    """Simulate into ``folder`` (``ewald simulate`` arguments), find the spots of crystal
    ``crystal`` (d_max=20) and index them with the true model: its experiments, the indexed
    spots and its per-observation truth (truth_observations.npz)."""
    params, _ = parse_parameters(simulate.Params, list(simulate_args))
    simulate.run(params, folder)
    experiments = read_experiments(folder / str(crystal) / "truth.expt")
    fs_params, _ = parse_parameters(find_spots.Params, ["d_max=20"])
    indexed = index_with_truth(experiments[0], find_spots.run(experiments, None, fs_params).reflections)
    return experiments, indexed, dict(np.load(folder / str(crystal) / "truth_observations.npz"))


def truth_pairs(table, truth: dict) -> np.ndarray:
    """(2, n): rows of ``table`` and of ``truth`` that are the same observation (h and entering)."""
    index = {(tuple(h), bool(e)): i for i, (h, e) in enumerate(zip(truth["miller_index"], truth["entering"]))}
    return np.array([(i, index[k]) for i, k in enumerate(zip(map(tuple, table["miller_index"]), table["entering"]))
                     if k in index]).T
