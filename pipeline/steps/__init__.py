"""One module per processing step.

Each step module defines a ``Params`` dataclass (declared with :mod:`pipeline.params`) and a
pure-ish ``run(experiments, reflections, params) -> StepResult`` that the command line, the Dask
graph and the tests all call; file reading/writing for the command line is in the module's
``cli`` function.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from algorithms.geometry.models import Experiment
from algorithms.reflection_table import ReflectionTable


@dataclass
class StepResult:
    """What a step produces: new experiments, new reflections and a summary for logs/reports."""

    experiments: list[Experiment]
    reflections: ReflectionTable | None = None
    summary: dict = field(default_factory=dict)
