"""Shared by the benchmark scripts: the simulated MyD88 job they run on, and peak memory."""
from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

DEFAULT_DATA = Path(os.environ.get("EWALD_BENCH_DATA", "/tmp/ewald-bench/myd88"))


def peak_rss_mb() -> float:
    """Peak resident memory of this process (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def ensure_data(folder: Path) -> list[Path]:
    """The crystal folders of an 18 × 72 myd88 simulation in ``folder``, simulating it first if needed."""
    if not (folder / "simulation.json").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        ewald = Path(sys.executable).with_name("ewald")
        subprocess.run([str(ewald), "simulate", "preset=myd88", str(folder)], check=True, cwd=folder.parent)
    return sorted((p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
