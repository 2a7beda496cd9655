"""Test helpers: strong spots indexed with the simulator's true model (no indexing algorithm),
so that later steps can be tested on their own against the truth; and the misorientation of a
found crystal against the true one."""
from __future__ import annotations

import numpy as np

from algorithms.geometry.models import Experiment
from algorithms.geometry.prediction import predict_rotation, predict_rotation_scan_varying, reciprocal_lattice_points
from algorithms.reflection_table import Flags, ReflectionTable


def orientation_error_deg(found: Experiment, truth: Experiment, ambiguities=(np.eye(3),)) -> float:
    """Misorientation (degrees) of the found crystal against the true one, as the detector sees
    it at the scan centre, the smallest over the lattice's indexing ambiguities (integer
    matrices M of lattice symmetries: the true crystal may equally be U·B·M·B⁻¹).

    - The orientation in the lab is S·R(ê, φ)·F·U: a refined goniometer keeps its axis in the
      setting rotation S, so U alone is not comparable.
    - It is compared in the detector's frame: with the detector's in-plane rotation and the
      rotation axis both refined, turning detector, axis and crystal together about the beam
      changes no prediction, so the data fix the crystal only relative to the detector.
    - At the scan centre: a static model fitted to a crystal that drifts linearly through the
      sweep is its mid-sweep orientation (the simulator's nominal A).
    """
    def in_detector_frame(experiment: Experiment, U: np.ndarray) -> np.ndarray:
        det, gonio, scan = experiment.detector, experiment.goniometer, experiment.scan
        frame = np.column_stack([det.fast_axis, det.slow_axis, np.cross(det.fast_axis, det.slow_axis)])
        phi_centre = np.radians(np.mean(scan.oscillation_range_deg))
        return frame.T @ gonio.rotation_matrix(phi_centre) @ U

    found_U = in_detector_frame(found, found.crystal.U)
    errors = []
    for M in ambiguities:
        true_U = truth.crystal.U @ truth.crystal.B @ M @ np.linalg.inv(truth.crystal.B)
        R = found_U @ np.linalg.inv(in_detector_frame(truth, true_U))
        errors.append(np.degrees(np.arccos(np.clip((np.trace(R) - 1) / 2, -1, 1))))
    return float(min(errors))


def index_with_truth(experiment: Experiment, strong: ReflectionTable, tolerance: float = 0.3,
                     max_offset_px: float = 3.0, max_offset_images: float = 2.0) -> ReflectionTable:
    """Assign Miller indices from the true A, flag indexed, and add xyzcal.* and entering from
    the true model's predictions (matched on h and the nearer crossing; the scan-varying
    predictor when the crystal has scan points, as DIALS predicts from a refined model).
    Spots further than ``max_offset_px`` / ``max_offset_images`` from their prediction stay
    unindexed (a wrong h rounded within ``tolerance``, or a refined rather than true model)."""
    beam, det, gonio, scan, crystal = (experiment.beam, experiment.detector, experiment.goniometer,
                                       experiment.scan, experiment.crystal)
    table = strong.copy()
    xyz = table["xyzobs.px.value"]
    rlp = reciprocal_lattice_points(xyz, beam, det, gonio, scan)
    hf = rlp @ np.linalg.inv(crystal.A).T
    h = np.rint(hf).astype(np.int32)
    ok = (np.linalg.norm(hf - h, axis=1) < tolerance) & np.any(h != 0, axis=1)
    if crystal.A_at_scan_points is not None:
        pred = predict_rotation_scan_varying(h[ok], crystal.A_at_scan_points, beam, det, gonio, scan,
                                             require_on_panel=False)
    else:
        pred = predict_rotation(h[ok], crystal.A, beam, det, gonio, scan, require_on_panel=False)
    rows = np.nonzero(ok)[0]
    xyzcal_px = np.full((len(table), 3), np.nan)
    xyzcal_mm = np.full((len(table), 3), np.nan)
    entering = np.zeros(len(table), bool)
    # for each indexed spot, the crossing nearest its observed z
    source = rows[pred.source_row]
    dz = np.abs(pred.z_px - xyz[source, 2])
    order = np.lexsort((dz, source))
    first = np.unique(source[order], return_index=True)[1]
    best = order[first]
    offset = pred.xyzcal_px[best] - xyz[source[best]]
    close = (np.hypot(offset[:, 0], offset[:, 1]) <= max_offset_px) & (np.abs(offset[:, 2]) <= max_offset_images)
    best = best[close]
    xyzcal_px[source[best]] = pred.xyzcal_px[best]
    xyzcal_mm[source[best]] = pred.xyzcal_mm[best]
    entering[source[best]] = pred.entering[best]
    indexed = np.zeros(len(table), bool)
    indexed[source[best]] = True
    miller = np.zeros((len(table), 3), np.int32)
    miller[indexed] = h[indexed]
    table["miller_index"] = miller
    table["xyzcal.px"] = xyzcal_px
    table["xyzcal.mm"] = xyzcal_mm
    table["entering"] = entering
    table["id"] = np.where(indexed, 0, -1).astype(np.int32)
    table.set_flags(indexed, Flags.indexed)
    return table
