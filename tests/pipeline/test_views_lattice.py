"""``ewald reciprocal_lattice``: the page embeds each spot's reciprocal-lattice point (checked
against the true A·h of simulated spots), needs no network, and its script runs: in node, with
a stub DOM, "look down the rotation axis" projects the points perpendicular to the axis."""
from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from algorithms.geometry.models import Beam, Crystal, Detector, Experiment, Goniometer, Scan, rotation_matrix
from algorithms.geometry.prediction import miller_indices_to_d_min, predict_rotation, reciprocal_lattice_points
from algorithms.reflection_table import ReflectionTable
from pipeline.params import parse_parameters
from pipeline.steps import reciprocal_lattice
from pipeline.views.lattice_html import DATA_ELEMENT_ID

NODE = shutil.which("node")
CELLS = [(40.0, 50.0, 60.0, 90.0, 100.0, 90.0), (30.0, 30.0, 45.0, 90.0, 90.0, 120.0)]


def _experiment(cell, seed: int) -> Experiment:
    """A 200 kV electron sweep with a tilted setting rotation and a non-trivial fixed rotation,
    so that every matrix of rlp = F⁻¹·R(−φ)·S⁻¹·(s1 − s0) matters."""
    rng = np.random.default_rng(seed)
    U = rotation_matrix(rng.normal(size=3), rng.uniform(0, np.pi))
    goniometer = Goniometer(rotation_axis=(-0.62, -0.78, 0.0), fixed_rotation=rotation_matrix((0, 0, 1), 0.3),
                            setting_rotation=rotation_matrix((1, 0, 0), 0.02))
    detector = Detector(origin=(-258 * 0.055, 258 * 0.055, -1500.0), image_size=(516, 516))
    return Experiment(beam=Beam(wavelength=0.0251), detector=detector, goniometer=goniometer,
                      scan=Scan(image_range=(1, 40), oscillation=(-20.0, 1.0)),
                      crystal=Crystal.from_cell_and_U(cell, U))


def _spots(experiment: Experiment, experiment_id: int):
    """Predicted spot centroids of the crystal (the truth), a third of them unindexed."""
    hkl = miller_indices_to_d_min(experiment.crystal.A, 2.0)
    p = predict_rotation(hkl, experiment.crystal.A, experiment.beam, experiment.detector, experiment.goniometer, experiment.scan)
    miller = p.miller_index.copy()
    miller[::3] = 0
    table = ReflectionTable({"id": np.full(len(p), experiment_id), "xyzobs.px.value": p.xyzcal_px, "miller_index": miller})
    return table, p.miller_index


@pytest.fixture(scope="module")
def two_crystals():
    experiments = [_experiment(cell, seed) for seed, cell in enumerate(CELLS)]
    tables, true_hkl = zip(*(_spots(e, i) for i, e in enumerate(experiments)))
    return experiments, ReflectionTable.concat(tables), list(true_hkl)


def _page(experiments, reflections, *args) -> str:
    params, files = parse_parameters(reciprocal_lattice.Params, list(args))
    assert files == []
    return reciprocal_lattice.run(experiments, reflections, params).summary["html"]


def _embedded(html: str) -> dict:
    match = re.search(rf'<script type="application/json" id="{DATA_ELEMENT_ID}">(.*?)</script>', html, re.S)
    return json.loads(match.group(1))


def _script(html: str) -> str:
    scripts = re.findall(r"<script>(.*?)</script>", html, re.S)
    assert len(scripts) == 1
    return scripts[0]


def test_embedded_points_are_the_true_reciprocal_lattice_points(two_crystals):
    experiments, reflections, true_hkl = two_crystals
    data = _embedded(_page(experiments, reflections))
    xyz = np.array(data["xyz"]).reshape(-1, 3)
    ids = np.array(data["experiment_id"])
    assert len(xyz) == len(reflections) > 200
    for i, (experiment, hkl) in enumerate(zip(experiments, true_hkl)):
        np.testing.assert_allclose(xyz[ids == i], hkl @ experiment.crystal.A.T, atol=2e-7)
        np.testing.assert_allclose(np.array(data["experiments"][i]["reciprocal_axes"]), experiment.crystal.A.T, atol=1e-7)
        assert data["experiments"][i]["n_points"] == int((ids == i).sum())
    np.testing.assert_array_equal(data["indexed"], np.any(reflections["miller_index"] != 0, axis=1).astype(int))


def test_inverted_axis_maps_with_the_reversed_axis(two_crystals):
    experiments, reflections, true_hkl = two_crystals
    data = _embedded(_page(experiments, reflections, "invert_rotation_axis=True"))
    assert data["invert_rotation_axis"] is True
    xyz = np.array(data["xyz"]).reshape(-1, 3)
    ids = np.array(data["experiment_id"])
    experiment = experiments[0]
    inverted = experiment.goniometer.copy()
    inverted.invert()
    expected = reciprocal_lattice_points(reflections["xyzobs.px.value"][reflections["id"] == 0], experiment.beam,
                                         experiment.detector, inverted, experiment.scan)
    np.testing.assert_allclose(xyz[ids == 0], expected, atol=2e-7)
    # the wrong sense does not give the lattice: points are off A·h by much more than their rounding
    assert np.abs(xyz[ids == 0] - true_hkl[0] @ experiment.crystal.A.T).max() > 1e-3
    np.testing.assert_allclose(data["experiments"][0]["rotation_axis"],
                               np.linalg.inv(experiment.goniometer.fixed_rotation) @ -experiment.goniometer.rotation_axis)


def test_resolution_limits_select_points(two_crystals):
    experiments, reflections, true_hkl = two_crystals
    data = _embedded(_page(experiments, reflections, "d_min=3.05", "d_max=7.9"))
    d = 1.0 / np.linalg.norm(np.array(data["xyz"]).reshape(-1, 3), axis=1)
    true_d = np.concatenate([1.0 / np.linalg.norm(h @ e.crystal.A.T, axis=1) for e, h in zip(experiments, true_hkl)])
    assert ((d >= 3.05) & (d <= 7.9)).all()
    assert len(d) == int(((true_d >= 3.05) & (true_d <= 7.9)).sum()) > 0


def test_page_is_self_contained(two_crystals):
    experiments, reflections, _ = two_crystals
    html = _page(experiments, reflections)
    assert "http" not in html.lower()
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", html)
    assert html.count("<script") == 2  # the data and the renderer, both inline


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_script_parses(two_crystals, tmp_path):
    experiments, reflections, _ = two_crystals
    path = tmp_path / "viewer.js"
    path.write_text(_script(_page(experiments, reflections)))
    subprocess.run([NODE, "--check", str(path)], check=True)


_HARNESS = r"""
const fs = require("fs");
const [scriptPath, dataPath, button] = process.argv.slice(2);
const rectangles = [];
const context = new Proxy({ fillRect: (x, y, w, h) => rectangles.push([x + w / 2, y + h / 2, w]) },
                          { get: (target, name) => name in target ? target[name] : () => {}, set: () => true });
const elements = {};
function element(id) {
  if (!elements[id]) elements[id] = {
    id, style: {}, listeners: {}, disabled: false, checked: id === "show-axis", width: 0, height: 0,
    value: id === "point-size" ? "2" : id === "colour-by" ? "experiment" : "",
    textContent: id === "lattice-data" ? fs.readFileSync(dataPath, "utf8") : "",
    addEventListener(type, f) { (this.listeners[type] = this.listeners[type] || []).push(f); },
    appendChild() {}, getContext() { return context; },
  };
  return elements[id];
}
global.document = { getElementById: element, createElement: () => element("new-" + Math.random()),
                    createTextNode: text => text };
global.window = { innerWidth: 800, innerHeight: 600, devicePixelRatio: 1, addEventListener() {} };
eval(fs.readFileSync(scriptPath, "utf8"));
// every control once (cell axes on, indexed colouring), then the view button
element("show-cell").checked = true;
element("colour-by").value = "indexed";
for (const id of ["show-cell", "colour-by", "point-size"]) for (const f of element(id).listeners.input) f();
if (element("show-cell").disabled || element("colour-by").disabled) throw new Error("controls disabled");
rectangles.length = 0;
for (const f of element(button).listeners.click) f();
console.log(JSON.stringify(rectangles.filter(r => r[2] === 2).map(r => [r[0], r[1]])));
"""


@pytest.mark.skipif(NODE is None, reason="node is not installed")
@pytest.mark.parametrize("button", ["down-axis", "along-beam"])
def test_view_buttons_project_along_the_axis_and_the_beam(two_crystals, tmp_path, button):
    """Screen positions after the button must be an orthographic projection along the chosen
    direction: screen distances proportional to distances perpendicular to it."""
    experiments, reflections, _ = two_crystals
    html = _page(experiments, reflections)
    (tmp_path / "viewer.js").write_text(_script(html))
    data = _embedded(html)
    (tmp_path / "data.json").write_text(json.dumps(data))
    (tmp_path / "harness.js").write_text(_HARNESS)
    out = subprocess.run([NODE, str(tmp_path / "harness.js"), str(tmp_path / "viewer.js"), str(tmp_path / "data.json"), button],
                         check=True, capture_output=True, text=True).stdout
    screen = np.array(json.loads(out))
    xyz = np.array(data["xyz"]).reshape(-1, 3)
    assert len(screen) == len(xyz)  # every point drawn once (in depth order)
    direction = np.array(data["experiments"][0]["rotation_axis" if button == "down-axis" else "beam"])
    flattened = xyz - np.outer(xyz @ direction, direction)
    # points are drawn far to near; match them to the data by their order along the direction
    depth_order = np.argsort(-(xyz @ direction), kind="stable")
    projected = flattened[depth_order]
    pairs = np.random.default_rng(0).integers(0, len(xyz), size=(300, 2))
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    ratio = (np.linalg.norm(screen[pairs[:, 0]] - screen[pairs[:, 1]], axis=1)
             / np.linalg.norm(projected[pairs[:, 0]] - projected[pairs[:, 1]], axis=1))
    assert ratio.std() / ratio.mean() < 1e-6
    full = np.linalg.norm(xyz[depth_order][pairs[:, 0]] - xyz[depth_order][pairs[:, 1]], axis=1)
    assert (np.linalg.norm(screen[pairs[:, 0]] - screen[pairs[:, 1]], axis=1) / full).std() / ratio.mean() > 1e-3


def test_cli_writes_the_page(two_crystals, tmp_path, monkeypatch):
    from pipeline.cli import main
    from pipeline.formats.expt import write_experiments
    from pipeline.formats.refl import write_reflections

    experiments, reflections, _ = two_crystals
    monkeypatch.chdir(tmp_path)
    write_experiments(experiments, "indexed.expt")
    write_reflections(reflections, "indexed.refl")
    assert main(["reciprocal_lattice", "indexed.expt", "indexed.refl"]) == 0
    data = _embedded((tmp_path / "reciprocal_lattice.html").read_text())
    assert len(data["xyz"]) == 3 * len(reflections)
    assert main(["reciprocal_lattice", "indexed.expt"]) == 2


def test_beam_direction_is_that_of_the_middle_of_the_scan(two_crystals):
    """Pixels seen at mid-scan map onto the Ewald sphere |s0 + rlp| = |s0| about that beam."""
    experiments, reflections, _ = two_crystals
    for invert in ("False", "True"):
        data = _embedded(_page(experiments, reflections, f"invert_rotation_axis={invert}"))
        experiment = experiments[0].copy()
        if invert == "True":
            experiment.goniometer.invert()
        beam = np.array(data["experiments"][0]["beam"])
        xyz = np.array([[x, y, 20.0] for x in (0.0, 100.0, 500.0) for y in (10.0, 300.0)])  # images 1–40: mid z = 20
        rlp = reciprocal_lattice_points(xyz, experiment.beam, experiment.detector, experiment.goniometer, experiment.scan)
        s0_length = 1.0 / experiment.beam.wavelength
        np.testing.assert_allclose(np.linalg.norm(rlp + s0_length * beam, axis=1), s0_length, rtol=1e-12)
        off_by_a_degree = reciprocal_lattice_points(xyz + [0, 0, 1], experiment.beam, experiment.detector,
                                                    experiment.goniometer, experiment.scan)
        assert np.abs(np.linalg.norm(off_by_a_degree + s0_length * beam, axis=1) - s0_length).max() > 1e-6
