"""``ewald simulate``: files, headers like the real Timepix files, truth files that agree with
the images, the true merged MTZ, and user errors."""
from __future__ import annotations

import json

import gemmi
import numpy as np
import pytest

from pipeline.cli import main
from pipeline.formats.smv import HEADER_BYTES, TIMEPIX_SU_KEYS
from pipeline.images import import_experiments, read_image_file
from pipeline.steps.simulate import Params, read_truth, run


def _header(path) -> list[tuple[str, str]]:
    text = path.read_bytes()[:HEADER_BYTES].split(b"}")[0].decode("ascii")
    return [tuple(line.rstrip(";").split("=", 1)) for line in text.splitlines()[1:] if line]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """preset=tiny without noise or background: 2 crystals × 8 images, one of them bad."""
    out = tmp_path_factory.mktemp("sim") / "tiny"
    params = Params(preset="tiny", n_images=8, poisson=False, background_flat=0.0, inelastic_peak=0.0,
                    n_bad_crystals=1, bad_crystal_kind="cell", seed=4)
    return out, run(params, out)


def test_header_has_the_real_files_keys_in_order(tiny, shared_data):
    out, _ = tiny
    real = _header(shared_data / "image_examples" / "TIMEPIX_SU_516-stdgoni_0001.img")
    ours = _header(out / "1" / "00001.img")
    assert [k for k, _ in ours] == [k for k, _ in real] == list(TIMEPIX_SU_KEYS)
    assert dict(ours)["HEADER_BYTES"] == dict(real)["HEADER_BYTES"] == "  512"
    assert (out / "1" / "00001.img").stat().st_size == 512 + 516 * 516 * 2


def test_images_import_to_the_true_geometry(tiny):
    out, result = tiny
    truth = read_truth(out / "1")
    experiment = import_experiments([out / "1"])[0]
    true = truth.experiment
    np.testing.assert_allclose(experiment.detector.origin, true.detector.origin, atol=1e-9)
    assert experiment.scan.image_range == (1, 8)
    np.testing.assert_allclose(experiment.scan.oscillation, true.scan.oscillation, atol=1e-9)
    assert experiment.beam.wavelength == pytest.approx(true.beam.wavelength)
    np.testing.assert_allclose(true.crystal.A, truth.record["A"])
    np.testing.assert_allclose(true.crystal.A_at_scan_points, truth.record["A_at_scan_points"])
    np.testing.assert_allclose(truth.record["rotation_axis"], np.array([-107, -122, 0]) / np.hypot(107, 122))
    assert truth.record["distance_mm"] == pytest.approx(1762.0)
    assert result.experiments[0].identifier == truth.record["identifier"] == true.identifier


def test_truth_counts_are_in_the_written_images(tiny):
    """Summed over the whole image stack, the written (rounded) pixels hold the truth's counts."""
    out, _ = tiny
    truth = read_truth(out / "2")
    stack = np.stack([read_image_file(out / "2" / f"{k:05d}.img") for k in range(1, 9)]).astype(float)
    o = truth.observations
    nf, ns = 516, 516
    x, y = o.xyz_px[:, 0], o.xyz_px[:, 1]
    inside = (x > 15) & (x < nf - 15) & (y > 15) & (y < ns - 15)
    assert stack.sum() == pytest.approx(o.counts[inside].sum(), rel=0.02)
    table = truth.reflection_table(1)
    assert len(table) == len(o) and set(table["id"]) == {1}
    np.testing.assert_allclose(table["xyzcal.px"], o.xyz_px)
    assert truth.record["bad_crystal"] and truth.record["bad_kind"] == "cell"
    cell = truth.record["unit_cell"]
    assert not np.allclose(cell[:3], [99.06, 31.01, 54.30], rtol=0.02)


def test_true_merged_mtz_holds_the_observed_true_intensities(tiny):
    out, result = tiny
    mtz = gemmi.read_mtz_file(str(out / "true_merged.mtz"))
    assert mtz.spacegroup.xhm() == "C 1 2 1"
    assert mtz.cell.parameters == pytest.approx((99.06, 31.01, 54.30, 90, 107.7, 90), abs=1e-3)
    data = np.array(mtz, copy=False)
    keys = {tuple(h): i for h, i in zip(data[:, :3].astype(int), data[:, mtz.column_labels().index("IMEAN")])}
    o = read_truth(out / "1").observations
    assert len(o) > 100
    for hkl, intensity in zip(o.asu_miller_index[:300], o.intensity_true[:300]):
        assert keys[tuple(hkl)] == pytest.approx(intensity, rel=1e-6)
    d = 1 / np.linalg.norm(data[:, :3] @ np.array(mtz.cell.frac.mat.tolist()), axis=1)
    assert d.min() >= result.summary["d_min"] and len(data) == result.summary["n_true_unique"]
    assert result.summary["d_min"] == pytest.approx(2.0, abs=0.05)  # the Timepix corners at 1762 mm
    summary = json.loads((out / "simulation.json").read_text())
    assert summary["spec"]["n_images"] == 8 and len(summary["crystals"]) == 2
    assert summary == result.summary


def test_myd88_headers_carry_2193_and_the_truth_1762(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["simulate", "--preset", "myd88", "n_crystals=1", "n_images=2", "n_corrupted_images=0",
                 "n_bad_crystals=0", "sim"]) == 0
    header = dict(_header(tmp_path / "sim" / "1" / "00002.img"))
    truth = json.loads((tmp_path / "sim" / "1" / "truth.json").read_text())
    assert header["DISTANCE"] == "2.193" and truth["header_distance_mm"] == 2.193
    assert truth["distance_mm"] == pytest.approx(1762.0)
    assert header["TIME"] == "2.0" and header["OSC_RANGE"] == "0.9149"
    assert float(header["OSC_START"]) == pytest.approx(truth["scan"]["oscillation_deg"][0] + 0.9149, abs=1e-4)
    assert (float(header["BEAM_CENTER_X"]), float(header["BEAM_CENTER_Y"])) == pytest.approx(
        tuple(truth["beam_centre_px"]), abs=1e-9)
    assert abs(truth["beam_centre_px"][0] - 228) <= 1 and abs(truth["beam_centre_px"][1] - 235) <= 1
    assert truth["header_rotation_axis"] is None


def test_user_errors_exit_2_and_write_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["simulate", "preset=tiny"]) == 2
    assert main(["simulate", "preset=tiny", "space_group=Q9", "out"]) == 2
    assert main(["simulate", "preset=tiny", "space_group=P43212", "out"]) == 2  # monoclinic cell
    assert not (tmp_path / "out").exists()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert main(["simulate", "preset=tiny", "n_images=1", "busy"]) == 2
    assert main(["simulate", "preset=tiny", "n_images=1", "overwrite=True", "busy"]) == 2
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert "output folder" in capsys.readouterr().err + (tmp_path / "simulate.log").read_text()


def test_overwrite_replaces_a_previous_simulation(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["simulate", "preset=tiny", "n_crystals=1", "n_images=1", "seed=1", "again"]) == 0
    first = (tmp_path / "again" / "1" / "truth.json").read_text()
    assert main(["simulate", "preset=tiny", "n_crystals=1", "n_images=1", "seed=2", "again"]) == 2
    assert main(["simulate", "preset=tiny", "n_crystals=1", "n_images=1", "seed=2", "overwrite=True", "again"]) == 0
    assert (tmp_path / "again" / "1" / "truth.json").read_text() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "simulate.log"]


def test_xray_preset_writes_adsc_images_that_import_to_the_true_geometry(tmp_path):
    out = tmp_path / "xray"
    run(Params(preset="xray", n_crystals=1, n_images=2, image_size=(400, 400), beam_centre_px=(201.0, 198.0)), out)
    truth = read_truth(out / "1")
    experiment = import_experiments([out / "1"])[0]
    assert experiment.imageset["format_class"] == "FormatSMVADSC"
    true = truth.experiment
    np.testing.assert_allclose(experiment.detector.origin, true.detector.origin, atol=1e-9)
    np.testing.assert_allclose(experiment.goniometer.rotation_axis, true.goniometer.rotation_axis)
    np.testing.assert_allclose(experiment.scan.oscillation, true.scan.oscillation, atol=1e-9)
    assert experiment.beam.polarization_fraction == true.beam.polarization_fraction == 0.999
    assert truth.record["space_group"] == "P 43 21 2" and truth.record["probe"] == "x-ray"
    images = np.stack([read_image_file(out / "1" / f"{k:05d}.img") for k in (1, 2)])
    assert images.shape == (2, 400, 400) and images.max() > 100


def test_files_do_not_depend_on_the_number_of_threads(tmp_path):
    outputs = []
    for nproc in (1, 2):
        out = tmp_path / f"n{nproc}"
        run(Params(preset="tiny", n_crystals=3, n_images=3, n_corrupted_images=2, nproc=nproc), out)
        outputs.append(out)
    for crystal in ("1", "2", "3"):
        for name in ("00001.img", "00002.img", "00003.img", "truth.json"):
            assert (outputs[0] / crystal / name).read_bytes() == (outputs[1] / crystal / name).read_bytes()


@pytest.mark.slow
def test_the_full_myd88_preset(tmp_path):
    """18 crystals × 72 images as the tutorial's data, with one bad crystal and six corrupted
    images (at sweep ends and in the middle), recorded in the truth."""
    out = tmp_path / "myd88"
    result = run(Params(preset="myd88"), out)
    folders = sorted(int(p.name) for p in out.iterdir() if p.is_dir())
    assert folders == list(range(1, 19))
    assert all(len(list((out / str(i)).glob("*.img"))) == 72 for i in folders)
    records = [json.loads((out / str(i) / "truth.json").read_text()) for i in folders]
    assert sum(r["bad_crystal"] for r in records) == 1 and not records[0]["bad_crystal"]
    corrupted = [(r["crystal"], c["image"]) for r in records for c in r["corrupted_images"]]
    assert len(corrupted) == 6 and all(crystal != 1 for crystal, _ in corrupted)
    ends = [image for _, image in corrupted if image <= 3 or image >= 70]
    assert len(ends) == 3
    assert {dict(_header(out / "5" / "00072.img"))["DISTANCE"]} == {"2.193"}
    assert all(r["distance_mm"] == pytest.approx(1762.0) for r in records)
    assert all(r["drift"]["rotation_deg"] == 0.2 for r in records)
    assert 6000 < len(result.reflections) / 18 < 8000
