"""``ewald reindex``: indexed.refl [+ indexed.expt] → reindexed.refl [+ reindexed.expt] (dials.reindex).

``change_of_basis_op`` is any operator DIALS accepts: "a-2*b,a,c", "h-2*k,h,l", "-b,a+b,c" or the
x,y,z coordinate form ("-1/2*y,x+1/2*y,z"); see :class:`algorithms.symmetry.ChangeOfBasis`
(h′ = P·h, A′ = A·P⁻¹). Reflections whose new indices are not integral (e.g. C → P) are dropped
with a warning. The crystal's space group is carried into the new basis, or replaced by
``space_group=`` (which must fit the new cell).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import gemmi
import numpy as np

from algorithms.errors import DataError
from algorithms.geometry.models import Experiment
from algorithms.reflection_table import ReflectionTable
from algorithms.symmetry import ChangeOfBasis, symmetrize_cell
from pipeline.errors import InputFileError, ParameterError
from pipeline.params import param, scope
from pipeline.steps import StepResult

NAME = "reindex"
HELP = "Re-index reflections (and crystals) with a change-of-basis operator or into a space group, as dials.reindex."

logger = logging.getLogger(__name__)

# relative metric mismatch above which a space group does not fit a cell
_METRIC_TOLERANCE = 0.01


@dataclass
class Output:
    experiments: str = param("reindexed.expt", "Output experiments (when an .expt is given).")
    reflections: str = param("reindexed.refl", "Output reflections.")


@dataclass
class Params:
    change_of_basis_op: str = param("a,b,c", "New basis in terms of the old, e.g. a-2*b,a,c (or h,k,l / x,y,z forms).")
    space_group: str | None = param(None, "Space group of the re-indexed crystal, e.g. C2; None keeps the "
                                          "crystal's group (in the new basis).")
    hkl_offset: tuple[int, int, int] | None = param(None, "Integer offset added to every Miller index after "
                                                          "re-indexing (to fix an off-by-one indexing).")
    output: Output = scope(Output, "Output files.")


def space_group_in_new_basis(space_group: gemmi.SpaceGroup, cb_op: ChangeOfBasis) -> gemmi.SpaceGroup:
    """The same symmetry operations written in the new basis (fractional x_old = Pᵀ·x_new), with
    the old lattice translations as centring vectors when the new cell is larger. P1 stays P1
    (a crystal model has no centring of its own)."""
    if space_group.number == 1:
        return space_group
    P = cb_op.P
    Pt_inv = np.linalg.inv(P.T)
    den = gemmi.Op.DEN
    translations = [np.zeros(3)] + [Pt_inv @ e for e in np.eye(3)]
    ops = []
    for op in space_group.operations():
        R = np.array(op.rot, float) / den
        t = np.array(op.tran, float) / den
        R_new = Pt_inv @ R @ P.T
        for extra in translations:
            ops.append((R_new, (Pt_inv @ t + extra) % 1.0))
    triplets = set()
    for R_new, t_new in ops:
        if not np.allclose(R_new, np.rint(R_new), atol=1e-6) or not np.allclose(t_new * den, np.rint(t_new * den), atol=1e-6):
            raise DataError(f"change_of_basis_op {cb_op.as_string()} does not map space group {space_group.hm} onto "
                            "a lattice basis; give space_group=")
        op = gemmi.Op()
        op.rot = np.rint(R_new * den).astype(int).tolist()
        op.tran = (np.rint(t_new * den).astype(int) % den).tolist()
        triplets.add(op.triplet())
    group = gemmi.find_spacegroup_by_ops(gemmi.GroupOps([gemmi.Op(t) for t in sorted(triplets)]))
    if group is None:
        raise DataError(f"space group {space_group.hm} in the basis {cb_op.as_string()} is not a setting gemmi "
                        "tabulates; give space_group=")
    return group


def _check_fits(cell: gemmi.UnitCell, space_group: gemmi.SpaceGroup) -> None:
    ideal = symmetrize_cell(cell, space_group)
    p, q = np.array(cell.parameters), np.array(ideal.parameters)
    misfit = max(np.max(np.abs(p[:3] - q[:3]) / q[:3]), np.max(np.abs(p[3:] - q[3:])) / 90.0)
    if misfit > _METRIC_TOLERANCE:
        raise DataError(f"space group {space_group.hm} does not fit the re-indexed cell "
                        f"({', '.join(f'{v:.2f}' for v in cell.parameters)}); check change_of_basis_op")


def reindex_experiment(experiment: Experiment, cb_op: ChangeOfBasis, space_group: gemmi.SpaceGroup | None) -> Experiment:
    """A copy with the crystal in the new basis and in ``space_group`` (or its own group, moved)."""
    out = experiment.copy()
    if out.crystal is None:
        return out
    crystal = cb_op.apply_to_crystal(out.crystal)
    crystal.space_group = space_group or space_group_in_new_basis(out.crystal.space_group, cb_op)
    _check_fits(crystal.unit_cell, crystal.space_group)
    out.crystal = crystal
    return out


def reindex_reflections(reflections: ReflectionTable, cb_op: ChangeOfBasis,
                        hkl_offset: tuple[int, int, int] | None = None) -> tuple[ReflectionTable, int]:
    """(re-indexed table, number dropped): indexed rows whose new index is not integral are dropped;
    unindexed rows (0,0,0) stay unindexed."""
    if "miller_index" not in reflections:
        raise DataError("the reflections have no miller_index column; index them first")
    old = np.asarray(reflections["miller_index"])
    indexed = np.any(old != 0, axis=1)
    new, integral = cb_op.apply_to_hkl(old)
    if hkl_offset is not None:
        new = new + np.asarray(hkl_offset)
    keep = integral | ~indexed
    table = reflections.select(keep)
    table["miller_index"] = np.where(indexed[keep, None], new[keep], 0).astype(np.int32)
    return table, int(np.sum(~keep))


def run(experiments: list[Experiment], reflections: ReflectionTable, params: Params) -> StepResult:
    """Re-index the reflections and (if given) the experiments' crystals."""
    try:
        cb_op = ChangeOfBasis.from_string(params.change_of_basis_op)
    except DataError as error:
        raise ParameterError(f"change_of_basis_op={params.change_of_basis_op}: {error}") from None
    space_group = None
    if params.space_group is not None:
        try:
            space_group = gemmi.SpaceGroup(params.space_group)
        except ValueError:
            raise ParameterError(f"space_group={params.space_group}: not a space group symbol (e.g. C2, P43212)") from None
    table, dropped = reindex_reflections(reflections, cb_op, params.hkl_offset)
    if dropped:
        logger.warning("Warning: %d reflections have non-integral indices in the new basis %s and were removed",
                       dropped, cb_op.as_string())
    new_experiments = [reindex_experiment(e, cb_op, space_group) for e in experiments]
    return StepResult(new_experiments, table, {"cb_op": cb_op.as_string(), "n_dropped": dropped,
                                               "n_reflections": len(table)})


def cli(params: Params, files: list[str]) -> None:
    """``ewald reindex indexed.refl [indexed.expt] change_of_basis_op=...``."""
    from pipeline.formats.expt import read_experiments, write_experiments
    from pipeline.formats.refl import read_reflections, write_reflections

    refls = [f for f in files if f.endswith(".refl")]
    expts = [f for f in files if f.endswith(".expt")]
    others = [f for f in files if not f.endswith((".refl", ".expt"))]
    if others:
        raise InputFileError(f"ewald {NAME}: {others[0]}: not an .expt or .refl file (nor a key=value parameter)")
    if len(refls) != 1 or len(expts) > 1:
        raise InputFileError(f"ewald {NAME}: give one reflection file (.refl) and at most one experiment file "
                             f"(.expt); got {len(refls)} and {len(expts)}")
    for path in refls + expts:
        if not Path(path).is_file():
            raise InputFileError(f"{path}: file not found; check the path")
    reflections = read_reflections(refls[0])
    experiments = read_experiments(expts[0]) if expts else []
    result = run(experiments, reflections, params)
    logger.info("Change of basis op: %s", result.summary["cb_op"])
    for i, experiment in enumerate(result.experiments):
        if experiment.crystal is not None:
            cell = ", ".join(f"{v:.2f}" for v in experiment.crystal.unit_cell.parameters)
            logger.info("Experiment %d: unit cell (%s), space group %s", i, cell, experiment.crystal.space_group.hm)
    if experiments:
        write_experiments(result.experiments, Path(params.output.experiments))
        logger.info("Saving reindexed experimental models to %s", params.output.experiments)
    write_reflections(result.reflections, Path(params.output.reflections))
    logger.info("Saving reindexed reflections to %s", params.output.reflections)
