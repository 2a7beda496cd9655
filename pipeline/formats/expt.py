"""DIALS experiment files (``.expt``): ExperimentList JSON ↔ ewald's geometry models.

The file holds one list per model kind (``beam``, ``detector``, ``goniometer``, ``scan``,
``crystal``, ``imageset``, ``profile``, ``scaling_model``) and an ``experiment`` list whose
entries refer to models by index, so experiments may share models. Reading builds one model
object per index, so experiments that share an index share the object (as in dxtbx); writing
lists each distinct object once.

Faithfulness: every model keeps the JSON mapping it was read from in its ``extra`` field.
Writing computes each field from the model and compares it with what the as-read mapping gives
through the same model; where they agree (the field is unchanged) the numbers are written
exactly as read, so a read → write → read cycle is bit-exact even where the model stores a
derived form (e.g. A = UB from the real-space vectors, or global detector frames from frames
local to the detector hierarchy). Keys the models do not interpret (``hierarchy``,
``px_mm_strategy``, ``s0_at_scan_points``, ``recalculated_*``, ...) are copied back verbatim.

Conventions (dxtbx): panel and hierarchy-group frames in the file are local to their parent
group; the global frame is ``[f s n]_parent · local + o_parent``. A multi-axis goniometer
(``axes``, ``angles``, ``scan_axis``; axes listed from the crystal outwards) becomes
F = R_{k−1}…R_0 and S = R_{n−1}…R_{k+1} about the scan axis k. Crystal space groups are stored
as Hall symbols with a leading space (cctbx style, e.g. " C 2y").
"""
from __future__ import annotations

import copy
import json
import os
import uuid
from pathlib import Path

import gemmi
import numpy as np

from algorithms.errors import DataError
from algorithms.geometry.models import Beam, Crystal, Detector, Experiment, Goniometer, Scan, rotation_matrix
from pipeline.errors import InputFileError

MODEL_KINDS = ("beam", "detector", "goniometer", "scan", "crystal", "profile", "scaling_model", "imageset")
_DICT_KINDS = ("profile", "scaling_model", "imageset")  # kept as plain dicts


# --------------------------------------------------------------------------------- file level


def write_bytes_atomically(path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and an atomic rename,
    so that readers never see a half-written file and a failed write leaves no partial output."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_experiments(path) -> list[Experiment]:
    """Read a DIALS ``.expt`` file into a list of :class:`Experiment`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise InputFileError(f"{path}: cannot read the experiment file ({e.strerror or e}); check the path") from None
    except UnicodeDecodeError:
        raise InputFileError(f"{path}: not a DIALS experiment file (expected ExperimentList JSON, found binary data)") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputFileError(f"{path}: not a DIALS experiment file (expected ExperimentList JSON): {e}") from None
    experiments = experiments_from_dict(document, source=str(path))
    for experiment in experiments:
        experiment.directory = str(path.resolve().parent)
    return experiments


def write_experiments(experiments: list[Experiment], path, extra: dict | None = None) -> None:
    """Write ``experiments`` as a DIALS ``.expt`` file, atomically.

    ``extra``: additional top-level keys (e.g. ewald's parameters), which DIALS ignores.
    """
    document = experiments_to_dict(experiments)
    if extra:
        clash = set(extra) & set(document)
        if clash:
            raise ValueError(f"extra keys {sorted(clash)} would overwrite ExperimentList keys")
        document.update(extra)
    write_bytes_atomically(path, (json.dumps(document, indent=2) + "\n").encode())


# ------------------------------------------------------------------------------ experiment list


def experiments_from_dict(document: dict, source: str = "<dict>") -> list[Experiment]:
    """Experiments from a parsed ExperimentList mapping; ``source`` names it in errors."""
    if not isinstance(document, dict) or document.get("__id__", "ExperimentList") != "ExperimentList" or "experiment" not in document:
        found = document.get("__id__") if isinstance(document, dict) else type(document).__name__
        raise InputFileError(f"{source}: not a DIALS experiment file (expected an ExperimentList, found {found!r})")
    built: dict[tuple[str, int], object] = {}

    def model(kind: str, ref, where: str):
        if ref is None:
            return None
        if isinstance(ref, dict):  # a model written inline instead of by index
            key = (kind, id(ref))
            entry = ref
        else:
            entries = document.get(kind) or []
            if not isinstance(ref, int) or not 0 <= ref < len(entries):
                raise InputFileError(f"{source}: {where} refers to {kind} {ref!r}, but the file has {len(entries)} {kind} models")
            key, entry = (kind, ref), entries[ref]
        if key not in built:
            try:
                built[key] = copy.deepcopy(entry) if kind in _DICT_KINDS else _READERS[kind](entry)
            except (KeyError, TypeError, ValueError, IndexError, DataError) as e:
                detail = f"missing key {e}" if isinstance(e, KeyError) else str(e)
                which = f"{kind} model {ref}" if not isinstance(ref, dict) else f"the {kind} model of {where}"
                raise InputFileError(f"{source}: {which} is invalid ({detail})") from None
        return built[key]

    experiments = []
    for i, entry in enumerate(document["experiment"]):
        where = f"experiment {i}"
        refs = {kind: model(kind, entry.get(kind), where) for kind in MODEL_KINDS}
        if refs["beam"] is None or refs["detector"] is None:
            raise InputFileError(f"{source}: {where} has no beam or no detector; ewald needs both")
        experiments.append(
            Experiment(
                beam=refs["beam"],
                detector=refs["detector"],
                goniometer=refs["goniometer"],
                scan=refs["scan"],
                crystal=refs["crystal"],
                imageset=refs["imageset"] if refs["imageset"] is not None else {},
                profile=refs["profile"],
                scaling_model=refs["scaling_model"],
                identifier=entry.get("identifier", ""),
            )
        )
    return experiments


def experiments_to_dict(experiments: list[Experiment]) -> dict:
    """The ExperimentList mapping of ``experiments``; a model object shared by several
    experiments is listed once."""
    lists: dict[str, list] = {kind: [] for kind in MODEL_KINDS}
    index: dict[tuple[str, int], int] = {}

    def ref(kind: str, obj) -> int | None:
        if obj is None or (kind == "imageset" and not obj):
            return None
        key = (kind, id(obj))
        if key not in index:
            index[key] = len(lists[kind])
            lists[kind].append(copy.deepcopy(obj) if kind in _DICT_KINDS else _faithful_json(obj, kind))
        return index[key]

    entries = []
    for e in experiments:
        entry = {"__id__": "Experiment", "identifier": e.identifier}
        for kind in MODEL_KINDS:
            i = ref(kind, getattr(e, kind))
            if i is not None:
                entry[kind] = i
        entries.append(entry)
    order = ("imageset", "beam", "detector", "goniometer", "scan", "crystal", "profile", "scaling_model")
    return {"__id__": "ExperimentList", "experiment": entries, **{kind: lists[kind] for kind in order}}


# ------------------------------------------------------------------------ faithful write-back

def _faithful_json(model, kind: str) -> dict:
    to_json = _WRITERS[kind]
    out = to_json(model)
    as_read = model.extra
    if not as_read:
        return out
    # The as-read mapping replayed through the model: what "unchanged" looks like.
    rebuilt = to_json(_READERS[kind](as_read))
    merged = _merge(out, rebuilt, as_read)
    if kind == "scan" and "properties" in merged:
        # Per-image properties ewald does not know cannot follow a change of image range: drop
        # any whose length no longer fits (dxtbx refuses such a scan).
        n = model.num_images
        merged["properties"] = {k: v for k, v in merged["properties"].items() if len(v) == n}
    return merged


def _merge(out: dict, rebuilt: dict, as_read: dict) -> dict:
    """Per key: the as-read value where the model has not changed it, verbatim where the
    model does not interpret the key, else the value computed from the model."""
    result = {}
    for key, value in as_read.items():
        if key in out:
            result[key] = _merge_value(out[key], rebuilt.get(key), value)
        elif key not in rebuilt:
            result[key] = copy.deepcopy(value)
    for key, value in out.items():
        result.setdefault(key, value)
    return result


def _merge_value(out, rebuilt, as_read):
    if out == rebuilt:
        return copy.deepcopy(as_read)
    if isinstance(out, dict) and isinstance(rebuilt, dict) and isinstance(as_read, dict):
        return _merge(out, rebuilt, as_read)
    if (
        isinstance(out, list)
        and isinstance(rebuilt, list)
        and isinstance(as_read, list)
        and len(out) == len(rebuilt) == len(as_read)
        and all(isinstance(v, dict) for v in out + rebuilt + as_read)
    ):
        return [_merge(o, r, a) for o, r, a in zip(out, rebuilt, as_read)]
    return out


def _list(a) -> list:
    return np.asarray(a, dtype=float).ravel().tolist()


# ------------------------------------------------------------------------------------- beam


def _beam_from_json(d: dict) -> Beam:
    return Beam(
        direction=d["direction"],
        wavelength=float(d["wavelength"]),
        divergence=float(d.get("divergence", 0.0)),
        sigma_divergence=float(d.get("sigma_divergence", 0.0)),
        polarization_normal=d.get("polarization_normal", [0.0, 1.0, 0.0]),
        polarization_fraction=float(d.get("polarization_fraction", 0.5)),
        flux=float(d.get("flux", 0.0)),
        transmission=float(d.get("transmission", 1.0)),
        probe=d.get("probe"),
        extra=copy.deepcopy(d),
    )


def _beam_to_json(beam: Beam) -> dict:
    d = {
        "direction": _list(beam.direction),
        "wavelength": float(beam.wavelength),
        "divergence": float(beam.divergence),
        "sigma_divergence": float(beam.sigma_divergence),
        "polarization_normal": _list(beam.polarization_normal),
        "polarization_fraction": float(beam.polarization_fraction),
        "flux": float(beam.flux),
        "transmission": float(beam.transmission),
    }
    if beam.probe is not None:
        d["probe"] = beam.probe
    return d


# --------------------------------------------------------------------------------- detector

_DEFAULT_HIERARCHY = {
    "name": "",
    "type": "",
    "fast_axis": [1.0, 0.0, 0.0],
    "slow_axis": [0.0, 1.0, 0.0],
    "origin": [0.0, 0.0, 0.0],
    "raw_image_offset": [0, 0],
    "image_size": [0, 0],
    "pixel_size": [0.0, 0.0],
    "trusted_range": [0.0, 0.0],
    "thickness": 0.0,
    "material": "",
    "mu": 0.0,
    "identifier": "",
    "mask": [],
    "gain": 1.0,
    "pedestal": 0.0,
    "px_mm_strategy": {"type": "SimplePxMmStrategy"},
    "children": [{"panel": 0}],
}


def _groups_above_panel(node: dict, panel: int = 0) -> list[dict] | None:
    """The hierarchy groups from the root down to the one holding ``{"panel": panel}``."""
    for child in node.get("children", []):
        if child.get("panel") == panel:
            return [node]
        if "children" in child:
            below = _groups_above_panel(child, panel)
            if below is not None:
                return [node] + below
    return None


def _parent_frame(hierarchy: dict | None) -> tuple[np.ndarray, np.ndarray]:
    """Global orientation [f s n] (columns) and origin of the group holding panel 0."""
    orientation, origin = np.eye(3), np.zeros(3)
    groups = _groups_above_panel(hierarchy) if hierarchy else None
    if hierarchy and groups is None:
        raise ValueError("the detector hierarchy does not contain panel 0")
    for group in groups or []:
        f, s, o = _global_frame(group, orientation, origin)
        orientation, origin = np.column_stack([f, s, np.cross(f, s)]), o
    return orientation, origin


def _global_frame(local: dict, orientation: np.ndarray, origin: np.ndarray):
    f = np.asarray(local["fast_axis"], float)
    s = np.asarray(local["slow_axis"], float)
    return orientation @ (f / np.linalg.norm(f)), orientation @ (s / np.linalg.norm(s)), orientation @ np.asarray(local["origin"], float) + origin


def _detector_from_json(d: dict) -> Detector:
    panels = d["panels"]
    if len(panels) != 1:
        raise ValueError(f"{len(panels)} panels; ewald handles single-panel detectors only")
    p = panels[0]
    orientation, origin = _parent_frame(d.get("hierarchy"))
    fast, slow, panel_origin = _global_frame(p, orientation, origin)
    return Detector(
        origin=panel_origin,
        fast_axis=fast,
        slow_axis=slow,
        pixel_size=tuple(p["pixel_size"]),
        image_size=tuple(p["image_size"]),
        trusted_range=tuple(p["trusted_range"]),
        name=p.get("name", ""),
        type=p.get("type", ""),
        thickness=float(p.get("thickness", 0.0)),
        material=p.get("material", ""),
        mu=float(p.get("mu", 0.0)),
        gain=float(p.get("gain", 1.0)),
        pedestal=float(p.get("pedestal", 0.0)),
        identifier=p.get("identifier", ""),
        raw_image_offset=tuple(p.get("raw_image_offset", (0, 0))),
        mask=copy.deepcopy(p.get("mask", [])),
        extra=copy.deepcopy(d),
    )


def _detector_to_json(det: Detector) -> dict:
    hierarchy = det.extra.get("hierarchy") or _DEFAULT_HIERARCHY
    orientation, origin = _parent_frame(hierarchy)
    inverse = np.linalg.inv(orientation)
    panel = {
        "name": det.name,
        "type": det.type,
        "fast_axis": _list(inverse @ det.fast_axis),
        "slow_axis": _list(inverse @ det.slow_axis),
        "origin": _list(inverse @ (det.origin - origin)),
        "raw_image_offset": [int(v) for v in det.raw_image_offset],
        "image_size": [int(v) for v in det.image_size],
        "pixel_size": [float(v) for v in det.pixel_size],
        "trusted_range": [float(v) for v in det.trusted_range],
        "thickness": float(det.thickness),
        "material": det.material,
        "mu": float(det.mu),
        "identifier": det.identifier,
        "mask": [[int(v) for v in rect] for rect in det.mask],
        "gain": float(det.gain),
        "pedestal": float(det.pedestal),
        "px_mm_strategy": {"type": "SimplePxMmStrategy"},
    }
    return {"panels": [panel], "hierarchy": copy.deepcopy(hierarchy)}


# ------------------------------------------------------------------------------- goniometer


def _multi_axis_rotations(d: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rotation axis, F, S) of a dxtbx multi-axis goniometer description."""
    axes = [np.asarray(a, float) for a in d["axes"]]
    angles_rad = np.radians(np.asarray(d["angles"], float))
    k = int(d["scan_axis"])
    if not 0 <= k < len(axes) or len(angles_rad) != len(axes):
        raise ValueError(f"scan_axis {k} / {len(angles_rad)} angles do not fit {len(axes)} axes")
    fixed, setting = np.eye(3), np.eye(3)
    for i in range(k):  # later (outer) axes multiply from the left
        fixed = rotation_matrix(axes[i], angles_rad[i]) @ fixed
    for i in range(k + 1, len(axes)):
        setting = rotation_matrix(axes[i], angles_rad[i]) @ setting
    return axes[k] / np.linalg.norm(axes[k]), fixed, setting


def _goniometer_from_json(d: dict) -> Goniometer:
    if "axes" in d:
        axis, fixed, setting = _multi_axis_rotations(d)
        return Goniometer(rotation_axis=axis, fixed_rotation=fixed, setting_rotation=setting, extra=copy.deepcopy(d))
    at_scan_points = d.get("setting_rotation_at_scan_points")
    return Goniometer(
        rotation_axis=d["rotation_axis"],
        fixed_rotation=d.get("fixed_rotation", np.eye(3)),
        setting_rotation=d.get("setting_rotation", np.eye(3)),
        setting_rotation_at_scan_points=None if not at_scan_points else np.asarray(at_scan_points, float).reshape(-1, 3, 3),
        extra=copy.deepcopy(d),
    )


def _goniometer_to_json(gonio: Goniometer) -> dict:
    if "axes" in gonio.extra and gonio.setting_rotation_at_scan_points is None:
        axis, fixed, setting = _multi_axis_rotations(gonio.extra)
        unchanged = (
            np.array_equal(axis, gonio.rotation_axis)
            and np.array_equal(fixed, gonio.fixed_rotation)
            and np.array_equal(setting, gonio.setting_rotation)
        )
        if unchanged:
            return {key: copy.deepcopy(gonio.extra[key]) for key in ("axes", "angles", "names", "scan_axis") if key in gonio.extra}
    d = {
        "rotation_axis": _list(gonio.rotation_axis),
        "fixed_rotation": _list(gonio.fixed_rotation),
        "setting_rotation": _list(gonio.setting_rotation),
    }
    if gonio.setting_rotation_at_scan_points is not None:
        d["setting_rotation_at_scan_points"] = [_list(m) for m in gonio.setting_rotation_at_scan_points]
    return d


# ------------------------------------------------------------------------------------- scan


def _padded_exposure_times(values, n: int) -> list:
    """dxtbx's legacy rule: a short list is padded with its last value (none → 0)."""
    values = list(values or [0.0])
    return values[:n] + [values[-1]] * (n - len(values))


def _padded_epochs(values, n: int) -> list:
    """dxtbx's legacy rule: none → zeros, one → constant, short → extrapolated by the last step."""
    values = list(values or [0.0])
    if len(values) == 1:
        return values * n
    step = values[-1] - values[-2]
    return values[:n] + [values[-1] + (i + 1) * step for i in range(n - len(values))]


def _scan_from_json(d: dict) -> Scan:
    first, last = d["image_range"]
    n = last - first + 1
    if "properties" in d:  # dxtbx ≥ 3.9: per-image tables, oscillation = start angle of each image
        properties = d["properties"]
        starts = properties["oscillation"]
        width = properties["oscillation_width"][0] if len(starts) == 1 else starts[1] - starts[0]
        oscillation = (starts[0], width)
        exposure_times, epochs = properties.get("exposure_time"), properties.get("epochs")
    else:
        oscillation = tuple(d["oscillation"])
        exposure_times = _padded_exposure_times(d.get("exposure_time"), n)
        epochs = _padded_epochs(d.get("epochs"), n)
    return Scan(
        image_range=(first, last),
        oscillation=oscillation,
        exposure_times=exposure_times,
        epochs=epochs,
        batch_offset=int(d.get("batch_offset", 0)),
        valid_image_ranges=copy.deepcopy(d.get("valid_image_ranges") or {}),
        extra=copy.deepcopy(d),
    )


def _scan_to_json(scan: Scan) -> dict:
    d = {"image_range": [int(v) for v in scan.image_range], "batch_offset": int(scan.batch_offset)}
    start, width = (float(v) for v in scan.oscillation)
    if "properties" in scan.extra:  # keep the form the file had
        d["properties"] = {
            "oscillation": (start + width * np.arange(scan.num_images)).tolist(),
            "exposure_time": _list(scan.exposure_times),
            "epochs": _list(scan.epochs),
        }
        if scan.num_images == 1:
            d["properties"]["oscillation_width"] = [width]
    else:
        d.update(oscillation=[start, width], exposure_time=_list(scan.exposure_times), epochs=_list(scan.epochs))
    d["valid_image_ranges"] = copy.deepcopy(scan.valid_image_ranges)
    return d


# ---------------------------------------------------------------------------------- crystal


def space_group_from_hall(hall: str) -> gemmi.SpaceGroup:
    """The gemmi space group of a Hall symbol (e.g. " C 2y" → C 1 2 1)."""
    try:
        space_group = gemmi.find_spacegroup_by_ops(gemmi.symops_from_hall(hall.strip()))
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"cannot read Hall symbol {hall!r}: {e}") from None
    if space_group is None:
        raise ValueError(f"Hall symbol {hall!r} is not a space-group setting that gemmi tabulates")
    return space_group


def _crystal_from_json(d: dict) -> Crystal:
    at_scan_points = d.get("A_at_scan_points")
    covariance = d.get("B_covariance")
    return Crystal.from_real_space_vectors(
        d["real_space_a"],
        d["real_space_b"],
        d["real_space_c"],
        space_group=space_group_from_hall(d["space_group_hall_symbol"]),
        A_at_scan_points=None if not at_scan_points else np.asarray(at_scan_points, float).reshape(-1, 3, 3),
        B_covariance=None if not covariance else np.asarray(covariance, float).reshape(9, 9),
        mosaicity=None if d.get("mosaicity") is None else float(d["mosaicity"]),
        extra=copy.deepcopy(d),
    )


def _crystal_to_json(crystal: Crystal) -> dict:
    a, b, c = crystal.real_space_vectors
    d = {
        "__id__": "crystal" if crystal.mosaicity is None else "MosaicCrystalKabsch2010",
        "real_space_a": _list(a),
        "real_space_b": _list(b),
        "real_space_c": _list(c),
        "space_group_hall_symbol": " " + crystal.space_group.hall,
    }
    if crystal.A_at_scan_points is not None:
        d["A_at_scan_points"] = [_list(m) for m in crystal.A_at_scan_points]
    if crystal.B_covariance is not None:
        d["B_covariance"] = _list(crystal.B_covariance)
    if crystal.mosaicity is not None:
        d["mosaicity"] = float(crystal.mosaicity)
    return d


_READERS = {
    "beam": _beam_from_json,
    "detector": _detector_from_json,
    "goniometer": _goniometer_from_json,
    "scan": _scan_from_json,
    "crystal": _crystal_from_json,
}
_WRITERS = {
    "beam": _beam_to_json,
    "detector": _detector_to_json,
    "goniometer": _goniometer_to_json,
    "scan": _scan_to_json,
    "crystal": _crystal_to_json,
}
