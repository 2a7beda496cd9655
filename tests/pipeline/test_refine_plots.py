"""``ewald plot_scan_varying_model``: the plotted values are the refined scan-varying model, and
the PNGs are written where DIALS writes them."""
import numpy as np
import pytest

from algorithms.refinement.simulation import ed_experiment, perturbed, simulate_reflections
from pipeline.cli import main
from pipeline.formats.expt import write_experiments
from pipeline.params import parse_parameters
from pipeline.steps import plot_scan_varying_model, refine


@pytest.fixture(scope="module")
def refined():
    truth = ed_experiment(seed=8)
    table, _ = simulate_reflections(truth, n_reflections=800, seed=9, drift_orientation_deg=1.5, drift_cell_fraction=0.01)
    start = perturbed(truth, orientation_deg=0.1, cell_fraction=0.002, beam_centre_px=0.3)
    params, _ = parse_parameters(refine.Params, ["detector.fix=distance"])
    return refine.run([start], table, params)


def test_model_is_the_refined_one(refined):
    params, _ = parse_parameters(plot_scan_varying_model.Params, [])
    model = plot_scan_varying_model.run(refined.experiments, None, params).summary["models"][0]
    expected = refined.summary["results"][0].scan_varying_model
    np.testing.assert_allclose(model["unit_cell"], expected["unit_cell"])
    np.testing.assert_allclose(model["orientation_deg"], expected["orientation_deg"], atol=1e-9)
    assert model["image"][0] == 1 and model["image"][-1] == 73 and len(model["phi_deg"]) == 73
    assert model["phi_deg"][0] == pytest.approx(-56.73)
    absolute, _ = parse_parameters(plot_scan_varying_model.Params, ["relative_to_static_orientation=False"])
    lab = plot_scan_varying_model.run(refined.experiments, None, absolute).summary["models"][0]
    assert np.abs(lab["orientation_deg"] - model["orientation_deg"]).max() > 1.0


def test_cli_writes_the_two_plots(tmp_path, monkeypatch, refined):
    write_experiments(refined.experiments, tmp_path / "refined.expt")
    monkeypatch.chdir(tmp_path)
    assert main(["plot_scan_varying_model", "refined.expt"]) == 0
    for name in ("unit_cell.png", "orientation.png"):
        data = (tmp_path / "scan-varying_model" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10000
    static = refined.experiments[0].copy()
    static.crystal.A_at_scan_points = None
    write_experiments([static], tmp_path / "static.expt")
    assert main(["plot_scan_varying_model", "static.expt", "output.directory=other"]) == 2
