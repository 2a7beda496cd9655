"""The find_spots step through Dask and the command line, on real lysozyme sweeps against the
strong.refl and log that DIALS wrote for them, and its user errors."""
from __future__ import annotations

import re

import numpy as np
import pytest

from pipeline.params import parse_parameters
from pipeline.steps import find_spots

DIALS_PARAMETERS = {  # from each reference dials.find_spots.log
    "experiment_14": ["d_min=2.5", "untrusted.rectangle=0,516,255,261", "untrusted.rectangle=255,261,0,516"],
    "experiment_24": ["d_min=3.5", "untrusted.rectangle=0,516,255,261", "untrusted.rectangle=255,261,0,516"],
}


def lysozyme(shared_data, name):
    from pipeline.images import import_experiments

    folder = shared_data / "ed_lysozyme_cred"
    experiments = import_experiments([folder / name / "SMV" / "data"])
    return experiments, folder / "reference_dials" / name


def params_from(args):
    params, files = parse_parameters(find_spots.Params, args)
    assert files == []
    return params


@pytest.mark.parametrize("name", sorted(DIALS_PARAMETERS))
def test_strong_spots_equal_dials(shared_data, name):
    from pipeline.formats.refl import read_reflections

    experiments, reference = lysozyme(shared_data, name)
    result = find_spots.run(experiments, None, params_from(DIALS_PARAMETERS[name] + ["mp.chunksize=5"]))
    dials = read_reflections(reference / "strong.refl")
    ours = result.reflections
    assert len(ours) == len(dials)
    for column in ("bbox", "n_signal", "intensity.sum.value", "intensity.sum.variance", "flags", "id", "panel"):
        np.testing.assert_array_equal(ours[column], dials[column], err_msg=column)
    for column in ("xyzobs.px.value", "xyzobs.px.variance"):
        np.testing.assert_allclose(ours[column], dials[column], rtol=0, atol=1e-9, err_msg=column)
    ours_sb, dials_sb = ours["shoebox"], dials["shoebox"]
    for field in ("bbox", "offsets", "data", "mask"):
        np.testing.assert_array_equal(getattr(ours_sb, field), getattr(dials_sb, field), err_msg=field)
    log = (reference / "dials.find_spots.log").read_text()
    strong = [int(n) for n in re.findall(r"Found (\d+) strong pixels on image", log)]
    assert result.summary["imagesets"][0]["strong_pixels_per_image"] == strong


def test_chunk_size_does_not_change_the_table(shared_data):
    experiments, _ = lysozyme(shared_data, "experiment_14")
    tables = [find_spots.run(experiments, None, params_from(DIALS_PARAMETERS["experiment_14"] + [f"mp.chunksize={c}"])).reflections
              for c in (1, 5, 16, 49)]
    for other in tables[1:]:
        for column in tables[0].keys():
            if column == "shoebox":
                np.testing.assert_array_equal(other[column].data, tables[0][column].data)
            else:
                np.testing.assert_array_equal(other[column], tables[0][column], err_msg=column)


def test_graph_has_one_task_per_chunk_besides_reading(shared_data):
    experiments, _ = lysozyme(shared_data, "experiment_14")
    graph = find_spots.find_spots_graph(experiments[0], params_from(["mp.chunksize=8"]))
    keys = [k[0] if isinstance(k, tuple) else k for k in dict(graph.__dask_graph__())]
    n_chunks = 7  # 49 images in chunks of 8
    assert sum(k.startswith("read-images") for k in keys) == n_chunks
    assert sum(k.startswith("strong_pixels_in_chunk") for k in keys) == n_chunks
    assert sum(k.startswith("experiment_mask") for k in keys) == 1  # one mask shared by the chunks
    assert len(keys) == 2 * n_chunks + 2


def ewald(*args):
    from pipeline.cli import main

    return main([str(a) for a in args])


def test_cli_writes_strong_refl_and_dials_log(shared_data, tmp_path, monkeypatch):
    from pipeline.formats.expt import write_experiments
    from pipeline.formats.refl import read_reflections

    experiments, reference = lysozyme(shared_data, "experiment_24")
    monkeypatch.chdir(tmp_path)
    write_experiments(experiments, "imported.expt")
    assert ewald("find_spots", "imported.expt", *DIALS_PARAMETERS["experiment_24"]) == 0
    assert len(read_reflections("strong.refl")) == 847
    log = (tmp_path / "find_spots.log").read_text()
    dials_log = (reference / "dials.find_spots.log").read_text()
    # from "Extracted" to the end of the histogram, our log reads as DIALS' (46 images: both
    # DIALS versions number them alike)
    block = re.compile(r"Extracted .*?\n\d+ +image +\d+\n", re.S)
    ours = re.sub(r"^.*?\| ", "", block.search(log).group(0), flags=re.M)  # strip any log prefix
    assert ours == block.search(dials_log).group(0)
    assert "Saved 847 reflections to strong.refl" in log


@pytest.mark.parametrize("args,message", [
    (["min_local=1"], "min_local"),
    (["lookup.mask=mask.txt"], "npy"),
    (["mp.chunksize=0"], "chunksize"),
])
def test_cli_user_errors_exit_2_without_output(shared_data, tmp_path, monkeypatch, capsys, args, message):
    from pipeline.formats.expt import write_experiments

    experiments, _ = lysozyme(shared_data, "experiment_24")
    monkeypatch.chdir(tmp_path)
    write_experiments(experiments, "imported.expt")
    assert ewald("find_spots", "imported.expt", *args) == 2
    assert message in (tmp_path / "find_spots.log").read_text()
    assert not (tmp_path / "strong.refl").exists()


def test_cli_without_experiments_exits_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert ewald("find_spots") == 2
    assert not (tmp_path / "strong.refl").exists()


def test_log_names_rejected_images():
    summary = {"imagesets": [{
        "first_image": 5, "strong_pixels_per_image": [10, 70000, 12], "rejected_images": [6],
        "max_strong_pixel_fraction": 0.25, "n_extracted": 3, "n_too_small": 1, "n_too_large": 0,
        "min_spot_size": 3, "max_spot_size": 1000, "n_centroided": 2, "n_spots": 2,
        "histogram": "2 spots found on 1 image"}]}
    log = find_spots.format_find_spots_log(summary)
    assert "Found 70000 strong pixels on image 6\nFound 12 strong pixels on image 7\n" in log
    assert "Warning: image 6 has more strong pixels than max_strong_pixel_fraction=0.25" in log
    assert log.rstrip().endswith("Histogram of per-image spot count for imageset 0:\n2 spots found on 1 image")


def test_weak_spots_through_dask_do_not_depend_on_the_chunking(tmp_path):
    """The weak-spot filter in the Dask graph (each chunk task reads the images around its own):
    the same table for chunks of 1, 3 and 24 images, and the spots of DIALS' test plus faint ones."""
    from pipeline.formats.expt import read_experiments
    from pipeline.steps import simulate

    sim_params, _ = parse_parameters(simulate.Params, ["preset=tiny", "n_crystals=1", "seed=4"])
    simulate.run(sim_params, tmp_path / "sim")
    experiments = read_experiments(tmp_path / "sim" / "1" / "truth.expt")
    tables = [find_spots.run(experiments, None, params_from(["d_max=20", f"mp.chunksize={c}", *weak])).reflections
              for c, weak in ((1, ["weak_spots.enable=True"]), (3, ["weak_spots.enable=True"]),
                              (24, ["weak_spots.enable=True"]), (24, []))]
    for other in tables[:2]:  # chunks of 1 image: the halo of 2 comes from two chunks on each side
        for column in ("bbox", "n_signal", "xyzobs.px.value", "intensity.sum.value"):
            np.testing.assert_array_equal(other[column], tables[2][column], err_msg=column)
    tables = tables[1:]
    assert len(tables[1]) > 2 * len(tables[2])
    # the spots of DIALS' test lie inside spots of the filter's (whole reflections where the
    # per-image test keeps pieces) or are kept as they are
    box = tables[1]["bbox"]
    inside = [np.any((box[:, 0] <= x) & (x < box[:, 1]) & (box[:, 2] <= y) & (y < box[:, 3]) & (box[:, 4] <= z) & (z < box[:, 5]))
              for x, y, z in tables[2]["xyzobs.px.value"]]
    assert np.mean(inside) >= 0.97  # measured 1.0
