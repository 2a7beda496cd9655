"""The import step (overrides, real data against DIALS' imported.expt) and the show step."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from algorithms.geometry.models import Crystal
from pipeline.errors import InputFileError, ParameterError
from pipeline.params import parse_parameters
from pipeline.steps import import_, show
import smv_files


def run_import(*args):
    params, files = parse_parameters(import_.Params, [str(a) for a in args])
    return import_.run(files, params)


# ------------------------------------------------------------------ real data against DIALS 2.1.1

# Overrides implied by the data owner's imported.expt: the axis is XDS.INP's ROTATION_AXIS
# (−0.6204, 0.7843, 0) with y negated (XDS and DIALS lab frames differ in the sign of y), given
# unnormalised; crystal 14 also had distance=1480.56 (its header says 1481.7449).
LYSOZYME = {
    14: ("distance=1480.56", "goniometer.axis=-0.6204,-0.7843,0"),
    24: ("goniometer.axis=-0.6204,-0.7843,0",),
}


@pytest.mark.parametrize("crystal", sorted(LYSOZYME))
def test_lysozyme_import_matches_dials_reference(shared_data, crystal):
    folder = shared_data / f"ed_lysozyme_cred/experiment_{crystal}/SMV/data"
    reference = json.loads((shared_data / f"ed_lysozyme_cred/reference_dials/experiment_{crystal}/imported.expt").read_text())
    (experiment,) = run_import(folder, *LYSOZYME[crystal]).experiments
    ref_beam, ref_panel = reference["beam"][0], reference["detector"][0]["panels"][0]
    ref_gonio, ref_scan = reference["goniometer"][0], reference["scan"][0]
    beam, detector, gonio, scan = experiment.beam, experiment.detector, experiment.goniometer, experiment.scan

    assert experiment.imageset["format_class"] == "FormatSMVTimePix_SU_516x516"
    assert Path(experiment.imageset["template"]).name == Path(reference["imageset"][0]["template"]).name == "#####.img"
    np.testing.assert_allclose(beam.direction, ref_beam["direction"], atol=1e-6)
    assert beam.wavelength == pytest.approx(ref_beam["wavelength"], abs=1e-6)
    np.testing.assert_allclose(beam.polarization_normal, ref_beam["polarization_normal"], atol=1e-6)
    assert beam.polarization_fraction == pytest.approx(ref_beam["polarization_fraction"], abs=1e-6)
    for ours, key in [(detector.origin, "origin"), (detector.fast_axis, "fast_axis"), (detector.slow_axis, "slow_axis"),
                      (detector.pixel_size, "pixel_size"), (detector.image_size, "image_size"),
                      (detector.trusted_range, "trusted_range")]:
        np.testing.assert_allclose(ours, ref_panel[key], atol=1e-6, err_msg=key)
    assert (detector.name, detector.type, detector.material) == (ref_panel["name"], ref_panel["type"], ref_panel["material"])
    for ours, key in [(detector.thickness, "thickness"), (detector.mu, "mu"), (detector.gain, "gain"), (detector.pedestal, "pedestal")]:
        assert ours == pytest.approx(ref_panel[key], abs=1e-6), key
    assert detector.mask == ref_panel["mask"] == []
    np.testing.assert_allclose(gonio.rotation_axis, ref_gonio["rotation_axis"], atol=1e-6)
    np.testing.assert_allclose(gonio.fixed_rotation.ravel(), ref_gonio["fixed_rotation"], atol=1e-6)
    np.testing.assert_allclose(gonio.setting_rotation.ravel(), ref_gonio["setting_rotation"], atol=1e-6)
    assert scan.image_range == tuple(ref_scan["image_range"]) == (1, {14: 49, 24: 46}[crystal])
    np.testing.assert_allclose(scan.oscillation, ref_scan["oscillation"], atol=1e-6)
    np.testing.assert_allclose(scan.exposure_times, ref_scan["exposure_time"], atol=1e-6)
    np.testing.assert_allclose(scan.epochs, ref_scan["epochs"], atol=1e-6)  # ISO dates → epoch 0, as dxtbx


def test_reference_origin_uses_header_beam_centre_in_pixels(shared_data):
    """DIALS 2.1.1 built the origin as (−BEAM_CENTER_X·px, +BEAM_CENTER_Y·px, −distance): the
    y component comes from BEAM_CENTER_Y (242.745 px → 13.350975 mm), not from DENZO_X_BEAM
    (13.3510, the same centre rounded to 0.1 µm)."""
    reference = json.loads((shared_data / "ed_lysozyme_cred/reference_dials/experiment_24/imported.expt").read_text())
    header = (shared_data / "ed_lysozyme_cred/experiment_24/SMV/data/00001.img").read_bytes()[:512].decode()
    fields = dict(item.strip().split("=", 1) for item in header.split(";") if "=" in item)
    origin = reference["detector"][0]["panels"][0]["origin"]
    assert origin[0] == pytest.approx(-float(fields["BEAM_CENTER_X"]) * 0.055, abs=1e-12)
    assert origin[1] == pytest.approx(float(fields["BEAM_CENTER_Y"]) * 0.055, abs=1e-12)
    assert origin[1] != pytest.approx(float(fields["DENZO_X_BEAM"]), abs=1e-6)
    assert origin[2] == pytest.approx(-float(fields["DISTANCE"]), abs=1e-12)


# ------------------------------------------------------------------------------------ overrides


@pytest.fixture
def sweep(tmp_path):
    folder = tmp_path / "images"
    smv_files.write_sweep(folder, 6)
    return folder


def test_distance_override_keeps_beam_centre_and_axes(sweep):
    (before,) = run_import(sweep).experiments
    (after,) = run_import(sweep, "distance=2193").experiments
    assert before.detector.distance_mm == pytest.approx(2.193)
    assert after.detector.distance_mm == pytest.approx(2193.0, abs=1e-9)
    np.testing.assert_allclose(after.detector.origin, (-12.588125, 12.9679, -2193.0), atol=1e-9)  # dials_data MyD88
    np.testing.assert_allclose(after.detector.beam_centre_px(after.beam.s0), (228.875, 235.78), atol=1e-9)
    np.testing.assert_allclose(after.detector.fast_axis, before.detector.fast_axis)
    np.testing.assert_allclose(after.detector.slow_axis, before.detector.slow_axis)


def test_axis_invert_wavelength_oscillation_overrides(sweep):
    (e,) = run_import(sweep, "goniometer.axis=-107,-122,0.0", "invert_rotation_axis=True",
                      "wavelength=0.02508", "oscillation=10,0.5").experiments
    np.testing.assert_allclose(e.goniometer.rotation_axis, -np.array([-107, -122, 0]) / np.hypot(107, 122), atol=1e-12)
    np.testing.assert_allclose(e.goniometer.rotation_axis, (0.659377, 0.751813, 0), atol=1e-6)
    assert e.beam.wavelength == 0.02508
    assert e.scan.oscillation == (10.0, 0.5)
    np.testing.assert_allclose(e.scan.angle_from_image_index(6), 12.5)


def test_beam_centre_overrides_move_the_panel_in_plane(sweep):
    (e,) = run_import(sweep, "distance=1762", "slow_fast_beam_centre=230.5,240.25").experiments
    np.testing.assert_allclose(e.detector.beam_centre_px(e.beam.s0), (240.25, 230.5), atol=1e-9)
    assert e.detector.distance_mm == pytest.approx(1762.0)
    (m,) = run_import(sweep, "mosflm_beam_centre=12.0,13.5").experiments  # mm, slow then fast
    np.testing.assert_allclose(m.detector.beam_centre_mm(m.beam.s0), (13.5, 12.0), atol=1e-9)
    np.testing.assert_allclose(m.detector.origin, (-13.5, 12.0, -2.193), atol=1e-9)


def test_auto_requests_are_recorded_not_applied(sweep):
    (e,) = run_import(sweep, "goniometer.axis=auto", "distance=auto").experiments
    assert e.imageset["params"]["goniometer_axis"] == "auto"
    assert e.imageset["params"]["distance"] == "auto"
    axis = np.array([0.7826, -0.6226, 0.0])
    np.testing.assert_allclose(e.goniometer.rotation_axis, axis / np.linalg.norm(axis))
    assert e.detector.distance_mm == pytest.approx(2.193)


def test_image_range_and_bad_axis(sweep):
    (e,) = run_import(sweep, "image_range=2,5").experiments
    assert e.scan.image_range == (2, 5) and e.scan.num_images == 4
    with pytest.raises(ParameterError, match="goniometer.axis=0.0,0.0,0.0: give three numbers, not all zero"):
        run_import(sweep, "goniometer.axis=0,0,0")
    with pytest.raises(ParameterError, match="give three numbers"):
        run_import(sweep, "goniometer.axis=1,0")
    with pytest.raises(InputFileError, match="image 7 of image_range=5,7 is not among the files"):
        run_import(sweep, "image_range=5,7")


def test_import_with_zarr_cache(sweep, tmp_path):
    params, files = parse_parameters(import_.Params, [str(sweep), "cache=zarr", f"output.experiments={tmp_path / 'out' / 'imported.expt'}"])
    (tmp_path / "out").mkdir()
    (e,) = import_.run(files, params).experiments
    store = Path(e.imageset["cache"])
    assert store.parent == (tmp_path / "out").resolve() and store.suffix == ".zarr" and store.is_dir()
    from pipeline.images import open_image_stack, read_image

    stack = open_image_stack(e, chunk_images=4)  # uses the recorded cache
    assert "read-images" not in " ".join(map(str, stack.data.__dask_graph__().keys()))
    np.testing.assert_array_equal(stack.values[3], read_image(e, 3))


# ----------------------------------------------------------------------------------------- show


def test_show_text(sweep):
    (e,) = run_import(sweep, "distance=2193", "goniometer.axis=-107,-122,0.0").experiments
    text = show.format_experiments([e])
    for line in [
        "Format class: FormatSMVTimePix_SU_516x516",
        f"Image template: {sweep.resolve() / '#####.img'}",
        "  pixel_size:{0.055,0.055}",
        "  image_size: {516,516}",
        "  trusted_range: {-1,65535}",
        "  fast_axis: {1,0,0}",
        "  slow_axis: {0,-1,0}",
        "  origin: {-12.5881,12.9679,-2193}",
        "  distance: 2193",
        "    wavelength: 0.0251",
        "    sample to source direction : {0,0,1}",
        "    polarization fraction: 0.5",
        "    s0: {0,0,-39.8406}",
        "    mm: (12.59,12.97)",
        "    px: (228.88,235.78)",
        "    number of images:   6",
        "    image range:   {1,6}",
        "    oscillation:   {-56.73,0.9149}",
        "    exposure time: 2",
        "    Rotation axis:   {-0.659377,-0.751813,0}",
        "    Fixed rotation:  {1,0,0,0,1,0,0,0,1}",
    ]:
        assert line in text.splitlines(), line
    assert "Crystal:" not in text


def test_show_crystal():
    from algorithms.geometry.models import Beam, Detector, Experiment, Goniometer, Scan

    U = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    crystal = Crystal.from_cell_and_U((99.06, 31.01, 54.30, 90, 107.7, 90), U, "C 1 2 1")
    crystal.A_at_scan_points = np.repeat(crystal.A[None], 73, axis=0)
    experiment = Experiment(beam=Beam(wavelength=0.0251), detector=Detector(origin=(-12.588125, 12.9679, -1762.0)),
                            goniometer=Goniometer(), scan=Scan((1, 72), (-56.73, 0.9149)), crystal=crystal)
    lines = show.format_experiments([experiment]).splitlines()
    assert "    Unit cell: (99.060, 31.010, 54.300, 90.000, 107.700, 90.000)" in lines
    assert "    Space group: C 1 2 1" in lines
    assert "    A sampled at 73 scan points" in lines
    for name, expected in [("U matrix:", U), ("B matrix:", crystal.B), ("A = UB:", crystal.A)]:
        start = next(i for i, line in enumerate(lines) if line.startswith(f"    {name}"))
        printed = [float(v) for v in re.findall(r"-?\d+\.\d+", " ".join(lines[start:start + 3]))]
        np.testing.assert_allclose(printed, expected.ravel(), atol=5e-5, err_msg=name)
    assert crystal.B[0, 0] == pytest.approx(1 / 99.06) and crystal.B[1, 1] == pytest.approx(1 / 31.01)


# ------------------------------------------------------------------------------ command line


def _ewald(*args) -> int:
    from pipeline.cli import main

    return main([str(a) for a in args])


def test_cli_import_writes_expt_and_show_reads_it(sweep, tmp_path, monkeypatch, capsys):
    from pipeline.formats.expt import read_experiments

    monkeypatch.chdir(tmp_path)
    assert _ewald("import", sweep, "distance=2193", "goniometer.axis=-107,-122,0.0") == 0
    out = capsys.readouterr().out
    assert "  format: FormatSMVTimePix_SU_516x516" in out and "  num images: 6" in out
    assert f"  template: {sweep.resolve() / '#####.img'}:1:6" in out
    (written,) = read_experiments(tmp_path / "imported.expt")
    (direct,) = run_import(sweep, "distance=2193", "goniometer.axis=-107,-122,0.0").experiments
    np.testing.assert_allclose(written.detector.origin, direct.detector.origin, atol=1e-12)
    np.testing.assert_allclose(written.goniometer.rotation_axis, direct.goniometer.rotation_axis, atol=1e-12)
    assert written.scan.image_range == (1, 6) and written.imageset["template"] == direct.imageset["template"]
    assert _ewald("show", "imported.expt") == 0
    assert show.format_experiments([direct]) in capsys.readouterr().out


def test_show_reads_a_dials_expt(shared_data, monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    assert _ewald("show", shared_data / "ed_lysozyme_cred/reference_dials/experiment_24/imported.expt") == 0
    lines = capsys.readouterr().out.splitlines()
    assert "  origin: {-13.4238,13.351,-1481.74}" in lines
    px = next(line for line in lines if line.startswith("    px: ("))
    np.testing.assert_allclose([float(v) for v in re.findall(r"[\d.]+", px)], (244.07, 242.745), atol=0.006)  # the headers' BEAM_CENTER_X/Y
    assert "    Rotation axis:   {-0.620393,-0.784291,0}" in lines
    assert "    image range:   {1,46}" in lines


def _corrupt_truncated(folder: Path) -> str:
    path = folder / "00003.img"
    path.write_bytes(path.read_bytes()[:1000])
    return r"00003\.img: truncated image file \(1000 bytes, the header needs 533024\)"


def _corrupt_missing_key(folder: Path) -> str:
    smv_files.write_smv(folder / "00002.img", np.zeros((516, 516)), smv_files.timepix_header(OSC_START="-55.8151", DISTANCE=None))
    return r"00002\.img: the TIMEPIX_SU SMV header has no DISTANCE"


def _corrupt_size(folder: Path) -> str:
    smv_files.write_smv(folder / "00004.img", None, smv_files.timepix_header(OSC_START="-53.9853", SIZE1="512", SIZE2="512"), shape=(512, 512))
    return r"00004\.img: image of 512×512 pixels but 00001\.img has 516×516"


def _corrupt_gap(folder: Path) -> str:
    (folder / "00004.img").unlink()
    return r"images 00003\.img to 00005\.img: 00004\.img is missing; give image_range= to import a contiguous part"


@pytest.mark.parametrize("corrupt", [_corrupt_truncated, _corrupt_missing_key, _corrupt_size, _corrupt_gap])
def test_cli_bad_images_exit_2_without_output(sweep, tmp_path, monkeypatch, capsys, corrupt):
    expected = corrupt(sweep)
    monkeypatch.chdir(tmp_path)
    assert _ewald("import", sweep) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(expected, err[0]), err
    assert not (tmp_path / "imported.expt").exists()
    assert not list(tmp_path.glob(".imported.expt*"))


def test_cli_missing_folder_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert _ewald("import", tmp_path / "no_such_folder") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no_such_folder: no such file or folder" in err[0]
    assert not (tmp_path / "imported.expt").exists()


def test_show_beam_missing_the_detector(sweep):
    (e,) = run_import(sweep).experiments
    e.beam.direction = np.array([0.0, 0.0, -1.0])  # travelling away from the panel
    lines = show.format_experiments([e]).splitlines()
    assert "Beam centre: the beam does not meet the detector plane" in lines
    assert not any(line.startswith("Max resolution (inscribed)") for line in lines)


def test_oscillation_override_accepts_headers_with_broken_angles(sweep):
    smv_files.write_smv(sweep / "00004.img", np.zeros((516, 516)), smv_files.timepix_header(OSC_START="0.0"))
    with pytest.raises(InputFileError, match=r"00004\.img: starts at 0\.0° .* or oscillation= to override the headers"):
        run_import(sweep)
    (e,) = run_import(sweep, "oscillation=-30,0.5").experiments
    assert e.scan.oscillation == (-30.0, 0.5) and e.scan.image_range == (1, 6)


def test_show_resolution_limits_match_dials_show():
    """dials.show on dials_regression's experiment_1.json (a Pilatus 6M) prints
    'Max resolution (at corners): 1.008178' and '(inscribed):  1.204283'; the origin here is the
    printed one (6 significant digits), which moves the inscribed value by up to ~3e-6."""
    from algorithms.geometry.models import Beam, Detector, Experiment

    experiment = Experiment(beam=Beam(wavelength=0.9795), detector=Detector(
        origin=(-212.478, 220.002, -190.18), pixel_size=(0.172, 0.172), image_size=(2463, 2527)))
    lines = show.format_experiments([experiment]).splitlines()
    assert "Max resolution (at corners): 1.008178" in lines
    inscribed = next(line for line in lines if line.startswith("Max resolution (inscribed):  "))
    assert float(inscribed.split()[-1]) == pytest.approx(1.204283, abs=5e-6)
    assert "    px: (1235.34,1279.08)" in lines
