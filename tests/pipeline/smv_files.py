"""Small SMV files for tests: Timepix headers as Instamatic writes them, and numbered sweeps."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def timepix_header(**changes) -> dict:
    """A TIMEPIX_SU header like Instamatic writes (keys in the same order)."""
    header = {
        "HEADER_BYTES": "512", "DIM": "2", "BYTE_ORDER": "little_endian", "TYPE": "unsigned_short",
        "SIZE1": "516", "SIZE2": "516", "PIXEL_SIZE": "0.055", "BIN": "1x1", "BEAMLINE": "TimePix_SU",
        "DETECTOR_SN": "901", "DATE": "Tue Jun 26 09:43:09 2007", "TIME": "2.0", "DISTANCE": "2.193",
        "TWOTHETA": "0.0", "PHI": "-56.73", "OSC_START": "-56.73", "OSC_RANGE": "0.9149",
        "WAVELENGTH": "0.0251", "BEAM_CENTER_X": "228.875", "BEAM_CENTER_Y": "235.78",
    }
    header.update({k: str(v) for k, v in changes.items() if v is not None})
    for key in [k for k, v in changes.items() if v is None]:
        del header[key]
    return header


def write_smv(path: Path, data: np.ndarray | None, header: dict, shape: tuple[int, int] | None = None) -> Path:
    """Write an SMV file; with ``data=None`` the pixel block is a sparse run of zeros of ``shape``
    (fast to write, same size on disk as a real file)."""
    text = "{\n" + "".join(f"{k}={v};\n" for k, v in header.items()) + "}\n"
    block = text.encode().ljust(int(header["HEADER_BYTES"]), b" ")
    with open(path, "wb") as handle:
        handle.write(block)
        if data is not None:
            handle.write(np.ascontiguousarray(data, dtype="<u2").tobytes())
        else:
            handle.truncate(len(block) + shape[0] * shape[1] * 2)
    return path


def write_sweep(folder: Path, n_images: int, start_deg=-56.73, width_deg=0.9149, seed=0, **header_changes) -> list[Path]:
    """n Timepix images 00001.img … with random counts; image k starts at start + (k−1)·width."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for k in range(1, n_images + 1):
        header = timepix_header(OSC_START=f"{start_deg + (k - 1) * width_deg:.4f}", OSC_RANGE=width_deg, **header_changes)
        n_fast, n_slow = int(header["SIZE1"]), int(header["SIZE2"])
        data = rng.poisson(3.0, size=(n_slow, n_fast)).astype(np.uint16)
        paths.append(write_smv(folder / f"{k:05d}.img", data, header))
    return paths
