"""Per-dataset task plumbing for the ``process`` graph: resumable steps and failure records.

Each step of a data set writes its outputs into the data set's folder and then a small record,
``<folder>/.ewald/<step>.json``, holding a key computed from the step's parameters and the key
of its input. When the graph is built again (a rerun after an interrupt, or with other
parameters downstream), a step whose record carries the expected key is replaced by a task that
loads its outputs, so finished work is skipped and anything whose inputs changed is redone.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from algorithms.reflection_table import ReflectionTable
from pipeline.formats.expt import read_experiments, write_experiments
from pipeline.formats.refl import read_reflections, write_reflections
from pipeline.params import parameters_to_dict

RECORD_FOLDER = ".ewald"


@dataclass(frozen=True)
class DatasetFailure:
    """Why a data set left the job: the step that failed and the reason."""

    dataset: str
    step: str
    reason: str


def step_key(step: str, params, upstream: str = "") -> str:
    """A key for a step's outputs: its name, its parameters and the key of its inputs."""
    from pipeline.logging_setup import ewald_version

    payload = json.dumps({"step": step, "params": parameters_to_dict(params) if params is not None else None,
                          "upstream": upstream, "version": ewald_version()}, sort_keys=True, default=str)
    return hashlib.sha1(payload.encode()).hexdigest()[:16]


def _record_path(folder: Path, step: str) -> Path:
    return folder / RECORD_FOLDER / f"{step}.json"


def is_done(folder: Path, step: str, key: str) -> bool:
    """Whether ``step`` already wrote outputs for ``key`` in ``folder`` (and they still exist)."""
    path = _record_path(folder, step)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return record.get("key") == key and all((folder / name).exists() for name in record.get("outputs", []))


def save_outputs(folder: Path, step: str, key: str, experiments=None, reflections: ReflectionTable | None = None,
                 names: tuple[str, str] | None = None, extra: dict | None = None) -> None:
    """Write a step's experiments/reflections (atomically) and then its record."""
    folder.mkdir(parents=True, exist_ok=True)
    outputs = []
    if names is None:
        names = (f"{step}.expt", f"{step}.refl")
    if experiments is not None:
        write_experiments(experiments, folder / names[0])
        outputs.append(names[0])
    if reflections is not None:
        write_reflections(reflections, folder / names[1])
        outputs.append(names[1])
    record = {"key": key, "outputs": outputs, **(extra or {})}
    path = _record_path(folder, step)
    path.parent.mkdir(exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)


def load_outputs(folder: Path, step: str, names: tuple[str, str] | None = None):
    """The experiments and reflections a finished step wrote (either may be None)."""
    if names is None:
        names = (f"{step}.expt", f"{step}.refl")
    record = json.loads(_record_path(folder, step).read_text())
    experiments = read_experiments(folder / names[0]) if names[0] in record["outputs"] else None
    reflections = read_reflections(folder / names[1]) if names[1] in record["outputs"] else None
    return experiments, reflections, record


def record_of(folder: Path, step: str) -> dict:
    return json.loads(_record_path(folder, step).read_text())
