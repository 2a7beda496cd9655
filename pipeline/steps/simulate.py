"""``ewald simulate``: rotation-diffraction images (electron or X-ray) with exact ground truth.

``ewald simulate preset=myd88 sim/`` writes, into the folder ``sim/``:

- ``<i>/00001.img …`` — SMV images of crystal i (1-based folders): Timepix SU headers as the
  real detector writes them (header DISTANCE may differ from the true distance; no axis), or
  ADSC-style headers for other detector sizes (``image_format=adsc``, the xray preset);
- ``<i>/truth.json`` — the true geometry, crystal, scan and nuisance parameters (schema below);
- ``<i>/truth.expt`` — the true models as a DIALS experiment list (scan-varying A included);
- ``<i>/truth_observations.npz`` — one row per observation (:class:`Observations` fields);
- ``true_merged.mtz`` — the true merged intensities (IMEAN, SIGIMEAN = 1) of every ASU reflection
  to the data's d_min (the best detector corner, or d_min=);
- ``simulation.json`` — the resolved settings and a per-crystal summary.

Everything is written into a hidden temporary folder beside the output and renamed at the end,
so a failed run leaves nothing behind. Crystals run in ``nproc`` threads (the numba kernels
release the GIL); results do not depend on ``nproc``.

Truth identity for every observation (see :mod:`algorithms.simulate.observations`):
``counts = intensity_true · scale_factor · decay · dynamical_factor · partiality / lp``.

``truth.json`` (lengths mm, wavelength and cells Å, angles degrees, matrices as row lists):
format "ewald-simulation-truth", version 1, crystal (1-based), identifier (= the experiment
identifier in truth.expt), probe; space_group (gemmi xHM), space_group_number, unit_cell (the
crystal's own, a bad crystal's changed cell), nominal_unit_cell; A (= U·B, φ = 0 frame, mid-scan),
U, B (DIALS' lower-triangular), real_space_a/b/c (rows of A⁻¹), A_at_scan_points (n_images+1,
at z = 0 … n_images), unit_cell_at_scan_points; wavelength, beam_direction (sample → source),
s0; distance_mm (true), header_distance_mm (as written in the headers); detector {origin,
fast_axis, slow_axis, pixel_size_mm, image_size}; beam_centre_px (fast, slow); rotation_axis
(true, unit, lab frame), header_rotation_axis (null: the headers carry none); scan {image_range
(1-based inclusive), oscillation_deg (start of image 1, width), exposure_time_s}; sigma_m_deg,
sigma_b_deg, d_min (of the observations), wilson_b; scale (crystal scale), relative_b (Å²),
decay_per_image; dynamical_error; bad_crystal, bad_kind (null | "cell" | "structure" |
"both"); corrupted_images [{image (1-based), kind ("noise" | "scrambled" | "streak")}]; drift
{cell_percent, rotation_deg, axis}; poisson; n_observations; intensity_model (the identity
above); files.

``truth_observations.npz``: the :class:`~algorithms.simulate.observations.Observations` fields,
one row per observation (per crossing of the Ewald sphere whose rocking curve has ≥ 10⁻³ inside
the scan): miller_index, asu_miller_index, entering, phi_rad, xyz_px (x, y px; z 0-based array
index of the rocking-curve centre, possibly outside [0, n_images) for tails), xy_mm, s1, d,
zeta, lp, intensity_true, scale_factor, decay, dynamical_factor, partiality, counts,
spot_covariance_px (xx, xy, yy), and the ragged per-image fractions partial_first_image
(1-based), partial_offsets (n+1), partial_fractions (fraction of the whole rocking curve on each
image; they sum to partiality). Corrupted images still carry their intended fractions.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import gemmi
import numpy as np

from algorithms.geometry.models import Experiment, unit_cell_from_a_matrix
from algorithms.reflection_table import ReflectionTable
from algorithms.simulate import (
    PRESETS,
    SimulatedCrystal,
    SimulationSpec,
    data_d_min,
    make_structures,
    plan_crystals,
    simulate_crystal,
)
from algorithms.simulate.observations import Observations
from algorithms.simulate.spec import CrystalPlan
from algorithms.simulate.structure import StructureModel
from pipeline.errors import EwaldError, InputFileError, ParameterError
from pipeline.formats.smv import adsc_header, timepix_su_header, write_smv_image
from pipeline.params import param
from pipeline.steps import StepResult

NAME = "simulate"
HELP = "Simulate rotation-diffraction images (ED or X-ray) of many crystals with exact ground truth."

logger = logging.getLogger(__name__)

TRUTH_FORMAT = "ewald-simulation-truth"
TRUTH_VERSION = 1
IMAGE_TEMPLATE = "{:05d}.img"
# first image of crystal 1: 2019-06-03 12:00:00 UTC; crystals start an hour apart
_BASE_EPOCH_S = 1559563200.0


def _by_preset(text: str, name: str) -> str:
    """Help text plus the value each preset gives the setting."""
    def show(value) -> str:
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) if isinstance(value, tuple) else str(value)

    return f"{text} Presets: " + "; ".join(f"{preset} {show(getattr(spec, name))}" for preset, spec in PRESETS.items()) + "."


@dataclass
class Params:
    preset: Literal["myd88", "tiny", "xray"] = param(
        "myd88", "Starting point for every setting left at None: 'myd88' (18 × 72 ED images as the MyD88 "
                 "tutorial), 'tiny' (2 × 24, for quick tests) or 'xray' (lysozyme, 1 Å).")
    n_crystals: int | None = param(None, _by_preset("Number of crystals (one sweep each).", "n_crystals"))
    n_images: int | None = param(None, _by_preset("Images per sweep.", "n_images"))
    unit_cell: tuple[float, ...] | None = param(None, _by_preset("True unit cell a,b,c,alpha,beta,gamma (Å, degrees).", "unit_cell"))
    space_group: str | None = param(None, _by_preset("True space group, e.g. C2 or P43212.", "space_group"))
    wavelength: float | None = param(None, _by_preset("Wavelength (Å).", "wavelength"))
    distance: float | None = param(None, _by_preset("True detector distance (mm).", "distance"))
    header_distance: float | None = param(
        None, _by_preset("DISTANCE written into the image headers (mm; the real MyD88 files say 2.193); None = the "
                         "true distance.", "header_distance"))
    image_size: tuple[int, int] | None = param(None, _by_preset("Detector pixels fast,slow.", "image_size"))
    image_format: Literal["timepix_su", "adsc"] | None = param(
        None, _by_preset("SMV header style: 'timepix_su' (516×516 Timepix, as the MyD88 files) or 'adsc' (any size; "
                         "X-ray beam polarisation 0.999 as dxtbx assumes for it).", "image_format"))
    pixel_size: float | None = param(None, _by_preset("Pixel size (mm).", "pixel_size"))
    beam_centre_px: tuple[float, float] | None = param(None, _by_preset("Mean beam centre fast,slow (pixels).", "beam_centre_px"))
    beam_centre_jitter_px: float | None = param(None, _by_preset("Per-crystal beam-centre spread (± pixels).", "beam_centre_jitter_px"))
    rotation_axis: tuple[float, float, float] | None = param(
        None, _by_preset("True rotation axis in the lab frame (any length); the headers carry none.", "rotation_axis"))
    oscillation_start: float | None = param(None, _by_preset("Mean start angle of a sweep (degrees).", "oscillation_start"))
    oscillation_start_jitter: float | None = param(None, _by_preset("Per-crystal start-angle spread (± degrees).", "oscillation_start_jitter"))
    oscillation_width: float | None = param(None, _by_preset("Rotation per image (degrees).", "oscillation_width"))
    exposure_time: float | None = param(None, _by_preset("Exposure per image (s), written as TIME.", "exposure_time"))
    sigma_m: float | None = param(None, _by_preset("Rocking width σm (degrees).", "sigma_m"))
    sigma_b: float | None = param(None, _by_preset("Beam divergence σb (degrees): sets the spot size.", "sigma_b"))
    d_min: float | None = param(None, _by_preset("High-resolution limit (Å); None = the detector corners.", "d_min"))
    wilson_b: float | None = param(None, _by_preset("Wilson B of the true intensities (Å²).", "wilson_b"))
    mean_intensity: float | None = param(None, _by_preset("Wilson mean intensity at d = ∞ (true-intensity units).", "mean_intensity"))
    scale: float | None = param(None, _by_preset("Counts per unit true intensity and unit 1/lp (sets spot strength).", "scale"))
    scale_spread: float | None = param(None, _by_preset("Log-normal σ of the per-crystal scale.", "scale_spread"))
    b_spread: float | None = param(None, _by_preset("σ of the per-crystal relative B (Å²).", "b_spread"))
    decay_per_image: float | None = param(None, _by_preset("Radiation damage: intensities × exp(−k·z), k per image.", "decay_per_image"))
    dynamical_error: float | None = param(
        None, _by_preset("Log-normal σ of a per-observation multiplicative error (dynamical scattering); 0 = kinematic.", "dynamical_error"))
    background_flat: float | None = param(None, _by_preset("Flat background (counts per pixel per image).", "background_flat"))
    inelastic_peak: float | None = param(None, _by_preset("Inelastic scatter at the beam centre (counts per pixel per image).", "inelastic_peak"))
    inelastic_radius_px: float | None = param(None, _by_preset("Radius r0 of the inelastic profile peak·(1 + r/r0)^−power.", "inelastic_radius_px"))
    inelastic_power: float | None = param(None, _by_preset("Power of the inelastic profile.", "inelastic_power"))
    poisson: bool | None = param(None, _by_preset("Draw Poisson counts; False writes rounded expectations.", "poisson"))
    n_corrupted_images: int | None = param(
        None, _by_preset("Corrupted images (noise-only, scrambled or streaked) spread over crystals 2..n.", "n_corrupted_images"))
    n_bad_crystals: int | None = param(None, _by_preset("Non-isomorphous crystals among 2..n.", "n_bad_crystals"))
    bad_crystal_kind: Literal["cell", "structure", "both"] | None = param(
        None, _by_preset("How bad crystals differ: cell edges changed, intensities of another structure, or both.", "bad_crystal_kind"))
    bad_cell_change_percent: float | None = param(None, _by_preset("Cell-edge change of a bad crystal (%).", "bad_cell_change_percent"))
    drift_cell_percent: float | None = param(None, _by_preset("Cell change across a sweep (%), linear in the image.", "drift_cell_percent"))
    drift_rotation_deg: float | None = param(None, _by_preset("Orientation drift across a sweep (degrees).", "drift_rotation_deg"))
    seed: int | None = param(None, _by_preset("Random seed; the same seed gives the same data.", "seed"))
    nproc: int = param(2, "Crystals simulated at once (threads).")
    overwrite: bool = param(False, "Replace an existing simulation in the output folder.")


def resolve_spec(params: Params) -> SimulationSpec:
    """The preset with every parameter that is not None put on top."""
    base = PRESETS[params.preset]
    changes = {}
    for f in dataclasses.fields(SimulationSpec):
        value = getattr(params, f.name, None)
        if value is not None:
            changes[f.name] = tuple(value) if isinstance(value, (list, tuple)) else value
    if "space_group" in changes:
        try:
            changes["space_group"] = gemmi.SpaceGroup(changes["space_group"]).xhm()
        except ValueError:
            raise ParameterError(f"space_group={changes['space_group']}: unknown space group; try e.g. C2 or P43212") from None
    try:
        return base.replace(**changes)
    except EwaldError as error:
        raise ParameterError(str(error)) from None


# ------------------------------------------------------------------------------ truth records


def truth_experiment(plan: CrystalPlan, spec: SimulationSpec) -> Experiment:
    """The true models of one crystal as an Experiment (with its image template)."""
    return Experiment(
        beam=plan.beam,
        detector=plan.detector,
        goniometer=plan.goniometer,
        scan=plan.scan,
        crystal=plan.crystal,
        imageset={"__id__": "ImageSequence", "template": "#####.img"},
        profile={"__id__": "gaussian_rs", "n_sigma": 3, "sigma_b": spec.sigma_b, "sigma_m": spec.sigma_m},
        identifier=f"simulated-{spec.seed}-{plan.index}",
    )


def truth_record(plan: CrystalPlan, spec: SimulationSpec, observations: Observations) -> dict:
    """The contents of ``<i>/truth.json`` (see the report of the simulate step for the schema)."""
    crystal = plan.crystal
    cell = crystal.unit_cell
    s0 = plan.beam.s0
    header_distance = spec.header_distance if spec.header_distance is not None else spec.distance

    def cell_list(c: gemmi.UnitCell) -> list[float]:
        return [c.a, c.b, c.c, c.alpha, c.beta, c.gamma]

    return {
        "format": TRUTH_FORMAT,
        "version": TRUTH_VERSION,
        "crystal": plan.index,
        "identifier": f"simulated-{spec.seed}-{plan.index}",
        "probe": "electron" if spec.wavelength < 0.1 else "x-ray",
        "space_group": crystal.space_group.xhm(),
        "space_group_number": crystal.space_group.number,
        "unit_cell": cell_list(cell),
        "nominal_unit_cell": list(spec.unit_cell),
        "A": crystal.A.tolist(),
        "U": crystal.U.tolist(),
        "B": crystal.B.tolist(),
        "real_space_a": crystal.real_space_vectors[0].tolist(),
        "real_space_b": crystal.real_space_vectors[1].tolist(),
        "real_space_c": crystal.real_space_vectors[2].tolist(),
        "A_at_scan_points": crystal.A_at_scan_points.tolist(),
        "unit_cell_at_scan_points": [cell_list(unit_cell_from_a_matrix(A)) for A in crystal.A_at_scan_points],
        "wavelength": plan.beam.wavelength,
        "beam_direction": plan.beam.direction.tolist(),
        "s0": s0.tolist(),
        "distance_mm": plan.detector.distance_mm,
        "header_distance_mm": header_distance,
        "detector": {
            "origin": plan.detector.origin.tolist(),
            "fast_axis": plan.detector.fast_axis.tolist(),
            "slow_axis": plan.detector.slow_axis.tolist(),
            "pixel_size_mm": list(plan.detector.pixel_size),
            "image_size": list(plan.detector.image_size),
        },
        "beam_centre_px": list(plan.detector.beam_centre_px(s0)),
        "rotation_axis": plan.goniometer.rotation_axis.tolist(),
        "header_rotation_axis": None,
        "scan": {
            "image_range": list(plan.scan.image_range),
            "oscillation_deg": list(plan.scan.oscillation),
            "exposure_time_s": spec.exposure_time,
        },
        "sigma_m_deg": spec.sigma_m,
        "sigma_b_deg": spec.sigma_b,
        "d_min": float(observations.d.min()) if len(observations) else None,
        "wilson_b": spec.wilson_b,
        "scale": plan.scale,
        "relative_b": plan.relative_b,
        "decay_per_image": plan.decay_per_image,
        "dynamical_error": spec.dynamical_error,
        "bad_crystal": plan.bad_kind is not None,
        "bad_kind": plan.bad_kind,
        "corrupted_images": [{"image": image, "kind": kind} for image, kind in plan.corrupted_images.items()],
        "drift": {
            "cell_percent": spec.drift_cell_percent,
            "rotation_deg": spec.drift_rotation_deg,
            "axis": plan.drift_axis.tolist(),
        },
        "poisson": spec.poisson,
        "n_observations": len(observations),
        "intensity_model": "counts = intensity_true * scale_factor * decay * dynamical_factor * partiality / lp",
        "files": {"images": "#####.img", "observations": "truth_observations.npz", "experiments": "truth.expt"},
    }


@dataclass
class CrystalTruth:
    """What :func:`read_truth` returns for one crystal folder."""

    record: dict  # truth.json
    experiment: Experiment  # the true models
    observations: Observations

    def reflection_table(self, experiment_id: int = 0) -> ReflectionTable:
        """The observations with DIALS column names (+ the truth columns under their own names)."""
        o = self.observations
        table = ReflectionTable(
            {
                "id": np.full(len(o), experiment_id, dtype=int),
                "panel": np.zeros(len(o), dtype=int),
                "miller_index": o.miller_index,
                "entering": o.entering,
                "s1": o.s1,
                "xyzcal.px": o.xyz_px,
                "xyzcal.mm": np.column_stack([o.xy_mm, o.phi_rad]),
                "d": o.d,
                "zeta": o.zeta,
                "lp": o.lp,
                "partiality": o.partiality,
            },
            experiment_identifiers={experiment_id: self.experiment.identifier},
        )
        for name in ("asu_miller_index", "intensity_true", "scale_factor", "decay", "dynamical_factor", "counts",
                     "spot_covariance_px", "partial_first_image"):
            table[name] = getattr(o, name)
        return table


def read_truth(crystal_folder: str | Path) -> CrystalTruth:
    """Read ``truth.json``, ``truth.expt`` and ``truth_observations.npz`` of one crystal folder."""
    from pipeline.formats.expt import read_experiments

    folder = Path(crystal_folder)
    try:
        record = json.loads((folder / "truth.json").read_text())
        with np.load(folder / "truth_observations.npz") as npz:
            observations = Observations(**{f.name: npz[f.name] for f in dataclasses.fields(Observations)})
    except (OSError, KeyError, ValueError) as error:
        raise InputFileError(f"{folder}: not a simulated crystal folder ({error}); run ewald simulate first") from None
    experiment = read_experiments(folder / "truth.expt")[0]
    return CrystalTruth(record, experiment, observations)


# ------------------------------------------------------------------------------------ writing


def write_crystal(folder: Path, simulated: SimulatedCrystal, spec: SimulationSpec) -> dict:
    """Images, truth.json, truth.expt and truth_observations.npz of one crystal."""
    from pipeline.formats.expt import write_experiments

    plan = simulated.plan
    folder.mkdir(parents=True)
    header_distance = spec.header_distance if spec.header_distance is not None else spec.distance
    centre = plan.detector.beam_centre_px(plan.beam.s0)
    start, width = plan.scan.oscillation
    images = simulated.images
    if images.dtype != np.uint16:
        images = np.clip(np.rint(images), 0, 65535).astype(np.uint16)
    make_header = timepix_su_header if spec.image_format == "timepix_su" else adsc_header
    for k in range(spec.n_images):  # one file per image
        header = make_header(
            image_size=spec.image_size,
            pixel_size_mm=spec.pixel_size,
            distance_mm=header_distance,
            osc_start_deg=start + k * width,
            osc_range_deg=width,
            wavelength_A=spec.wavelength,
            beam_centre_px=centre,
            exposure_time_s=spec.exposure_time,
            epoch_s=_BASE_EPOCH_S + 3600.0 * (plan.index - 1) + k * spec.exposure_time,
        )
        write_smv_image(folder / IMAGE_TEMPLATE.format(k + 1), images[k], header)
    record = truth_record(plan, spec, simulated.observations)
    (folder / "truth.json").write_text(json.dumps(record, indent=1))
    np.savez_compressed(folder / "truth_observations.npz", **simulated.observations.columns())
    write_experiments([truth_experiment(plan, spec)], folder / "truth.expt")
    return record


def write_true_merged_mtz(path: Path, structure: StructureModel, d_min: float) -> None:
    """The true merged intensities (IMEAN, SIGIMEAN = 1) of the ASU reflections with d ≥ d_min."""
    keep = structure.d >= d_min
    mtz = gemmi.Mtz(with_base=True)
    mtz.spacegroup = structure.space_group
    mtz.set_cell_for_all(structure.cell)
    mtz.add_dataset("simulated")
    mtz.add_column("IMEAN", "J")
    mtz.add_column("SIGIMEAN", "Q")
    data = np.column_stack([structure.asu_hkl[keep], structure.intensity[keep], np.ones(keep.sum())])
    mtz.set_data(data.astype(np.float32))
    mtz.history = ["ewald simulate: true merged intensities (kinematic, before any scale)"]
    mtz.write_to_file(str(path))


def _prepare_output(output: Path, overwrite: bool) -> Path:
    """Check the output folder and return the temporary folder to fill."""
    if output.exists() and any(output.iterdir()):
        if not overwrite:
            raise ParameterError(f"{output}: the output folder is not empty; choose another folder or set overwrite=True")
        if not (output / "simulation.json").is_file():
            raise ParameterError(f"{output}: overwrite=True only replaces a previous simulation (no simulation.json there)")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.parent / f".{output.name}.simulate-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    return tmp


def _install(tmp: Path, output: Path) -> None:
    """Put the finished temporary folder in place of ``output``."""
    old = None
    if output.exists():
        old = output.parent / f".{output.name}.old-{uuid.uuid4().hex[:8]}"
        output.rename(old)
    tmp.rename(output)
    if old is not None:
        shutil.rmtree(old)


def run(params: Params, output_folder: str | Path) -> StepResult:
    """Simulate all crystals into ``output_folder``; return the true experiments, all true
    observations (``id`` = crystal number − 1) and a summary."""
    spec = resolve_spec(params)
    output = Path(output_folder)
    plans = plan_crystals(spec)
    structures = make_structures(spec, plans)
    tmp = _prepare_output(output, params.overwrite)
    try:
        def one(plan: CrystalPlan):
            start = time.perf_counter()
            simulated = simulate_crystal(spec, plan, structures)
            record = write_crystal(tmp / str(plan.index), simulated, spec)
            seconds = time.perf_counter() - start
            logger.info("crystal %d: %d observations, %d images in %.1f s", plan.index, len(simulated.observations),
                        spec.n_images, seconds)
            return simulated.observations, record, seconds

        with ThreadPoolExecutor(max_workers=max(1, params.nproc)) as pool:
            results = list(pool.map(one, plans))
        d_min = data_d_min(spec, plans)
        write_true_merged_mtz(tmp / "true_merged.mtz", structures["true"], d_min)
        summary = {
            "preset": params.preset,
            "spec": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(spec).items()},
            "d_min": d_min,
            "n_true_unique": int(np.sum(structures["true"].d >= d_min)),
            "crystals": [
                {
                    "crystal": record["crystal"],
                    "n_observations": record["n_observations"],
                    "bad_kind": record["bad_kind"],
                    "corrupted_images": record["corrupted_images"],
                    "oscillation_deg": record["scan"]["oscillation_deg"],
                    "beam_centre_px": record["beam_centre_px"],
                    "seconds": round(seconds, 2),
                }
                for _, record, seconds in results
            ],
        }
        (tmp / "simulation.json").write_text(json.dumps(summary, indent=1))
        _install(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    experiments = [truth_experiment(plan, spec) for plan in plans]
    tables = [
        CrystalTruth({}, experiment, observations).reflection_table(i)
        for i, (experiment, (observations, _, _)) in enumerate(zip(experiments, results))
    ]
    return StepResult(experiments=experiments, reflections=ReflectionTable.concat(tables), summary=summary)


def cli(params: Params, files: list[str]) -> None:
    """``ewald simulate [preset=NAME] [key=value ...] OUTPUT_FOLDER``."""
    if len(files) != 1:
        raise ParameterError(
            f"give exactly one output folder (got {len(files)}: {' '.join(files) or 'none'}), "
            "e.g. ewald simulate preset=myd88 sim/")
    result = run(params, files[0])
    spec = result.summary["spec"]
    logger.info("Simulated %d crystals × %d images (preset %s) into %s", spec["n_crystals"], spec["n_images"],
                params.preset, files[0])
    for crystal in result.summary["crystals"]:
        notes = []
        if crystal["bad_kind"]:
            notes.append(f"non-isomorphous ({crystal['bad_kind']})")
        if crystal["corrupted_images"]:
            notes.append("corrupted images " + ", ".join(f"{c['image']} ({c['kind']})" for c in crystal["corrupted_images"]))
        logger.info("  crystal %2d: %5d observations%s", crystal["crystal"], crystal["n_observations"],
                    ("; " + "; ".join(notes)) if notes else "")
