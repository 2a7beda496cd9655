"""DIALS .expt interchange: exact round trips on real DIALS files, derived geometry, edits."""
import copy
import json
import math

import gemmi
import numpy as np
import pytest

from algorithms.geometry.models import Beam, Crystal, Detector, Experiment, Goniometer, Scan
from pipeline.errors import InputFileError
from pipeline.formats.expt import experiments_from_dict, experiments_to_dict, read_experiments, write_experiments
from pipeline.formats.refl import read_reflections

EXPT_FILES = [
    "quartz_processed/imported.expt",
    "quartz_processed/indexed.expt",
    "quartz_processed/refined.expt",
    "quartz_processed/reindexed.expt",
    "quartz_processed/integrated.expt",
    "quartz_processed/scaled.expt",
    "l_cysteine_narrow_wedge/11_integrated.expt",
    "l_cysteine_narrow_wedge/23_integrated.expt",
    "ed_lysozyme_cred/reference_dials/combined/scaled.expt",
] + [
    f"ed_lysozyme_cred/reference_dials/experiment_{n}/{step}.expt"
    for n in (14, 24)
    for step in ("imported", "indexed", "refined", "integrated")
]


def identical(a, b, where="") -> str | None:
    """First difference between two parsed JSON documents, types included (1 ≠ 1.0)."""
    if type(a) is not type(b):
        return f"{where}: {type(a).__name__} {a!r} vs {type(b).__name__} {b!r}"
    if isinstance(a, dict):
        if set(a) != set(b):
            return f"{where}: keys differ {sorted(set(a) ^ set(b))}"
        return next((d for k in a if (d := identical(a[k], b[k], f"{where}/{k}"))), None)
    if isinstance(a, list):
        if len(a) != len(b):
            return f"{where}: {len(a)} vs {len(b)} items"
        return next((d for i, (x, y) in enumerate(zip(a, b)) if (d := identical(x, y, f"{where}[{i}]"))), None)
    same = a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b))
    return None if same else f"{where}: {a!r} vs {b!r}"


def test_identical_detects_differences():
    assert identical({"a": [1.0, 2.0]}, {"a": [1.0, 2.0]}) is None
    assert identical({"a": [1.0]}, {"a": [1]}) is not None
    assert identical({"a": 0.1 + 0.2}, {"a": 0.3}) is not None
    assert identical({"a": 1}, {"b": 1}) is not None


@pytest.mark.parametrize("name", EXPT_FILES)
def test_real_files_round_trip_exactly(shared_data, tmp_path, name):
    source = shared_data / name
    experiments = read_experiments(source)
    out = tmp_path / "out.expt"
    write_experiments(experiments, out)
    assert identical(json.loads(source.read_text()), json.loads(out.read_text())) is None
    again = read_experiments(out)
    assert [e.identifier for e in again] == [e.identifier for e in experiments]


def strip_as_read(experiments):
    """The same models as if built in memory: no JSON remembered."""
    experiments = copy.deepcopy(experiments)
    for e in experiments:
        for model in (e.beam, e.detector, e.goniometer, e.scan, e.crystal):
            if model is not None:
                model.extra = {}
    return experiments


@pytest.mark.parametrize("name", EXPT_FILES)
def test_models_written_from_scratch_read_back_the_same(shared_data, tmp_path, name):
    """Without the remembered JSON every field is computed from the model; reading it back must
    give the same geometry (this checks the writer's frame and crystal conversions)."""
    original = read_experiments(shared_data / name)
    write_experiments(strip_as_read(original), tmp_path / "x.expt")
    again = read_experiments(tmp_path / "x.expt")
    for a, b in zip(original, again):
        np.testing.assert_allclose(b.beam.s0, a.beam.s0, rtol=0, atol=1e-14)
        for attr in ("origin", "fast_axis", "slow_axis"):
            np.testing.assert_allclose(getattr(b.detector, attr), getattr(a.detector, attr), rtol=0, atol=1e-12)
        np.testing.assert_allclose(b.goniometer.rotation_matrix(0.3), a.goniometer.rotation_matrix(0.3), atol=1e-15)
        assert b.scan.image_range == a.scan.image_range and b.scan.oscillation == a.scan.oscillation
        if a.crystal is not None:
            np.testing.assert_allclose(b.crystal.A, a.crystal.A, rtol=1e-13, atol=1e-16)
            assert b.crystal.space_group.hall == a.crystal.space_group.hall
            assert (b.crystal.A_at_scan_points is None) == (a.crystal.A_at_scan_points is None)


def test_lysozyme_geometry_matches_the_image_header(shared_data):
    (e,) = read_experiments(shared_data / "ed_lysozyme_cred/reference_dials/experiment_14/imported.expt")
    # SMV header: BEAM_CENTER_X=243.9000; BEAM_CENTER_Y=227.7300 (pixels from the pixel-(0,0) corner)
    np.testing.assert_allclose(e.detector.beam_centre_px(e.beam.s0), (243.9, 227.73), atol=1e-9)
    assert e.detector.distance_mm == pytest.approx(1480.56, abs=1e-9)
    assert e.beam.wavelength == 0.0251
    assert e.scan.image_range == (1, 49)
    assert e.scan.oscillation == (-18.28, 0.6873)
    np.testing.assert_array_equal(e.scan.exposure_times, np.full(49, 1.5))
    assert e.imageset["template"].endswith("experiment_14/SMV/data/#####.img")


def test_lysozyme_space_group_and_cell(shared_data):
    (e,) = read_experiments(shared_data / "ed_lysozyme_cred/reference_dials/experiment_14/refined.expt")
    assert e.crystal.space_group.hm == "P 4"
    cell = e.crystal.unit_cell
    assert cell.a == pytest.approx(cell.b, rel=1e-9) and cell.gamma == pytest.approx(90, abs=1e-9)


def test_quartz_models(shared_data):
    (e,) = read_experiments(shared_data / "quartz_processed/refined.expt")
    assert e.beam.wavelength == 0.025079999999999995
    assert e.scan.image_range == (1, 100) and e.scan.oscillation == (-50.0, 1.0)
    assert e.crystal.space_group.hm == "P 31 2 1"
    assert e.crystal.num_scan_points == 101  # scan-varying: image boundaries 0..100
    assert e.detector.pixel_size == (0.026, 0.026) and e.detector.image_size == (1024, 1024)


def test_hierarchy_frame_is_composed_like_dials(shared_data):
    """quartz's hierarchy root is displaced by (0.104, −0.156, 0) mm; DIALS' own predictions
    (xyzcal.mm from s1) agree with the panel only if that offset is applied."""
    (e,) = read_experiments(shared_data / "quartz_processed/integrated.expt")
    table = read_reflections(shared_data / "quartz_processed/integrated.refl")
    xy_mm, valid = e.detector.ray_intersection_mm(table["s1"])
    assert valid.all()
    np.testing.assert_allclose(xy_mm, table["xyzcal.mm"][:, :2], atol=1e-9)


@pytest.mark.parametrize("wedge", ["11", "23"])
def test_multi_axis_goniometer_predicts_dials_s1(shared_data, wedge):
    """s1 = s0 + S·R(ê, φ)·F·A·h reproduces DIALS' predictions for both φ settings (0°, 120°)."""
    (e,) = read_experiments(shared_data / f"l_cysteine_narrow_wedge/{wedge}_integrated.expt")
    table = read_reflections(shared_data / f"l_cysteine_narrow_wedge/{wedge}_integrated.refl")
    indexed = table["id"] >= 0
    h = table["miller_index"][indexed].astype(float)
    phi = table["xyzcal.mm"][indexed, 2]
    r = np.einsum("nij,nj->ni", e.goniometer.rotation_matrix(phi), h @ e.crystal.A.T)
    np.testing.assert_allclose(e.beam.s0 + r, table["s1"][indexed], atol=1e-12)


def test_edited_models_are_written_with_their_new_values(shared_data, tmp_path):
    (e,) = read_experiments(shared_data / "ed_lysozyme_cred/reference_dials/experiment_14/refined.expt")
    e.detector.set_distance_mm(1762.0)
    e.goniometer.invert()
    P = np.array([[0, 1, 0], [-1, 0, 0], [0, 0, 1]])
    e.crystal = e.crystal.change_basis(P)
    e.scan.valid_image_ranges = {e.identifier: [[1, 20], [25, 49]]}
    write_experiments([e], tmp_path / "edited.expt")
    (f,) = read_experiments(tmp_path / "edited.expt")
    assert f.detector.distance_mm == pytest.approx(1762.0, abs=1e-9)
    np.testing.assert_allclose(f.detector.origin, e.detector.origin, rtol=0, atol=1e-12)
    np.testing.assert_allclose(f.goniometer.rotation_axis, e.goniometer.rotation_axis, atol=1e-15)
    np.testing.assert_allclose(f.crystal.A, e.crystal.A, rtol=1e-12)
    assert f.scan.valid_image_ranges == {e.identifier: [[1, 20], [25, 49]]}
    d = json.loads((tmp_path / "edited.expt").read_text())
    assert d["detector"][0]["panels"][0]["px_mm_strategy"] == {"type": "SimplePxMmStrategy"}


def test_edited_multi_axis_goniometer_is_written_as_single_axis(shared_data, tmp_path):
    (e,) = read_experiments(shared_data / "l_cysteine_narrow_wedge/23_integrated.expt")
    e.goniometer.setting_rotation = e.goniometer.setting_rotation @ Goniometer(rotation_axis=(0, 0, 1)).rotation_matrix(0.01)
    write_experiments([e], tmp_path / "x.expt")
    g = json.loads((tmp_path / "x.expt").read_text())["goniometer"][0]
    assert "axes" not in g and "rotation_axis" in g
    (f,) = read_experiments(tmp_path / "x.expt")
    np.testing.assert_array_equal(f.goniometer.rotation_matrix(0.4), e.goniometer.rotation_matrix(0.4))


def test_unknown_keys_survive(shared_data, tmp_path):
    document = json.loads((shared_data / "quartz_processed/refined.expt").read_text())
    document["beam"][0]["probe_note"] = {"kind": "electron", "kV": 200}
    document["detector"][0]["panels"][0]["parallax"] = [1, 2]
    document["crystal"][0]["recalculated_unit_cell"] = [4.9, 4.9, 5.4, 90.0, 90.0, 120.0]
    experiments = experiments_from_dict(document)
    experiments[0].detector.set_distance_mm(300.0)  # edited panel: its unknown key must stay
    written = experiments_to_dict(experiments)
    assert written["beam"][0]["probe_note"] == {"kind": "electron", "kV": 200}
    assert written["detector"][0]["panels"][0]["parallax"] == [1, 2]
    assert written["crystal"][0]["recalculated_unit_cell"] == [4.9, 4.9, 5.4, 90.0, 90.0, 120.0]


def simple_experiment(identifier, beam=None):
    beam = beam or Beam(direction=(0, 0, 1), wavelength=0.0251)
    detector = Detector(origin=(-12.6, 13.0, -1762.0))
    crystal = Crystal.from_cell_and_U((99.06, 31.01, 54.30, 90, 107.7, 90), np.eye(3), space_group="C 1 2 1")
    scan = Scan(image_range=(1, 72), oscillation=(-56.73, 0.9149), exposure_times=2.0)
    return Experiment(
        beam, detector, Goniometer(rotation_axis=(-107, -122, 0)), scan, crystal,
        imageset={"__id__": "ImageSequence", "template": "814/1/#####.img"}, identifier=identifier,
    )


def test_models_built_in_memory_are_written_in_dials_form(tmp_path):
    e = simple_experiment("a")
    write_experiments([e], tmp_path / "new.expt", extra={"ewald": {"version": "0.1"}})
    d = json.loads((tmp_path / "new.expt").read_text())
    assert d["__id__"] == "ExperimentList" and d["ewald"] == {"version": "0.1"}
    assert d["crystal"][0]["space_group_hall_symbol"] == " C 2y"
    assert d["detector"][0]["hierarchy"]["children"] == [{"panel": 0}]
    assert d["experiment"][0] == {
        "__id__": "Experiment", "identifier": "a", "beam": 0, "detector": 0, "goniometer": 0, "scan": 0, "crystal": 0, "imageset": 0,
    }
    (f,) = read_experiments(tmp_path / "new.expt")
    np.testing.assert_allclose(f.crystal.A, e.crystal.A, rtol=1e-13)
    cell = f.crystal.unit_cell
    np.testing.assert_allclose(cell.parameters, (99.06, 31.01, 54.30, 90, 107.7, 90), rtol=1e-12)
    np.testing.assert_allclose(f.goniometer.rotation_axis, np.array([-107, -122, 0]) / np.hypot(107, 122), atol=1e-15)
    assert list(tmp_path.iterdir()) == [tmp_path / "new.expt"]  # no temporary file left


def test_shared_models_are_listed_once_and_shared_on_reading(tmp_path):
    a = simple_experiment("a")
    b = simple_experiment("b", beam=a.beam)
    d = experiments_to_dict([a, b])
    assert len(d["beam"]) == 1 and len(d["detector"]) == 2
    assert [x["beam"] for x in d["experiment"]] == [0, 0]
    write_experiments([a, b], tmp_path / "two.expt")
    x, y = read_experiments(tmp_path / "two.expt")
    assert x.beam is y.beam and x.detector is not y.detector


def test_failed_write_leaves_no_output(tmp_path):
    with pytest.raises(ValueError, match="overwrite"):
        write_experiments([simple_experiment("a")], tmp_path / "x.expt", extra={"beam": []})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"\x80\x02}q\x00.", "binary data"),
        (b"{not json", "expected ExperimentList JSON"),
        (b'{"__id__": "ImageSet"}', "expected an ExperimentList"),
        (b"[1, 2]", "expected an ExperimentList"),
    ],
)
def test_bad_files_are_reported_with_their_name(tmp_path, content, expected):
    path = tmp_path / "bad.expt"
    path.write_bytes(content)
    with pytest.raises(InputFileError, match=expected) as info:
        read_experiments(path)
    assert str(path) in str(info.value)


def test_missing_file_and_unsupported_models(shared_data, tmp_path):
    with pytest.raises(InputFileError, match="nope.expt"):
        read_experiments(tmp_path / "nope.expt")
    document = json.loads((shared_data / "quartz_processed/refined.expt").read_text())
    two_panels = copy.deepcopy(document)
    two_panels["detector"][0]["panels"].append(two_panels["detector"][0]["panels"][0])
    with pytest.raises(InputFileError, match="single-panel"):
        experiments_from_dict(two_panels, source="two.expt")
    bad_index = copy.deepcopy(document)
    bad_index["experiment"][0]["crystal"] = 3
    with pytest.raises(InputFileError, match="crystal 3"):
        experiments_from_dict(bad_index)
    no_wavelength = copy.deepcopy(document)
    del no_wavelength["beam"][0]["wavelength"]
    with pytest.raises(InputFileError, match="beam model 0 is invalid .missing key 'wavelength'"):
        experiments_from_dict(no_wavelength)
    bad_hall = copy.deepcopy(document)
    bad_hall["crystal"][0]["space_group_hall_symbol"] = " Q 9"
    with pytest.raises(InputFileError, match="Hall"):
        experiments_from_dict(bad_hall)


def test_hall_symbols_with_leading_space_map_to_gemmi_groups():
    from pipeline.formats.expt import space_group_from_hall

    assert space_group_from_hall(" C 2y").hm == "C 1 2 1"
    assert space_group_from_hall(' P 31 2"').hm == "P 31 2 1"
    assert space_group_from_hall(" P 4").number == 75
    assert isinstance(space_group_from_hall(" P 1"), gemmi.SpaceGroup)


def test_scans_in_the_per_image_properties_form_of_current_dxtbx(shared_data, tmp_path):
    """dxtbx ≥ 3.9 writes ``properties`` (start angle, exposure, epoch of every image)."""
    document = json.loads((shared_data / "ed_lysozyme_cred/reference_dials/experiment_14/imported.expt").read_text())
    legacy = document["scan"][0]
    n = legacy["image_range"][1] - legacy["image_range"][0] + 1
    start, width = legacy["oscillation"]
    document["scan"][0] = {
        "image_range": legacy["image_range"],
        "batch_offset": 0,
        "properties": {
            "oscillation": [start + width * i for i in range(n)],
            "exposure_time": legacy["exposure_time"],
            "epochs": legacy["epochs"],
            "frame_flag": [1] * n,  # a property ewald does not know
        },
        "valid_image_ranges": {},
    }
    (e,) = experiments_from_dict(document)
    assert e.scan.oscillation[0] == -18.28 and e.scan.oscillation[1] == pytest.approx(0.6873, abs=1e-12)
    assert e.scan.num_images == 49
    assert identical(experiments_to_dict([e])["scan"][0], document["scan"][0]) is None
    e.scan.image_range = (1, 40)
    e.scan.exposure_times = e.scan.exposure_times[:40]
    e.scan.epochs = e.scan.epochs[:40]
    written = experiments_to_dict([e])["scan"][0]
    assert len(written["properties"]["oscillation"]) == 40 and "oscillation" not in written
    assert "frame_flag" not in written["properties"]  # 49 values no longer fit 40 images
    (f,) = experiments_from_dict({**document, "scan": [written]})
    assert f.scan.image_range == (1, 40) and f.scan.oscillation[0] == -18.28


def test_short_legacy_exposure_and_epoch_lists_are_padded_like_dxtbx():
    from pipeline.formats.expt import _scan_from_json

    scan = _scan_from_json({"image_range": [3, 6], "oscillation": [0.0, 0.5], "exposure_time": [2.0], "epochs": [10.0, 11.5]})
    assert scan.exposure_times.tolist() == [2.0, 2.0, 2.0, 2.0]
    assert scan.epochs.tolist() == [10.0, 11.5, 13.0, 14.5]
