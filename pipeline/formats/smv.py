"""Writing SMV images as the Stockholm University Timepix collection software writes them.

The layout (algorithms.md §2.1): an ASCII header ``{\\nKEY=VALUE;\\n…}`` padded with NUL bytes
to ``HEADER_BYTES`` (512), then SIZE1×SIZE2 little-endian unsigned 16-bit pixels, row-major
with SIZE1 along the fast axis. The keys, their order and their number formats follow the real
file ``TIMEPIX_SU_516-stdgoni_0001.img``; like it, the header has no rotation axis.
Reading headers and pixels is :mod:`pipeline.images`' job.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from pipeline.errors import ParameterError

HEADER_BYTES = 512
# the keys of the real Timepix SU header, in its order
TIMEPIX_SU_KEYS = (
    "HEADER_BYTES", "DIM", "BYTE_ORDER", "TYPE", "SIZE1", "SIZE2", "PIXEL_SIZE", "BIN", "BIN_TYPE",
    "ADC", "CREV", "BEAMLINE", "DETECTOR_SN", "DATE", "TIME", "DISTANCE", "TWOTHETA", "PHI",
    "OSC_START", "OSC_RANGE", "WAVELENGTH", "BEAM_CENTER_X", "BEAM_CENTER_Y", "DENZO_X_BEAM",
    "DENZO_Y_BEAM",
)


def _decimal(value: float, min_decimals: int = 2, max_decimals: int = 6) -> str:
    """The shortest fixed-point text with at least ``min_decimals`` that keeps ``value`` to
    ``max_decimals`` (2.193 → "2.193", 531.85 → "531.85", 0.9149 → "0.9149")."""
    text = f"{value:.{max_decimals}f}".rstrip("0")
    decimals = len(text.split(".")[1]) if "." in text else 0
    return f"{value:.{max(decimals, min_decimals)}f}"


def timepix_su_header(
    *,
    image_size: tuple[int, int],
    pixel_size_mm: float,
    distance_mm: float,
    osc_start_deg: float,
    osc_range_deg: float,
    wavelength_A: float,
    beam_centre_px: tuple[float, float],
    exposure_time_s: float,
    epoch_s: float,
) -> dict[str, str]:
    """The header of one image, keys in the real file's order, values formatted like it.

    ``beam_centre_px`` is (fast, slow) in pixels (BEAM_CENTER_X/Y); DENZO_X/Y_BEAM repeat it
    in mm with x and y swapped, as the real files do.
    """
    fast, slow = beam_centre_px
    return {
        "HEADER_BYTES": f"{HEADER_BYTES:5d}",
        "DIM": "2",
        "BYTE_ORDER": "little_endian",
        "TYPE": "unsigned_short",
        "SIZE1": str(int(image_size[0])),
        "SIZE2": str(int(image_size[1])),
        "PIXEL_SIZE": f"{pixel_size_mm:.6f}",
        "BIN": "1x1",
        "BIN_TYPE": "HW",
        "ADC": "fast",
        "CREV": "1",
        "BEAMLINE": "TIMEPIX_SU",
        "DETECTOR_SN": "901",
        "DATE": time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime(epoch_s)),
        "TIME": _decimal(exposure_time_s, 1),
        "DISTANCE": _decimal(distance_mm),
        "TWOTHETA": "0.00",
        "PHI": _decimal(osc_start_deg),
        "OSC_START": _decimal(osc_start_deg),
        "OSC_RANGE": _decimal(osc_range_deg),
        "WAVELENGTH": f"{wavelength_A:.6f}",
        "BEAM_CENTER_X": _decimal(fast),
        "BEAM_CENTER_Y": _decimal(slow),
        "DENZO_X_BEAM": _decimal(slow * pixel_size_mm),
        "DENZO_Y_BEAM": _decimal(fast * pixel_size_mm),
    }


def adsc_header(
    *,
    image_size: tuple[int, int],
    pixel_size_mm: float,
    distance_mm: float,
    osc_start_deg: float,
    osc_range_deg: float,
    wavelength_A: float,
    beam_centre_px: tuple[float, float],
    exposure_time_s: float,
    epoch_s: float,
) -> dict[str, str]:
    """An ADSC-style SMV header (any detector size; dxtbx's FormatSMVADSC: rotation axis
    (1, 0, 0), beam centre in mm in the Mosflm frame, BEAM_CENTER_X along slow)."""
    fast, slow = beam_centre_px
    return {
        "HEADER_BYTES": f"{HEADER_BYTES:5d}",
        "DIM": "2",
        "BYTE_ORDER": "little_endian",
        "TYPE": "unsigned_short",
        "SIZE1": str(int(image_size[0])),
        "SIZE2": str(int(image_size[1])),
        "PIXEL_SIZE": _decimal(pixel_size_mm),
        "BIN": "none",
        "ADC": "fast",
        "DETECTOR_SN": "0",
        "BEAMLINE": "SIMULATED",
        "DATE": time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime(epoch_s)),
        "TIME": _decimal(exposure_time_s),
        "DISTANCE": _decimal(distance_mm),
        "OSC_RANGE": _decimal(osc_range_deg),
        "PHI": _decimal(osc_start_deg),
        "OSC_START": _decimal(osc_start_deg),
        "TWOTHETA": "0.00",
        "AXIS": "phi",
        "WAVELENGTH": _decimal(wavelength_A, 5),
        "BEAM_CENTER_X": _decimal(slow * pixel_size_mm),
        "BEAM_CENTER_Y": _decimal(fast * pixel_size_mm),
        "GAIN": "1.0",
        "CCD_IMAGE_SATURATION": "65535",
    }


def smv_header_bytes(header: dict) -> bytes:
    """``{\\nKEY=VALUE;\\n…}`` padded with NUL bytes to HEADER_BYTES."""
    text = "{\n" + "".join(f"{key}={value};\n" for key, value in header.items()) + "}"
    raw = text.encode("ascii")
    if len(raw) > HEADER_BYTES:
        raise ParameterError(f"SMV header of {len(raw)} bytes does not fit in {HEADER_BYTES}; shorten its values")
    return raw + b"\0" * (HEADER_BYTES - len(raw))


def write_smv_image(path: str | Path, data_uint16: np.ndarray, header: dict) -> None:
    """Write one SMV image: ``header`` (ordered key → value text) then the pixels.

    ``data_uint16`` is (slow, fast); SIZE1/SIZE2 in the header must match it.
    """
    data = np.asarray(data_uint16)
    if data.dtype != np.uint16 or data.ndim != 2:
        raise ParameterError(f"{path}: SMV pixels must be a 2-D uint16 array, got {data.dtype} {data.shape}")
    if (int(header.get("SIZE1", data.shape[1])), int(header.get("SIZE2", data.shape[0]))) != (data.shape[1], data.shape[0]):
        raise ParameterError(f"{path}: header SIZE1×SIZE2 does not match the {data.shape[1]}×{data.shape[0]} image")
    with open(path, "wb") as f:
        f.write(smv_header_bytes(header))
        f.write(data.astype("<u2", copy=False).tobytes())
