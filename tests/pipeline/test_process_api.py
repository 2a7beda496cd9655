"""``pipeline.process``: parameters by their command-line names, and a cheap ``import pipeline``.
(The runs themselves are in test_process_resilience.py, which calls ``process``.)"""
import subprocess
import sys

import pytest

from pipeline import _set_parameter
from pipeline.errors import ParameterError
from pipeline.params import parse_parameters
from pipeline.steps.process import Params


def _set(**parameters) -> Params:
    params = Params()
    for key, value in parameters.items():
        params = _set_parameter(params, key, value)
    return params


def test_keyword_parameters_equal_the_command_line():
    from_python = _set(goniometer_axis=(-107, -122, 0), space_group="C2", d_min=3.0, n_workers=2,
                       unit_cell=(99.06, 31.01, 54.30, 90, 107.7, 90), distance="auto", cluster_kind="slurm",
                       jobs=4, integrate_chunk_images=8, electron_fix_distance=False, **{"index.refinement.parameterisation.detector.fix": None})
    from_command_line, _ = parse_parameters(Params, [
        "goniometer.axis=-107,-122,0", "space_group=C2", "d_min=3.0", "n_workers=2",
        "unit_cell=99.06,31.01,54.30,90,107.7,90", "distance=auto", "cluster.kind=slurm", "jobs=4",
        "integrate.chunk_images=8", "electron_fix_distance=False", "index.refinement.parameterisation.detector.fix=None"])
    assert from_python == from_command_line
    assert from_python.goniometer.axis == (-107.0, -122.0, 0.0) and from_python.cluster.jobs == 4
    assert from_python.d_min == 3.0 and from_python.find_spots.spotfinder.filter.d_min is None


def test_unknown_ambiguous_and_invalid_parameters_are_named():
    with pytest.raises(ParameterError, match=r"d_mn=3.*did you mean d_min"):
        _set(d_mn=3)
    with pytest.raises(ParameterError, match=r"fix: ambiguous.*detector\.fix"):
        _set(fix="distance")
    with pytest.raises(ParameterError, match=r"d_min='far': invalid value"):
        _set(d_min="far")


def test_import_pipeline_loads_neither_dask_nor_numba():
    code = "import sys, pipeline; print(sorted(m for m in ('dask', 'numba', 'distributed') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert callable(__import__("pipeline").process)
