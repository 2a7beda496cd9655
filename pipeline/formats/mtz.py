"""MTZ files (CCP4 reflection format) written with gemmi, in the layout DIALS writes them.

Unmerged ("multirecord") files carry one batch header per image (CCP4 MTZBAT: 29 integers and
156 floats) so that Pointless/Aimless know each image's rotation, cell and orientation; the
orientation is stored as the Mosflm-convention U matrix, U_mosflm = (F·U)·B_dials·B_mosflm⁻¹
(B_dials = Fracᵀ, B_mosflm upper triangular from the reciprocal cell), column-wise. Batch numbers
of several sweeps are kept apart with DIALS' batch-offset rule: sweeps keep their image numbers if
no two ranges overlap; otherwise each later sweep starts at the next number ending in 01 that is
not consecutive with the previous maximum (1–72, 101–172, 201–272, …). References: CCP4 MTZ
format documentation (mtzlib), gemmi's MTZ API, algorithms.md §9.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import gemmi
import numpy as np

from algorithms.geometry.models import Experiment, b_matrix, unit_cell_from_a_matrix
from pipeline.formats.expt import write_bytes_atomically

# Float offsets of the MTZ batch header (gemmi/CCP4 MTZBAT layout).
_CELL, _UMAT, _PHISTT, _PHIEND, _SCANAX, _BSCALE, _PHIRANGE = slice(0, 6), slice(6, 15), 36, 37, slice(38, 41), 43, 47
_E1, _SOURCE, _SO, _ALAMBD, _DX0, _DETLM = slice(59, 62), slice(80, 83), slice(83, 86), 86, 111, slice(113, 117)
# Integer offsets.
_LBCELL, _NCRYST, _LDTYPE, _JSAXS, _NGONAX, _NDET, _NBSETID = slice(4, 10), 12, 14, 15, 17, 19, 20


@dataclass
class MtzColumn:
    """One MTZ column: label, CCP4 type letter and values (NaN = missing)."""

    label: str
    type: str
    values: np.ndarray


@dataclass
class MtzNames:
    project_name: str
    crystal_name: str
    dataset_name: str


def next_batch_start(previous_max: int) -> int:
    """The next number above ``previous_max`` that ends in 01 and does not follow it directly."""
    remainder = previous_max % 100
    if remainder == 99:
        return previous_max + 2
    if remainder == 0:
        return previous_max + 101
    return previous_max - remainder + 101


def batch_offsets(image_ranges: Sequence[tuple[int, int]], current_offsets: Sequence[int]) -> list[int]:
    """DIALS' batch offsets: keep the current ones unless two batch ranges overlap."""
    ranges = [(first + off, last + off) for (first, last), off in zip(image_ranges, current_offsets)]
    overlap = any(a[0] <= b[1] and b[0] <= a[1] for i, a in enumerate(ranges) for b in ranges[i + 1:])
    if not overlap:
        return [int(o) for o in current_offsets]
    offsets, highest = [], None
    for first, last in image_ranges:
        offset = 0 if highest is None else next_batch_start(highest) - first
        offsets.append(offset)
        highest = last + offset
    return offsets


def mosflm_u_matrix(fixed_u: np.ndarray, cell: gemmi.UnitCell) -> np.ndarray:
    """Mosflm's U for DIALS' F·U and ``cell``: U_mosflm = (F·U)·B_dials·B_mosflm⁻¹."""
    a, b, c, alpha, beta, gamma = cell.parameters
    ra, rb, rc, ralpha, rbeta, rgamma = cell.reciprocal().parameters
    rbeta, rgamma, alpha = np.radians([rbeta, rgamma, alpha])
    b_mosflm = np.array([[ra, rb * np.cos(rgamma), rc * np.cos(rbeta)],
                         [0.0, rb * np.sin(rgamma), -rc * np.sin(rbeta) * np.cos(alpha)],
                         [0.0, 0.0, 1.0 / c]])
    return np.asarray(fixed_u) @ b_matrix(cell) @ np.linalg.inv(b_mosflm)


def batch_headers(experiment: Experiment, batch_offset: int, dataset_id: int) -> list[gemmi.Mtz.Batch]:
    """One CCP4 batch header per image of the experiment's scan."""
    scan, crystal, beam, detector = experiment.scan, experiment.crystal, experiment.beam, experiment.detector
    fixed = experiment.goniometer.fixed_rotation if experiment.goniometer is not None else np.eye(3)
    axis = experiment.goniometer.rotation_axis_lab if experiment.goniometer is not None else np.array([1.0, 0, 0])
    s0_unit = beam.s0 / np.linalg.norm(beam.s0)
    first, last = scan.image_range
    batches = []
    for image in range(first, last + 1):
        # Scan-varying A (at image boundaries) gives each image its own cell and orientation.
        point = image - first
        A = crystal.A_at_scan_points[point] if crystal.num_scan_points > point else crystal.A
        cell = unit_cell_from_a_matrix(A)
        u = A @ np.linalg.inv(b_matrix(cell))
        batch = gemmi.Mtz.Batch()
        batch.number = image + batch_offset
        batch.title = f"Batch {batch.number}"
        ints = list(batch.ints)
        ints[_LBCELL] = [-1] * 6
        ints[_NCRYST], ints[_LDTYPE], ints[_JSAXS], ints[_NGONAX], ints[_NDET] = 1, 2, 1, 1, 1
        ints[_NBSETID] = dataset_id
        for k, value in enumerate(ints):  # gemmi's header arrays take item assignment only
            batch.ints[k] = value
        floats = np.zeros(len(batch.floats))
        floats[_CELL] = cell.parameters
        floats[_UMAT] = mosflm_u_matrix(fixed @ u, cell).T.ravel()
        phi_start = scan.angle_from_image_index(image)
        floats[_PHISTT], floats[_PHIEND] = phi_start, phi_start + scan.oscillation[1]
        floats[_SCANAX] = axis
        floats[_BSCALE] = 1.0
        floats[_PHIRANGE] = scan.oscillation[1]
        floats[_E1] = axis
        floats[_SOURCE] = (0.0, 0.0, -1.0)
        floats[_SO] = s0_unit
        floats[_ALAMBD] = beam.wavelength
        floats[_DX0] = float(detector.normal @ detector.origin)  # directed distance
        floats[_DETLM] = (0, detector.image_size[0], 0, detector.image_size[1])
        for k, value in enumerate(floats.tolist()):
            batch.floats[k] = value
        batch.axes = ["AXIS"]
        batches.append(batch)
    return batches


def build_mtz(space_group: gemmi.SpaceGroup, unit_cell: gemmi.UnitCell, names: MtzNames, wavelength: float,
              miller_index: np.ndarray, columns: Sequence[MtzColumn], title: str, history: Sequence[str]) -> gemmi.Mtz:
    """An MTZ object with H, K, L then ``columns`` in one dataset (batches are added by the caller)."""
    mtz = gemmi.Mtz(with_base=True)
    mtz.title = title
    mtz.spacegroup = space_group
    mtz.set_cell_for_all(unit_cell)
    mtz.add_dataset(names.dataset_name)
    dataset = mtz.datasets[-1]
    dataset.project_name, dataset.crystal_name, dataset.wavelength = names.project_name, names.crystal_name, wavelength
    dataset.cell = unit_cell
    for column in columns:
        mtz.add_column(column.label, column.type)
    values = [np.asarray(miller_index, dtype=np.float64).reshape(-1, 3)]
    values += [np.asarray(c.values, dtype=np.float64).reshape(-1, 1) for c in columns]
    mtz.set_data(np.ascontiguousarray(np.hstack(values), dtype=np.float32))
    mtz.update_reso()
    mtz.history = list(history)
    return mtz


def write_mtz(mtz: gemmi.Mtz, path) -> None:
    """Write atomically (temporary file, then rename)."""
    write_bytes_atomically(path, bytes(mtz.write_to_bytes()))
