"""Shared by the benchmark scripts: the simulated MyD88 job they run on, peak memory and timing."""
from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_DATA = Path(os.environ.get("EWALD_BENCH_DATA", "/tmp/ewald-bench/myd88"))


def peak_rss_mb() -> float:
    """Peak resident memory of this process (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def timed_repeats(function, repeats: int, warm_up: bool = True):
    """``function()``'s last result and its wall/CPU times over ``repeats`` calls, after one untimed
    call (numba compilation, caches) unless ``warm_up`` is False."""
    if warm_up:
        function()
    wall, cpu = [], []
    out = None
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        out = function()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return out, {"median_s": statistics.median(wall), "min_s": min(wall), "median_cpu_s": statistics.median(cpu),
                 "repeats": repeats}


def ensure_data(folder: Path) -> list[Path]:
    """The crystal folders of an 18 × 72 myd88 simulation in ``folder``, simulating it first if needed."""
    if not (folder / "simulation.json").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        ewald = Path(sys.executable).with_name("ewald")
        subprocess.run([str(ewald), "simulate", "preset=myd88", str(folder)], check=True, cwd=folder.parent)
    return sorted((p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
