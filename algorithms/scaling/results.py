"""Scaling results in DIALS' shapes: the per-experiment ``scaling_model`` dict of scaled.expt and
the scaled.refl columns and flags (``inverse_scale_factor(_variance)``, ``intensity.scale.*``,
``scaled`` / ``outlier_in_scaling`` / ``excluded_for_scaling`` / ``user_excluded_in_scaling``)."""
from __future__ import annotations

import numpy as np

from algorithms.reflection_table import Flags, ReflectionTable
from algorithms.scaling.data import ScalingData
from algorithms.scaling.scaler import ScalingResult

_SCALING_FLAGS = Flags.scaled | Flags.outlier_in_scaling | Flags.excluded_for_scaling | Flags.user_excluded_in_scaling


def _component(values: np.ndarray, esds: np.ndarray, null_value: float) -> dict:
    return {"n_parameters": int(len(values)), "parameters": [float(v) for v in values], "null_parameter_value": null_value,
            "est_standard_devs": [float(v) for v in esds]}


def scaling_model_dict(result: ScalingResult, data: ScalingData, dataset: int) -> dict:
    """The ``scaling_model`` entry of experiment ``dataset`` (DIALS' physical-model JSON)."""
    model = result.models[dataset]
    scan = data.scans[dataset]
    osc_start, width = scan.oscillation_start_deg, scan.oscillation_width_deg
    corrections = ["scale"] + (["decay"] if model.decay.size else []) + (["absorption"] if model.absorption.size else [])
    ranges = result.valid_image_ranges[dataset]
    span = [ranges[0][0], ranges[-1][1]] if ranges else [scan.image_range[0], scan.image_range[0] - 1]
    config = {"corrections": corrections,
              "valid_osc_range": [osc_start + (span[0] - scan.image_range[0]) * width,
                                  osc_start + (span[1] - scan.image_range[0] + 1) * width],
              "s_norm_fac": 0.999 * width / model.scale_rot_interval_deg, "scale_rot_interval": model.scale_rot_interval_deg}
    document = {"__id__": "physical", "scale": _component(model.scale, model.scale_esd, 1.0)}
    if model.decay.size:
        config.update(d_norm_fac=0.999 * width / model.decay_rot_interval_deg, decay_rot_interval=model.decay_rot_interval_deg)
        document["decay"] = _component(model.decay, model.decay_esd, 0.0)
    if model.absorption.size:
        config.update(lmax=result.model_options.lmax, abs_surface_weight=result.model_options.surface_weight)
        document["absorption"] = _component(model.absorption, model.absorption_esd, 0.0)
    config.update(valid_image_range=span, error_model_type="BasicErrorModel",
                  error_model_parameters=[result.error_model.a, result.error_model.b], Imid=result.imid)
    document["configuration_parameters"] = config
    return document


def annotate_reflections(table: ReflectionTable, rows: np.ndarray, result: ScalingResult, data: ScalingData,
                         dataset: int) -> ReflectionTable:
    """A copy of ``table`` with the scaled.refl columns and flags; ``rows`` are the table rows that
    went into scaling as ``dataset`` (from :func:`scaling_data_from_reflections`)."""
    mine = np.nonzero(data.dataset == dataset)[0]
    if len(mine) != len(rows):
        raise ValueError("rows do not match the dataset's observations in the scaling input")
    out = table.select(np.arange(len(table)))
    n = len(table)
    columns = {"inverse_scale_factor": (result.inverse_scale_factor, 1.0),
               "inverse_scale_factor_variance": (result.inverse_scale_factor_variance, 0.0),
               "intensity.scale.value": (result.intensity, 0.0), "intensity.scale.variance": (result.variance, 0.0)}
    for name, (values, default) in columns.items():
        column = np.full(n, default)
        column[rows] = values[mine]
        out[name] = column
    flags = np.asarray(out["flags"]).astype(np.int64) & ~int(_SCALING_FLAGS)
    unused = np.ones(n, bool)
    unused[rows] = False
    for mask, flag in ((result.scaled, Flags.scaled), (result.outlier, Flags.outlier_in_scaling),
                       (result.excluded_for_scaling, Flags.excluded_for_scaling),
                       (result.user_excluded, Flags.user_excluded_in_scaling)):
        selected = np.zeros(n, bool)
        selected[rows] = mask[mine]
        flags[selected] |= int(flag)
    flags[unused] |= int(Flags.excluded_for_scaling)
    out["flags"] = flags
    return out
