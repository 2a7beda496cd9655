"""The walk-through's first commands on simulated data (issue 2's acceptance):
ewald simulate; ewald import ../../sim/1/*.img distance=2193 goniometer.axis=-107,-122,0.0;
ewald show imported.expt; ewald show of one image shows the header's own (wrong) values."""
import numpy as np
import pytest

from pipeline.cli import main


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    folder = tmp_path_factory.mktemp("walkthrough")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        assert main(["simulate", "--preset", "tiny", "n_crystals=1", "header_distance=2.193", "sim"]) == 0
    return folder


def test_import_with_overrides_then_show(simulated, monkeypatch, capsys):
    work = simulated / "sim-proc" / "1"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    images = [f"../../sim/1/{p.name}" for p in sorted((simulated / "sim" / "1").glob("*.img"))]
    assert main(["import", *images, "distance=2193", "goniometer.axis=-107,-122,0.0"]) == 0
    capsys.readouterr()
    assert main(["show", "imported.expt"]) == 0
    shown = capsys.readouterr().out
    axis = np.array([-107, -122, 0.0]) / np.hypot(107, 122)
    assert "Format class: FormatSMVTimePix_SU_516x516" in shown
    assert "  distance: 2193\n" in shown
    assert "pixel_size:{0.055,0.055}" in shown
    assert "wavelength: 0.0251\n" in shown
    assert "Rotation axis:   {%.6g,%.6g,0}" % tuple(axis[:2]) in shown
    assert "number of images:   24\n" in shown


def test_show_of_an_image_shows_the_header_values(simulated, monkeypatch, capsys):
    monkeypatch.chdir(simulated)
    assert main(["show", "sim/1/00001.img"]) == 0
    shown = capsys.readouterr().out
    assert "  distance: 2.193\n" in shown  # the header's DISTANCE, taken as mm as dxtbx does
    assert "Rotation axis:   {0.782563,-0.622571,0}" in shown  # the Timepix class's hard-coded axis
