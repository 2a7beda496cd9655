"""The physical model against DIALS' own numbers: the quartz 3D ED data set scaled by DIALS
(``../shared/data/quartz_processed/scaled.{expt,refl}``)."""
import json

import numpy as np
import pytest

from algorithms.scaling.absorption import absorption_basis, crystal_frame_directions
from algorithms.scaling.smoother import SmootherAxis, auto_intervals_deg

pytest.importorskip("msgpack")


def test_physical_model_reproduces_dials_inverse_scale_factors(shared_data):
    from pipeline.formats.refl import read_reflections

    folder = shared_data / "quartz_processed"
    experiment = json.loads((folder / "scaled.expt").read_text())
    model = experiment["scaling_model"][0]
    scan = experiment["scan"][0]
    first, last = scan["image_range"]
    width = scan["oscillation"][1]
    wedge = (last - first + 1) * width
    scale_interval, decay_interval = auto_intervals_deg(wedge)
    scale_axis = SmootherAxis.from_interval(wedge, width, scale_interval)
    decay_axis = SmootherAxis.from_interval(wedge, width, decay_interval)
    config = model["configuration_parameters"]
    assert scale_axis.n_values == model["scale"]["n_parameters"] == 9
    assert decay_axis.n_values == model["decay"]["n_parameters"] == 7
    assert scale_axis.norm_factor == pytest.approx(config["s_norm_fac"], rel=1e-9)
    assert decay_axis.norm_factor == pytest.approx(config["d_norm_fac"], rel=1e-9)
    assert scale_axis.rot_interval_deg == pytest.approx(config["scale_rot_interval"])

    table = read_reflections(folder / "scaled.refl")
    scaled = (np.asarray(table["flags"]) & (1 << 26)) > 0
    z = np.asarray(table["xyzobs.px.value"])[scaled, 2]
    d = np.asarray(table["d"])[scaled]
    g_dials = np.asarray(table["inverse_scale_factor"])[scaled]
    columns, weights = scale_axis.weights(z)
    scale = (weights * np.asarray(model["scale"]["parameters"])[columns]).sum(axis=1)
    columns, weights = decay_axis.weights(z)
    b_factor = (weights * np.asarray(model["decay"]["parameters"])[columns]).sum(axis=1)
    g = scale * np.exp(b_factor / (2 * d**2))
    relative = np.abs(g / g_dials - 1)
    assert np.median(relative) < 1e-4  # without the (tiny) absorption surface
    assert np.max(relative) < 1e-3

    s0c, s1c = crystal_frame_directions(np.asarray(table["s1"])[scaled], np.asarray(table["xyzobs.mm.value"])[scaled, 2],
                                        experiment["goniometer"][0]["rotation_axis"], experiment["beam"][0]["direction"])
    absorption = 1 + absorption_basis(s0c, s1c, config["lmax"]) @ np.asarray(model["absorption"]["parameters"])
    with_absorption = np.abs(g * absorption / g_dials - 1)
    assert np.median(with_absorption) < 3e-6 < np.median(relative)  # the SH and frame conventions are DIALS'

