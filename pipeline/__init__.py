"""ewald's pipeline layer: files, parameters, steps, Dask graphs, clusters, reports and the CLI.

The Python entry point for a whole job is :func:`process` (the ``ewald process`` command)::

    from pipeline import process

    result = process(["sim/1", "sim/2"], space_group="C2", d_min=3.0, goniometer_axis=(-107, -122, 0),
                     workdir="proc")
    print(result.merged.summary)

Importing :mod:`pipeline` stays cheap: the steps, Dask and numba load on the first call.
"""
from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.steps.process import Params, ProcessResult

__all__ = ["process"]


def process(datasets: Sequence[str | PathLike], client: Any = None, params: "Params | None" = None,
            **parameters: Any) -> "ProcessResult":
    """Process many sweeps from images to merged MTZ in one Dask run, as ``ewald process``.

    ``datasets``: folders of images, globs or image templates, one sweep each (each gets a folder
    ``<workdir>/<name>``; scaled and merged results go to ``<workdir>/scale``).

    ``client``: a :class:`distributed.Client` to run on; None starts the cluster the ``cluster.*``
    parameters describe (a LocalCluster by default) and closes it at the end.

    ``params``: a :class:`pipeline.steps.process.Params` to start from (default: the defaults).

    ``**parameters``: parameters by their DIALS-style names, as on the command line, with ``_``
    for ``.`` where a Python keyword needs it: any unique ending of the full name works
    (``d_min=3.0``, ``space_group="C2"``, ``goniometer_axis=(-107, -122, 0)`` for
    ``goniometer.axis``, ``n_workers=2``, ``integrate_chunk_images=8``). Values may be Python
    values (numbers, tuples, None, bools) or the command line's text (``"auto"``,
    ``"99.06,31.01,54.30,90,107.7,90"``). An unknown or ambiguous name raises
    :class:`pipeline.errors.ParameterError` naming the closest valid ones.

    Returns the :class:`~pipeline.steps.process.ProcessResult`: per data set the outcome (its
    integrated data, or the failing step and reason), the scaling and merging results, the
    automatic axis/distance calibration and the timings; ``format_dataset_table(result)`` prints
    it as the command does.
    """
    from pipeline.steps import process as process_step

    params = process_step.Params() if params is None else params
    for key, value in parameters.items():
        params = _set_parameter(params, key, value)
    return process_step.run(list(datasets), params, client=client)


def _set_parameter(params: Any, key: str, value: Any) -> Any:
    """``params`` with the parameter ``key`` names (a dot- or underscore-separated ending of a
    full name) set to ``value`` (parsed as on the command line)."""
    from pipeline.errors import ParameterError
    from pipeline.params import parameter_definitions, parse_parameters, parse_value, replace_parameter

    definitions = parameter_definitions(type(params))
    wanted = key.replace(".", "_")
    matches = [d for d in definitions
               if any("_".join(d.path[i:]) == wanted for i in range(len(d.path)))]
    exact = [d for d in matches if "_".join(d.path) == wanted]
    if len(exact or matches) != 1:
        if matches:
            raise ParameterError(f"{key}: ambiguous parameter name, it matches "
                                 + ", ".join(d.name for d in matches) + "; give more of the name to choose one")
        parse_parameters(type(params), [f"{key}={_text(value)}"])  # raises, naming the closest parameters
        raise ParameterError(f"{key}: unknown parameter")
    definition = (exact or matches)[0]
    if definition.multiple_scopes:
        raise ParameterError(f"{definition.name}: sits in a repeatable block; set it on a params object")
    try:
        parsed = parse_value(_text(value), definition.type)
    except ValueError:
        raise ParameterError(f"{definition.name}={value!r}: invalid value") from None
    return replace_parameter(params, ".".join(definition.attrs), parsed)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return "None"
    if isinstance(value, (list, tuple)):
        return ",".join(_text(v) for v in value)
    return str(value)
