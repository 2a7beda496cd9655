"""Test helper: strong spots indexed with the simulator's true model (no indexing algorithm),
so that later steps can be tested on their own against the truth."""
from __future__ import annotations

import numpy as np

from algorithms.geometry.models import Experiment
from algorithms.geometry.prediction import predict_rotation, predict_rotation_scan_varying, reciprocal_lattice_points
from algorithms.reflection_table import Flags, ReflectionTable


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
