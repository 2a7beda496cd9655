"""``ewald plot_scan_varying_model refined.expt``: plots of a scan-varying crystal, as
``dials.plot_scan_varying_model`` (algorithms.md §5.6).

``unit_cell.png``: a, b, c, α, β, γ and the volume at every scan point against the rotation angle
(image numbers on the top axis); ``orientation.png``: the orientation as rotations φ1, φ2, φ3
about the lab x, y, z axes (U(t) = Rz(φ3)·Ry(φ2)·Rx(φ1)·U_static), relative to the static U by
default. Several experiments give ``unit_cell_<i>.png`` and ``orientation_<i>.png``.
"""
from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from algorithms.errors import DataError
from algorithms.geometry.models import Experiment
from algorithms.reflection_table import ReflectionTable
from algorithms.refinement import scan_varying_summary
from pipeline.errors import InputFileError
from pipeline.formats.expt import write_bytes_atomically
from pipeline.params import param, scope
from pipeline.steps import StepResult

NAME = "plot_scan_varying_model"
HELP = "Plot the scan-varying unit cell and orientation of refined crystals, as dials.plot_scan_varying_model."

logger = logging.getLogger(__name__)


@dataclass
class Output:
    directory: str = param("scan-varying_model", "Folder for the plots.")
    format: Literal["png", "pdf"] = param("png", "Image format of the plots.")


@dataclass
class OrientationDecomposition:
    relative_to_static_orientation: bool = param(
        True, "Angles relative to the static orientation (else relative to the identity).")


@dataclass
class Params:
    orientation_decomposition: OrientationDecomposition = scope(OrientationDecomposition, "How orientations are decomposed.")
    output: Output = scope(Output, "Output files.")


def scan_varying_model(experiment: Experiment, relative_to_static: bool = True) -> dict:
    """Cell, volume and orientation angles at every scan point, with angles and image numbers."""
    reference_U = experiment.crystal.U if relative_to_static else np.eye(3)
    model = scan_varying_summary(experiment, reference_U)
    model["image"] = model["z"] - experiment.scan.array_range[0] + experiment.scan.image_range[0]
    return model


def run(experiments: list[Experiment], reflections: ReflectionTable | None, params: Params) -> StepResult:
    """The scan-varying model of every experiment that has one (summary "models": index → dict)."""
    models = {}
    for i, experiment in enumerate(experiments):
        if experiment.crystal is None or experiment.crystal.num_scan_points == 0 or experiment.scan is None:
            logger.info("Experiment %d has no scan-varying crystal: nothing to plot", i)
            continue
        expected = experiment.scan.num_images + 1
        if experiment.crystal.num_scan_points != expected:
            raise DataError(f"experiment {i}: the crystal has {experiment.crystal.num_scan_points} scan points but the "
                            f"scan has {experiment.scan.num_images} images ({expected} points expected)")
        models[i] = scan_varying_model(experiment, params.orientation_decomposition.relative_to_static_orientation)
    if not models:
        raise DataError("no experiment has a scan-varying crystal; refine with scan_varying=True (the default of "
                        "ewald refine) first")
    return StepResult(list(experiments), None, {"models": models})


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path, fmt: str) -> None:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=100)
    plt.close(fig)
    write_bytes_atomically(path, buffer.getvalue())


def _with_image_axis(ax, model: dict) -> None:
    """Image numbers on a secondary top axis (image n starts at the angle of array index n − 1)."""
    phi, image = model["phi_deg"], model["image"]
    slope = (image[-1] - image[0]) / (phi[-1] - phi[0]) if len(phi) > 1 and phi[-1] != phi[0] else 1.0
    ax.secondary_xaxis("top", functions=(lambda p: image[0] + (p - phi[0]) * slope,
                                         lambda n: phi[0] + (n - image[0]) / slope)).set_xlabel("image")


def plot_unit_cell(model: dict, path: Path, fmt: str = "png") -> None:
    plt = _pyplot()
    cell = np.asarray(model["unit_cell"])
    fig, axes = plt.subplots(4, 2, figsize=(9, 10), sharex=True)
    panels = [("a (Å)", cell[:, 0]), ("α (°)", cell[:, 3]), ("b (Å)", cell[:, 1]), ("β (°)", cell[:, 4]),
              ("c (Å)", cell[:, 2]), ("γ (°)", cell[:, 5]), ("volume (Å³)", model["volume"])]
    for ax, (label, values) in zip(axes.flat, panels):
        ax.plot(model["phi_deg"], values, "-", color="tab:blue")
        ax.set_ylabel(label)
        ax.ticklabel_format(axis="y", useOffset=False)
    axes.flat[-1].axis("off")
    for ax in axes[0]:
        _with_image_axis(ax, model)
    for ax in (axes[-1][0], axes[-2][1]):
        ax.set_xlabel("rotation angle (°)")
        ax.xaxis.set_tick_params(labelbottom=True)
    fig.suptitle("Scan-varying unit cell")
    _save(plt, fig, path, fmt)


def plot_orientation(model: dict, path: Path, fmt: str = "png", relative_to_static: bool = True) -> None:
    plt = _pyplot()
    angles = np.asarray(model["orientation_deg"])
    fig, axes = plt.subplots(3, 1, figsize=(7, 8), sharex=True)
    for k, ax in enumerate(axes):
        ax.plot(model["phi_deg"], angles[:, k], "-", color="tab:blue")
        ax.set_ylabel(f"φ{k + 1} about {'xyz'[k]} (°)")
        ax.ticklabel_format(axis="y", useOffset=False)
    _with_image_axis(axes[0], model)
    axes[-1].set_xlabel("rotation angle (°)")
    reference = "relative to the static orientation" if relative_to_static else "relative to the lab frame"
    fig.suptitle(f"Scan-varying crystal orientation ({reference})")
    _save(plt, fig, path, fmt)


def cli(params: Params, files: list[str]) -> None:
    """``ewald plot_scan_varying_model refined.expt [output.directory=...]``."""
    from pipeline.formats.expt import read_experiments

    expts = [f for f in files if f.endswith(".expt")]
    if len(expts) != 1 or len(files) != 1:
        raise InputFileError(f"ewald {NAME}: give one experiment file (.expt) with scan-varying crystals; got {files}")
    if not Path(expts[0]).is_file():
        raise InputFileError(f"{expts[0]}: file not found; check the path")
    result = run(read_experiments(expts[0]), None, params)
    models = result.summary["models"]
    folder = Path(params.output.directory)
    folder.mkdir(parents=True, exist_ok=True)
    relative = params.orientation_decomposition.relative_to_static_orientation
    fmt = params.output.format
    for i, model in models.items():
        suffix = f"_{i}" if len(models) > 1 else ""
        cell_path = folder / f"unit_cell{suffix}.{fmt}"
        orientation_path = folder / f"orientation{suffix}.{fmt}"
        plot_unit_cell(model, cell_path, fmt)
        plot_orientation(model, orientation_path, fmt, relative)
        logger.info("Saving scan-varying cell plot to %s", cell_path)
        logger.info("Saving scan-varying orientation plot to %s", orientation_path)
