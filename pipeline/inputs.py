"""Picking a step's input files out of its positional arguments, with clear errors."""
from __future__ import annotations

from pathlib import Path
from collections.abc import Sequence

from pipeline.errors import InputFileError


def experiments_and_reflections_from(files: Sequence[str], command: str) -> tuple[Path, Path]:
    """The one ``.expt`` and the one ``.refl`` among ``files``; anything else is an error."""
    expts = [Path(f) for f in files if str(f).endswith(".expt")]
    refls = [Path(f) for f in files if str(f).endswith(".refl")]
    others = [f for f in files if not str(f).endswith((".expt", ".refl"))]
    if others:
        raise InputFileError(f"ewald {command}: {others[0]}: not an .expt or .refl file (nor a key=value parameter)")
    if len(expts) != 1 or len(refls) != 1:
        raise InputFileError(
            f"ewald {command}: give one experiment file (.expt) and one reflection file (.refl); got "
            f"{len(expts)} and {len(refls)}")
    for path in (expts[0], refls[0]):
        if not path.is_file():
            raise InputFileError(f"{path}: file not found; check the path")
    return expts[0], refls[0]
