"""An experiment file whose image template is relative finds its images beside itself (dxtbx)."""
import shutil

import numpy as np

from pipeline.formats.expt import read_experiments, write_experiments
from pipeline.images import image_paths, import_experiments, read_image
from smv_files import write_sweep


def test_relative_template_is_relative_to_the_experiment_file(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_sweep(data, 3)
    experiment = import_experiments([str(data)])[0]
    experiment.imageset["template"] = "data/" + experiment.imageset["template"].rsplit("/", 1)[1]
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.move(str(data), moved / "data")
    write_experiments([experiment], moved / "imported.expt")
    again = read_experiments(moved / "imported.expt")[0]
    assert image_paths(again)[0] == moved / "data" / image_paths(again)[0].name
    assert read_image(again, 0).shape == (again.detector.image_size[1], again.detector.image_size[0])
    assert np.all(read_image(again, 2) >= 0)
