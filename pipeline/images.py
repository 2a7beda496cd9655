"""Diffraction images: format recognition, data-set assembly and the lazy image stack.

Formats (recognised from the header, as dxtbx's format classes do):

- ``FormatSMVTimePix_SU_516x516`` — SMV files of the Stockholm University Timepix detector
  (BEAMLINE=TIMEPIX_SU, 516×516 with the wide edge pixels split into three). Models as dxtbx
  builds them (algorithms.md §2.3): beam along −z, unpolarised; one SENSOR_PAD panel, fast +x,
  slow −y, origin (−bx, +by, −DISTANCE) with the beam centre BEAM_CENTER_X/Y given in *pixels*;
  trusted range (−1, 65535); a hard-coded rotation axis (0.7826, −0.6226, 0).
- ``FormatSMVTimePix_SU_512x512`` — the raw 512×512 layout with 165 µm edge pixels. dxtbx
  models it as four panels; ewald's detector is one flat panel, so it is recognised but refused.
- ``FormatSMVADSC`` — any other SMV file with the ADSC keys: beam centre in *mm* in the Mosflm
  frame (BEAM_CENTER_X along slow, BEAM_CENTER_Y along fast), rotation axis (1, 0, 0)
  (reversed for a negative OSC_RANGE).
- ``FormatCBFMiniPilatus`` — CBF files with a miniCBF ("PILATUS_1.2") geometry header.

Headers are parsed here (only the first few hundred bytes of each file are read); SMV pixels
are read with numpy, which agrees bit for bit with fabio (tested), CBF pixels through fabio. A data set is a run of numbered files sharing one template (``#####.img``).

The image stack is an ``xarray.DataArray`` with dims (image, slow, fast) backed by a Dask array
with one task per run of whole images, optionally cached in a compressed zarr store.

References: the SMV/ADSC header convention; dxtbx format classes (Parkhurst et al. (2014)
J. Appl. Cryst. 47, 1459–1465); Waterman et al. (2016) Acta Cryst. D72, 558–575.
"""
from __future__ import annotations

import calendar
import glob
import hashlib
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import dask.array as da
import fabio
import numpy as np
import xarray as xr

from algorithms.geometry.models import Beam, Detector, Experiment, Goniometer, Scan
from pipeline.errors import InputFileError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".img", ".smv", ".cbf")
# dials.import's scan tolerance: consecutive images must join within 3 % of the oscillation width
OSCILLATION_TOLERANCE = 0.03
TIMEPIX_516_AXIS = (0.7826, -0.6226, 0.0)
# rows/columns 255–260 (0-based) of the 516×516 layout are the split "virtual" edge pixels
TIMEPIX_CROSS = (255, 261)
_CBF_BINARY_MARKER = b"\x0c\x1a\x04\xd5"


# ------------------------------------------------------------------------------------ headers


@dataclass(frozen=True)
class ImageHeader:
    """What one file's header says, and where and how its pixels are stored."""

    path: Path
    format_class: str
    fields: dict  # raw key → value strings
    data_offset: int  # bytes before the pixel array
    shape: tuple[int, int]  # (n_slow, n_fast)
    dtype: str  # numpy dtype of the stored pixels, e.g. "<u2"
    osc_start_deg: float
    osc_width_deg: float
    exposure_time_s: float
    epoch: float

    @property
    def image_size(self) -> tuple[int, int]:
        """(n_fast, n_slow), the dxtbx order."""
        return self.shape[1], self.shape[0]


def _parse_smv_fields(text: str) -> dict:
    body = text[text.index("{") + 1 :]
    body = body[: body.index("}")] if "}" in body else body
    fields = {}
    for item in body.split(";"):
        key, sep, value = item.strip().partition("=")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def _require(path: Path, fields: dict, keys: Iterable[str], what: str) -> None:
    for key in keys:
        if key not in fields:
            raise InputFileError(
                f"{path}: the {what} header has no {key}; this file cannot be imported "
                f"(restore the header or leave the file out)"
            )


def _epoch_from_date(date: str) -> float:
    """Seconds since 1970 (UTC) from an SMV DATE like 'Tue Jun 26 09:43:09 2007'; 0 if the date
    is in another form (dxtbx does the same, so e.g. Instamatic's ISO dates give 0)."""
    date = date.replace("PST", "").replace("PDT", "").strip()
    for form in ("%a %b %d %H:%M:%S %Y", "%a %b %d %H:%M:%S %Z %Y"):
        try:
            return float(calendar.timegm(time.strptime(date, form)))
        except ValueError:
            pass
    return 0.0


def _float(path: Path, fields: dict, key: str) -> float:
    try:
        return float(fields[key])
    except ValueError:
        raise InputFileError(f"{path}: header value {key}={fields[key]!r} is not a number; fix the header") from None


def _smv_header(path: Path, head: bytes) -> ImageHeader:
    text = head.decode("latin-1")
    match = re.search(r"HEADER_BYTES\s*=\s*(\d+)", text)
    if not match:
        raise InputFileError(f"{path}: SMV header has no HEADER_BYTES; the file is not a valid SMV image")
    header_bytes = int(match.group(1))
    if header_bytes > len(head):
        with open(path, "rb") as handle:
            text = handle.read(header_bytes).decode("latin-1")
    fields = _parse_smv_fields(text[:header_bytes])
    if fields.get("BEAMLINE", "").upper() == "TIMEPIX_SU":
        required = ("BEAM_CENTER_X", "BEAM_CENTER_Y", "DISTANCE", "WAVELENGTH", "PIXEL_SIZE", "OSC_START",
                    "OSC_RANGE", "PHI", "SIZE1", "SIZE2", "BYTE_ORDER", "DETECTOR_SN", "TIME")
        _require(path, fields, required, "TIMEPIX_SU SMV")
        size = (fields["SIZE1"], fields["SIZE2"])
        if size == ("516", "516"):
            format_class = "FormatSMVTimePix_SU_516x516"
        elif size == ("512", "512") and _float(path, fields, "PIXEL_SIZE") == 0.055:
            format_class = "FormatSMVTimePix_SU_512x512"
        else:
            raise InputFileError(f"{path}: TIMEPIX_SU image of {size[0]}×{size[1]} pixels; only the 516×516 layout is supported")
        width = _float(path, fields, "OSC_RANGE")
    else:
        required = ("BEAM_CENTER_X", "BEAM_CENTER_Y", "DISTANCE", "WAVELENGTH", "PIXEL_SIZE", "OSC_START",
                    "OSC_RANGE", "SIZE1", "SIZE2", "BYTE_ORDER", "TIME")
        _require(path, fields, required, "SMV")
        format_class = "FormatSMVADSC"
        width = abs(_float(path, fields, "OSC_RANGE"))  # the sign goes into the axis
    if fields.get("TYPE", "unsigned_short") != "unsigned_short":
        raise InputFileError(f"{path}: SMV pixel TYPE={fields['TYPE']} is not supported (only unsigned_short)")
    order = fields["BYTE_ORDER"].lower()
    if order not in ("little_endian", "big_endian"):
        raise InputFileError(f"{path}: SMV BYTE_ORDER={fields['BYTE_ORDER']} is neither little_endian nor big_endian")
    return ImageHeader(
        path=path,
        format_class=format_class,
        fields=fields,
        data_offset=header_bytes,
        shape=(int(fields["SIZE2"]), int(fields["SIZE1"])),
        dtype=("<" if order == "little_endian" else ">") + "u2",
        osc_start_deg=_float(path, fields, "OSC_START"),
        osc_width_deg=width,
        exposure_time_s=_float(path, fields, "TIME"),
        epoch=_epoch_from_date(fields.get("DATE", "")),
    )


def _minicbf_value(path: Path, contents: str, key: str) -> list[float]:
    match = re.search(rf"^#\s*{key}\s+(.*)$", contents, flags=re.MULTILINE)
    if not match:
        raise InputFileError(f"{path}: the miniCBF header has no {key}; this file cannot be imported")
    return [float(v) for v in re.findall(r"[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?", match.group(1))]


def _cbf_header(path: Path) -> ImageHeader:
    with open(path, "rb") as handle:
        head = handle.read(65536)
    marker = head.find(_CBF_BINARY_MARKER)
    if marker < 0:
        raise InputFileError(f"{path}: no CBF binary section found in the first 64 KiB; the file is not a CBF image")
    text = head[:marker].decode("latin-1")
    mime = dict(re.findall(r"^(X-Binary-[\w-]+|Content-Type):\s*(.+?)\s*$", text, flags=re.MULTILINE))
    binary_size = int(mime.get("X-Binary-Size", 0))
    shape = (int(mime.get("X-Binary-Size-Second-Dimension", 0)), int(mime.get("X-Binary-Size-Fastest-Dimension", 0)))
    convention = re.search(r"_array_data\.header_convention\s+['\"]?([^'\"\n]+)", text)
    if not convention or not convention.group(1).upper().startswith("PILATUS"):
        raise InputFileError(
            f"{path}: CBF without a miniCBF (PILATUS) geometry header "
            f"(header_convention {convention.group(1).strip() if convention else 'missing'}); "
            f"ewald cannot build a detector model from it"
        )
    contents = text[text.find("_array_data.header_contents") :]
    return ImageHeader(
        path=path,
        format_class="FormatCBFMiniPilatus",
        fields={"header_contents": contents, "binary_size": binary_size, "binary_offset": marker + 4},
        data_offset=marker + 4,
        shape=shape,
        dtype="<i4",
        osc_start_deg=_minicbf_value(path, contents, "Start_angle")[0],
        osc_width_deg=_minicbf_value(path, contents, "Angle_increment")[0],
        exposure_time_s=_minicbf_value(path, contents, "Exposure_time")[0],
        epoch=0.0,
    )


def read_image_header(path: str | Path) -> ImageHeader:
    """Parse one image file's header (reads only its first bytes) and recognise its format.

    Also checks that the file is long enough to hold its pixels, so truncated files are found
    at import instead of half-way through spot finding.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(1024)
        file_size = os.stat(path).st_size
    except OSError as err:
        raise InputFileError(f"{path}: cannot read the image file ({err.strerror}); check the path and permissions") from None
    if head.lstrip().startswith(b"{") and b"HEADER_BYTES" in head[:64]:
        header = _smv_header(path, head)
        needed = header.data_offset + header.shape[0] * header.shape[1] * np.dtype(header.dtype).itemsize
    elif head.startswith(b"###CBF"):
        header = _cbf_header(path)
        needed = header.data_offset + header.fields["binary_size"]
    else:
        raise InputFileError(f"{path}: not an SMV or CBF image (unrecognised header); give image files such as *.img")
    if file_size < needed:
        raise InputFileError(
            f"{path}: truncated image file ({file_size} bytes, the header needs {needed}); "
            f"copy it again or give image_range= to leave it out"
        )
    return header


# ------------------------------------------------------------------------------------- models


def _timepix_models(header: ImageHeader, mask_timepix_cross: bool) -> tuple[Beam, Detector, Goniometer]:
    f = header.fields
    if header.format_class == "FormatSMVTimePix_SU_512x512":
        raise InputFileError(
            f"{header.path}: FormatSMVTimePix_SU_512x512 images are four panels with 165 µm edge pixels; "
            f"ewald models one flat panel: convert them to the 516×516 layout (edge pixels split in three)"
        )
    pixel_mm = float(f["PIXEL_SIZE"])
    fast, slow = np.array([1.0, 0.0, 0.0]), np.array([0.0, -1.0, 0.0])
    # BEAM_CENTER_X/Y are pixels along fast/slow from the corner of pixel (0, 0)
    bx_mm, by_mm = float(f["BEAM_CENTER_X"]) * pixel_mm, float(f["BEAM_CENTER_Y"]) * pixel_mm
    origin = np.array([0.0, 0.0, -float(f["DISTANCE"])]) - bx_mm * fast - by_mm * slow
    mask = []
    if mask_timepix_cross:
        lo, hi = TIMEPIX_CROSS
        n_fast, n_slow = header.image_size
        mask = [[0, n_fast, lo, hi], [lo, hi, 0, n_slow]]
    detector = Detector(
        origin=origin, fast_axis=fast, slow_axis=slow, pixel_size=(pixel_mm, pixel_mm),
        image_size=header.image_size, trusted_range=(-1.0, 65535.0), type="SENSOR_PAD",
        thickness=0.3, material="Si", mu=0.0, gain=1.0, pedestal=0.0, mask=mask,
    )
    beam = Beam(direction=(0.0, 0.0, 1.0), wavelength=float(f["WAVELENGTH"]),
                polarization_normal=(0.0, 1.0, 0.0), polarization_fraction=0.5)
    return beam, detector, Goniometer(rotation_axis=TIMEPIX_516_AXIS)


def _adsc_models(header: ImageHeader) -> tuple[Beam, Detector, Goniometer]:
    f = header.fields
    pixel_mm = float(f["PIXEL_SIZE"])
    pedestal = float(f.get("IMAGE_PEDESTAL", 0.0))
    fast, slow = np.array([1.0, 0.0, 0.0]), np.array([0.0, -1.0, 0.0])
    # ADSC headers give the beam centre in mm in the Mosflm frame: X along slow, Y along fast
    beam_fast_mm, beam_slow_mm = float(f["BEAM_CENTER_Y"]), float(f["BEAM_CENTER_X"])
    origin = np.array([0.0, 0.0, -float(f["DISTANCE"])]) - beam_fast_mm * fast - beam_slow_mm * slow
    detector = Detector(
        origin=origin, fast_axis=fast, slow_axis=slow, pixel_size=(pixel_mm, pixel_mm),
        image_size=header.image_size, trusted_range=(-1.0 - pedestal, 65535.0 - pedestal),
        type="SENSOR_CCD", thickness=0.0, material="", mu=0.0,
        # dxtbx guesses CCD gains from the module model; ewald takes GAIN if given, else 1
        gain=float(f.get("GAIN", 1.0)), pedestal=pedestal,
    )
    beam = Beam(direction=(0.0, 0.0, 1.0), wavelength=float(f["WAVELENGTH"]), polarization_fraction=0.999)
    axis = (1.0, 0.0, 0.0) if float(f["OSC_RANGE"]) > 0 else (-1.0, 0.0, 0.0)
    return beam, detector, Goniometer(rotation_axis=axis)


def _minicbf_models(header: ImageHeader) -> tuple[Beam, Detector, Goniometer]:
    contents, path = header.fields["header_contents"], header.path
    pixel_m = _minicbf_value(path, contents, "Pixel_size")
    pixel_mm = (pixel_m[0] * 1000.0, pixel_m[1] * 1000.0)
    beam_px = _minicbf_value(path, contents, "Beam_xy")
    distance_mm = _minicbf_value(path, contents, "Detector_distance")[0] * 1000.0
    cutoff = re.search(r"^#\s*Count_cutoff\s+(\d+)", contents, flags=re.MULTILINE)
    thickness = re.search(r"thickness\s+([\d.eE+-]+)\s*m", contents)
    fast, slow = np.array([1.0, 0.0, 0.0]), np.array([0.0, -1.0, 0.0])
    origin = np.array([0.0, 0.0, -distance_mm]) - beam_px[0] * pixel_mm[0] * fast - beam_px[1] * pixel_mm[1] * slow
    detector = Detector(
        origin=origin, fast_axis=fast, slow_axis=slow, pixel_size=pixel_mm, image_size=header.image_size,
        trusted_range=(-1.0, float(cutoff.group(1)) if cutoff else 1048575.0), type="SENSOR_PAD",
        thickness=float(thickness.group(1)) * 1000.0 if thickness else 0.0, material="Si", mu=0.0,
    )
    beam = Beam(direction=(0.0, 0.0, 1.0), wavelength=_minicbf_value(path, contents, "Wavelength")[0],
                polarization_fraction=0.999)
    return beam, detector, Goniometer(rotation_axis=(1.0, 0.0, 0.0))


def models_from_header(header: ImageHeader, mask_timepix_cross: bool = False) -> tuple[Beam, Detector, Goniometer]:
    """Beam, detector and goniometer as dxtbx's format class builds them from this header."""
    if header.format_class.startswith("FormatSMVTimePix_SU"):
        return _timepix_models(header, mask_timepix_cross)
    if header.format_class == "FormatSMVADSC":
        return _adsc_models(header)
    return _minicbf_models(header)


# ---------------------------------------------------------------------------- finding the files


def _template_and_number(path: Path) -> tuple[str, int | None]:
    """'…/00012.img' → ('…/#####.img', 12): the last run of digits in the file name."""
    name = path.name
    runs = list(re.finditer(r"\d+", name))
    if not runs:
        return str(path), None
    run = runs[-1]
    return str(path.with_name(name[: run.start()] + "#" * len(run.group()) + name[run.end() :])), int(run.group())


def _paths_from_template(template: str) -> list[Path]:
    folder, name = os.path.split(template)
    match = re.search(r"#+", name)
    pattern = re.compile(re.escape(name[: match.start()]) + r"\d{%d,}" % (match.end() - match.start()) + re.escape(name[match.end() :]) + "$")
    folder = folder or "."
    if not os.path.isdir(folder):
        raise InputFileError(f"{folder}: folder of the template {template} does not exist; check the path")
    return [Path(folder) / entry for entry in os.listdir(folder) if pattern.match(entry)]


def expand_image_paths(inputs: Sequence[str | Path]) -> list[Path]:
    """Files named by a list of files, glob patterns, folders or '#' templates (``#####.img``)."""
    paths: list[Path] = []
    for item in map(str, inputs):
        if "#" in os.path.basename(item):
            found = _paths_from_template(item)
        elif any(ch in item for ch in "*?["):
            found = [Path(p) for p in glob.glob(item) if os.path.isfile(p)]
        elif os.path.isdir(item):
            try:
                entries = os.listdir(item)
            except OSError as err:
                raise InputFileError(f"{item}: cannot read the folder ({err.strerror}); check its permissions") from None
            found = [Path(item) / e for e in entries if e.lower().endswith(IMAGE_SUFFIXES) and os.path.isfile(os.path.join(item, e))]
        elif os.path.isfile(item):
            found = [Path(item)]
        else:
            raise InputFileError(f"{item}: no such file or folder; give image files, a folder, a glob or a template like #####.img")
        if not found:
            raise InputFileError(f"{item}: no image files found there (looked for {', '.join(IMAGE_SUFFIXES)}); check the path")
        paths.extend(found)
    if not paths:
        raise InputFileError("no image files given; give image files, a folder, a glob or a template like #####.img")
    return paths


def group_by_template(paths: Iterable[Path]) -> dict[str, list[tuple[int, Path]]]:
    """Files grouped by template, each group sorted by image number (numerically)."""
    groups: dict[str, dict[int, Path]] = {}
    for path in paths:
        path = Path(os.path.abspath(path))
        template, number = _template_and_number(path)
        groups.setdefault(template, {})[1 if number is None else number] = path
    return {t: sorted(g.items()) for t, g in sorted(groups.items())}


def _check_contiguous(numbered: list[tuple[int, Path]], template: str) -> None:
    for (n0, p0), (n1, p1) in zip(numbered, numbered[1:]):
        if n1 != n0 + 1:
            missing = [_image_path(template, n).name for n in range(n0 + 1, n1)]
            what = f"{missing[0]} is missing" if len(missing) == 1 else f"{missing[0]} … {missing[-1]} ({len(missing)} files) are missing"
            raise InputFileError(
                f"images {p0.name} to {p1.name}: {what}; give image_range= to import a contiguous part"
            )


def _image_path(template: str, number: int) -> Path:
    match = re.search(r"#+(?=[^#]*$)", template)
    if not match:
        return Path(template)
    width = match.end() - match.start()
    return Path(template[: match.start()] + f"{number:0{width}d}" + template[match.end() :])


# -------------------------------------------------------------------------------- the data set


def _check_consistent(headers: list[ImageHeader], check_rotation: bool = True) -> None:
    first = headers[0]
    for prev, head in zip(headers, headers[1:]):
        if head.shape != first.shape:
            raise InputFileError(
                f"{head.path}: image of {head.image_size[0]}×{head.image_size[1]} pixels but {first.path.name} has "
                f"{first.image_size[0]}×{first.image_size[1]}; leave it out (image_range=) or import it separately"
            )
        if head.format_class != first.format_class:
            raise InputFileError(f"{head.path}: format {head.format_class} differs from {first.path.name} ({first.format_class}); import them separately")
        if not check_rotation:
            continue
        width = first.osc_width_deg
        tolerance = OSCILLATION_TOLERANCE * abs(width)
        if abs(head.osc_width_deg - width) > tolerance:
            raise InputFileError(
                f"{head.path}: oscillation width {head.osc_width_deg}° differs from {width}° of {first.path.name}; "
                f"give image_range= to import images of one width, or oscillation= to override the headers"
            )
        expected = prev.osc_start_deg + prev.osc_width_deg
        if abs(head.osc_start_deg - expected) > tolerance:
            raise InputFileError(
                f"{head.path}: starts at {head.osc_start_deg}° but {prev.path.name} ends at {expected:.4f}°, so the "
                f"images are not one continuous rotation; give image_range= to import a continuous part, or oscillation= to override the headers"
            )


def experiment_from_headers(template: str, numbered_headers: list[tuple[int, ImageHeader]],
                            mask_timepix_cross: bool = False, check_rotation: bool = True) -> Experiment:
    """One experiment (beam, detector, goniometer, scan, imageset) from a contiguous run of
    headers, as dials.import merges single-image models into one sequence. ``check_rotation=False``
    skips the check that the images' angles form one rotation (for an oscillation override)."""
    numbers = [n for n, _ in numbered_headers]
    headers = [h for _, h in numbered_headers]
    _check_consistent(headers, check_rotation)
    first = headers[0]
    beam, detector, goniometer = models_from_header(first, mask_timepix_cross)
    scan = Scan(
        image_range=(numbers[0], numbers[-1]),
        oscillation=(first.osc_start_deg, first.osc_width_deg),
        exposure_times=np.array([h.exposure_time_s for h in headers]),
        epochs=np.array([h.epoch for h in headers]),
    )
    imageset = {
        "__id__": "ImageSequence",
        "template": template,
        "mask": "", "gain": "", "pedestal": "", "dx": "", "dy": "",
        "params": {"dynamic_shadowing": "Auto", "multi_panel": False},
        "format_class": first.format_class,
    }
    return Experiment(beam=beam, detector=detector, goniometer=goniometer, scan=scan, imageset=imageset)


def import_experiments(inputs: Sequence[str | Path], image_range: tuple[int, int] | None = None,
                       mask_timepix_cross: bool = False, check_rotation: bool = True) -> list[Experiment]:
    """Experiments (one per file template) from image files, folders, globs or templates.

    Reads only the headers. Raises :class:`InputFileError` for a gap in the numbering, files
    of different sizes or formats, a broken rotation (unless ``check_rotation=False``), a
    truncated file or a missing header key.
    """
    experiments = []
    for template, numbered in group_by_template(expand_image_paths(inputs)).items():
        if image_range is not None:
            first, last = image_range
            wanted = [(n, p) for n, p in numbered if first <= n <= last]
            have = {n for n, _ in wanted}
            absent = [n for n in range(first, last + 1) if n not in have]
            if absent:
                raise InputFileError(
                    f"{_image_path(template, absent[0])}: image {absent[0]} of image_range={first},{last} is not among the files "
                    f"({numbered[0][0]}–{numbered[-1][0]} found); give an image_range within them"
                )
            numbered = wanted
        _check_contiguous(numbered, template)
        headers = [(n, read_image_header(p)) for n, p in numbered]
        experiments.append(experiment_from_headers(template, headers, mask_timepix_cross, check_rotation))
    return experiments


# ----------------------------------------------------------------------------------- pixel reads


def image_paths(experiment: Experiment) -> list[Path]:
    """The files of an experiment's scan, in image order."""
    template = experiment.imageset["template"]
    if experiment.directory and not os.path.isabs(template):
        template = os.path.join(experiment.directory, template)
    first, last = experiment.scan.image_range
    return [_image_path(template, n) for n in range(first, last + 1)]


def _smv_pixels(data: bytearray) -> np.ndarray | None:
    """The pixels of an SMV file's bytes (uint16, native byte order) read with numpy, or None
    for a header this direct read does not handle (then fabio reads the file)."""
    match = re.search(rb"HEADER_BYTES\s*=\s*(\d+)", data[:128])
    if not data[:128].lstrip().startswith(b"{") or not match:
        return None
    header_bytes = int(match.group(1))
    fields = _parse_smv_fields(bytes(data[:header_bytes]).decode("latin-1"))
    order = fields.get("BYTE_ORDER", "").lower()
    if (fields.get("TYPE", "unsigned_short") != "unsigned_short" or fields.get("DIM", "2") != "2"
            or order not in ("little_endian", "big_endian")):
        return None
    try:
        n_fast, n_slow = int(fields["SIZE1"]), int(fields["SIZE2"])
    except (KeyError, ValueError):
        return None
    if len(data) < header_bytes + 2 * n_fast * n_slow:
        return None
    stored = np.dtype("<u2" if order == "little_endian" else ">u2")
    pixels = np.frombuffer(data, stored, n_fast * n_slow, header_bytes).reshape(n_slow, n_fast)
    return pixels if stored.isnative else pixels.astype(np.uint16)


def read_image_file(path: str | Path) -> np.ndarray:
    """The stored pixel values of one image file (uint16 for SMV, int32 for CBF).

    SMV files are read with one read and numpy (a third of fabio's cost per image; the two
    agree bit for bit, tested); CBF files, and SMV headers the direct read does not handle,
    through fabio."""
    try:
        with open(path, "rb") as handle:
            data = bytearray(os.fstat(handle.fileno()).st_size)
            handle.readinto(data)
        pixels = _smv_pixels(data)
        return pixels if pixels is not None else np.asarray(fabio.open(str(path)).data)
    except Exception as err:  # fabio raises many types for damaged files
        raise InputFileError(f"{path}: cannot read the pixels ({err}); check the file is a complete image") from None


def _stored_dtype(experiment: Experiment) -> np.dtype:
    format_class = experiment.imageset.get("format_class") or read_image_header(image_paths(experiment)[0]).format_class
    return np.dtype(np.int32 if format_class.startswith("FormatCBF") else np.uint16)


def read_image(experiment: Experiment, index: int) -> np.ndarray:
    """Stored pixel values of image ``index`` (0-based position in the scan, as dxtbx's
    ``imageset[index]``), shape (n_slow, n_fast)."""
    paths = image_paths(experiment)
    if not 0 <= index < len(paths):
        raise IndexError(f"image index {index} outside 0..{len(paths) - 1}")
    return read_image_file(paths[index])


def _read_chunk(paths: tuple[str, ...], shape: tuple[int, int], dtype: str) -> np.ndarray:
    out = np.empty((len(paths),) + tuple(shape), dtype=dtype)
    for i, path in enumerate(paths):
        pixels = read_image_file(path)
        if pixels.shape != tuple(shape):
            raise InputFileError(f"{path}: image of shape {pixels.shape}, expected {tuple(shape)}; re-import the data set")
        out[i] = pixels
    return out


def _file_stack(experiment: Experiment, chunk_images: int, dtype: str | np.dtype | None = None) -> da.Array:
    """Pixel values read from the image files as a Dask array, one task per run of
    ``chunk_images`` images, converted to ``dtype`` while reading (default: as stored)."""
    paths = [str(p) for p in image_paths(experiment)]
    missing = next((p for p in paths if not os.path.isfile(p)), None)
    if missing is not None:  # e.g. an .expt written on another machine
        raise InputFileError(
            f"{missing}: image file of template {experiment.imageset['template']} not found; "
            f"re-import the images here or fix the template in the .expt file")
    n_fast, n_slow = experiment.detector.image_size
    dtype = _stored_dtype(experiment) if dtype is None else np.dtype(dtype)
    token = hashlib.sha1(("\n".join(paths) + f"{chunk_images}{dtype}").encode()).hexdigest()[:16]
    name = f"read-images-{token}"
    starts = range(0, len(paths), chunk_images)
    graph = {
        (name, k, 0, 0): (_read_chunk, tuple(paths[s : s + chunk_images]), (n_slow, n_fast), dtype.str)
        for k, s in enumerate(starts)
    }
    chunks = (tuple(min(chunk_images, len(paths) - s) for s in starts), (n_slow,), (n_fast,))
    return da.Array(graph, name, chunks, dtype=dtype)


def default_cache_path(experiment: Experiment, folder: str | Path = ".") -> Path:
    """``<folder>/<template name>_<first>-<last>_<hash>.zarr``: the hash of the full template
    keeps data sets with the same file names in different folders apart."""
    template = experiment.imageset["template"]
    stem = Path(template).name.replace("#", "").rsplit(".", 1)[0].strip("_.-") or "images"
    first, last = experiment.scan.image_range
    digest = hashlib.sha1(template.encode()).hexdigest()[:8]
    return Path(folder) / f"{stem}_{first}-{last}_{digest}.zarr"


def _cache_matches(store: Path, experiment: Experiment) -> bool:
    import zarr

    try:
        array = zarr.open_array(str(store), mode="r")
    except Exception:
        return False
    attrs = dict(array.attrs)
    return attrs.get("template") == experiment.imageset["template"] and tuple(attrs.get("image_range", ())) == experiment.scan.image_range


def write_zarr_cache(experiment: Experiment, store: str | Path, chunk_images: int = 8) -> Path:
    """Write the stored pixel values once to a compressed zarr store (atomically: a temporary
    store renamed into place) and return its path."""
    import zarr
    from zarr.codecs import BloscCodec

    store = Path(store)
    logger.info("Writing images %s:%d:%d to the cache %s", experiment.imageset["template"], *experiment.scan.image_range, store)
    tmp = store.with_name(store.name + f".tmp{os.getpid()}")
    stack = _file_stack(experiment, chunk_images)
    array = zarr.create_array(
        store=str(tmp), shape=stack.shape, chunks=(chunk_images,) + stack.shape[1:], dtype=stack.dtype,
        compressors=BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle"), overwrite=True,
        attributes={"template": experiment.imageset["template"], "image_range": list(experiment.scan.image_range)},
        dimension_names=("image", "slow", "fast"),
    )
    da.store(stack, array, lock=False)
    if store.exists():
        shutil.rmtree(store)
    os.replace(tmp, store)
    return store


def _resolve_cache(experiment: Experiment, cache: str | None) -> Path | None:
    recorded = experiment.imageset.get("cache")
    if cache is None:
        return Path(recorded) if recorded else None
    if cache == "zarr":
        return Path(recorded) if recorded else default_cache_path(experiment)
    path = Path(cache)
    return path if path.suffix == ".zarr" else default_cache_path(experiment, path)


def open_image_stack(experiment: Experiment, chunk_images: int = 8, cache: str | None = None,
                     dtype: str = "float32") -> xr.DataArray:
    """The experiment's images as a lazy (image, slow, fast) DataArray.

    Opening reads no pixels and no headers (the experiment already holds the geometry; it only
    checks that the files exist); each
    Dask task reads a run of ``chunk_images`` whole images. ``cache="zarr"`` (or a ``.zarr``
    path, or a folder for the store) writes the images once to a compressed zarr store and
    reads from it afterwards; a cache recorded in ``experiment.imageset["cache"]`` is used
    automatically. Values are the stored counts converted to ``dtype`` (no gain/pedestal).
    Coordinates: ``image`` (1-based file number) and ``phi_deg`` (start angle of each image).
    """
    if chunk_images < 1:
        raise ValueError("chunk_images must be at least 1")
    store = _resolve_cache(experiment, cache)
    if store is not None:
        if not _cache_matches(store, experiment):
            write_zarr_cache(experiment, store, chunk_images)
        stack = da.from_zarr(str(store), chunks=(chunk_images, -1, -1)).astype(dtype)
    else:
        stack = _file_stack(experiment, chunk_images, dtype)
    first, last = experiment.scan.image_range
    numbers = np.arange(first, last + 1)
    return xr.DataArray(
        stack,
        dims=("image", "slow", "fast"),
        coords={"image": numbers, "phi_deg": ("image", experiment.scan.angle_from_image_index(numbers))},
        name="counts",
        attrs={"template": experiment.imageset["template"]},
    )
