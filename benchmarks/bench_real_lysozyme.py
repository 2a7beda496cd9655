"""ewald against DIALS on real cRED data: two hen egg-white lysozyme crystals (Timepix 516×516, 200 kV).

The data owner processed ``../shared/data/ed_lysozyme_cred`` with DIALS 2.1.1 (per crystal:
find_spots, index in P1, refine_bravais_settings, reindex to tP, refine, integrate; then joint
scale and merge). This script runs the same commands with ``ewald`` (the console script's own
entry point, ``pipeline.cli.main``), step by step with DIALS' parameters read from the reference
logs, then ``ewald process`` on the two image folders, and writes every figure next to DIALS'
figure as JSON (``benchmarks/results/real_lysozyme.json``): spots, % indexed, cells, RMSDs,
σb/σm, integration counts, merging statistics, and the CC of the merged intensities with DIALS'
merged.mtz on common reflections under the best alternative indexing (P4 on a tetragonal lattice
has two: h,k,l and k,h,−l).

    .venv/bin/python benchmarks/bench_real_lysozyme.py [--workdir DIR] [--skip-process]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from algorithms.reflection_table import Flags  # noqa: E402
from pipeline.cli import main  # noqa: E402
from pipeline.formats.expt import read_experiments  # noqa: E402
from pipeline.formats.refl import read_reflections  # noqa: E402
from pipeline.truth import compare_with_truth  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "ed_lysozyme_cred"
REFERENCE = DATA / "reference_dials"
AXIS = "-0.6204,-0.7843,0"  # XDS.INP's ROTATION_AXIS with y negated (slow = −y), as DIALS' imported.expt
CRYSTALS = {  # DIALS' per-crystal parameters, from the reference logs and imported.expt
    "experiment_14": {"distance": 1480.56, "d_min": 2.5},
    "experiment_24": {"distance": 1481.7449, "d_min": 3.5},
}
D_MIN_MERGED = 2.49


@contextlib.contextmanager
def working_directory(path: Path):
    previous = Path.cwd()
    path.mkdir(parents=True, exist_ok=True)
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def ewald(*args: str) -> float:
    """Run one ewald command in the current directory; return its wall time (s)."""
    start = time.perf_counter()
    status = main([str(a) for a in args])
    if status != 0:
        raise RuntimeError(f"ewald {args[0]} exited with status {status} in {Path.cwd()} (see its log there)")
    return time.perf_counter() - start


# --------------------------------------------------------------------------- reading logs
def last_rmsds(log_text: str) -> list[float]:
    """RMSD_X, RMSD_Y (px), RMSD_Z (images) of the last 'RMSDs by experiment' table."""
    block = log_text.rsplit("RMSDs by experiment", 1)[1]
    row = re.search(r"\|\s+0 \|\s+\d+ \|\s+([\d.]+) \|\s+([\d.]+) \|\s+([\d.]+) \|", block)
    return [float(v) for v in row.groups()]


def percent_indexed(log_text: str) -> float:
    return float(re.findall(r"\|\s+0 \|\s+\d+ \|\s+\d+ \| ([\d.]+)%", log_text)[-1])


def dials_figures(name: str) -> dict:
    folder = REFERENCE / name
    spots = int(re.search(r"(\d+) spots found on", (folder / "dials.find_spots.log").read_text()).group(1))
    index_log = (folder / "dials.index.log").read_text()
    integrate_log = (folder / "dials.integrate.log").read_text()
    summary = integrate_log.rsplit("Summary for experiment 0", 1)[1]

    def item(label):
        return float(re.search(rf"\| {label}\s+\|\s+([-\d.]+)", summary).group(1))

    return {
        "spots": spots,
        "percent_indexed": percent_indexed(index_log),
        "index_rmsds": last_rmsds(index_log),
        "p1_cell": list(read_experiments(folder / "indexed.expt")[0].crystal.unit_cell.parameters),
        "refine_rmsds": last_rmsds((folder / "dials.refine.log").read_text()),
        "refined_cell": list(read_experiments(folder / "refined.expt")[0].crystal.unit_cell.parameters),
        "sigma_b_deg": float(re.search(r"sigma b: ([\d.]+)", integrate_log).group(1)),
        "sigma_m_deg": float(re.search(r"sigma m: ([\d.]+)", integrate_log).group(1)),
        "n_integrated": int(re.search(r"Saving (\d+) reflections to integrated.refl", integrate_log).group(1)),
        "i_over_sigma_sum": item(r"i/sigi \(summation\)"),
        "i_over_sigma_prf": item(r"i/sigi \(profile fitting\)"),
    }


def merging_summary(log_text: str) -> dict:
    """Overall CC½, completeness, multiplicity, I/σ, Rmeas, counts from a merge/scale log summary."""
    summary = log_text.rsplit("Summary of merging statistics", 1)[1]

    def overall(label):
        return float(re.search(rf"^{re.escape(label)}\s+([-\d.na]+)", summary, re.M).group(1))

    return {"cc_half": overall("CC half"), "completeness": overall("Completeness"),
            "multiplicity": overall("Multiplicity"), "i_over_sigma": overall("I/sigma"),
            "r_meas": overall("Rmeas(I)"), "n_obs": int(overall("Total observations")),
            "n_unique": int(overall("Total unique")), "d_min": overall("High resolution limit")}


def cc_half_by_shell(log_text: str) -> list[float]:
    """CC½ of each resolution shell of the last "Statistics by resolution bin" table of a log
    (DIALS' format, which ewald's logs share), low resolution first, without the overall row."""
    table = log_text.rsplit("d_max  d_min", 1)[1].split("\n\n", 1)[0]
    rows = [line.split() for line in table.splitlines()[1:] if line.strip()]
    return [float(row[-2].rstrip("*")) for row in rows[:-1]]


def dials_merging() -> dict:
    """DIALS' dials.merge.log overall row (its log prints the bin table, not the summary) and
    its CC½ by shell."""
    text = (REFERENCE / "combined" / "dials.merge.log").read_text()
    row = re.search(r"^ +([\d.]+) +([\d.]+) +(\d+) +(\d+) +([\d.]+) +([\d.]+) +[-\d.]+ +([-\d.]+) +[-\d.]+ +([-\d.]+)"
                    r" +[-\d.]+ +([-\d.]+)\*? +[-\d.]+\n\n", text, re.M)
    d_max, d_min, n_obs, n_unique, mult, comp, i_over_sigma, r_meas, cc_half = row.groups()
    return {"cc_half": float(cc_half), "completeness": float(comp), "multiplicity": float(mult),
            "i_over_sigma": float(i_over_sigma), "r_meas": float(r_meas), "n_obs": int(n_obs),
            "n_unique": int(n_unique), "d_min": float(d_min), "cc_half_by_shell": cc_half_by_shell(text)}


# --------------------------------------------------------------------------- ewald, step by step
def crystal_steps(name: str, folder: Path) -> dict:
    """import … integrate for one crystal with DIALS' parameters; figures and timings."""
    settings = CRYSTALS[name]
    images = sorted((DATA / name / "SMV" / "data").glob("*.img"))
    seconds = {}
    with working_directory(folder):
        Path("find_spots.phil").write_text(
            f"spotfinder.filter {{\n d_min = {settings['d_min']}\n untrusted {{ rectangle = 0,516,255,261 }}\n"
            " untrusted { rectangle = 255,261,0,516 }\n}\n")
        seconds["import"] = ewald("import", *images, f"distance={settings['distance']}", f"goniometer.axis={AXIS}")
        seconds["find_spots"] = ewald("find_spots", "imported.expt", "find_spots.phil")
        seconds["index"] = ewald("index", "imported.expt", "strong.refl", "beam.fix=all", "detector.fix=all")
        seconds["refine_bravais_settings"] = ewald("refine_bravais_settings", "indexed.expt", "indexed.refl",
                                                   "beam.fix=all", "detector.fix=all")
        tetragonal = [s for s in json.loads(Path("bravais_summary.json").read_text()).items()
                      if s[1].get("bravais") == "tP"] if Path("bravais_summary.json").exists() else []
        solution, cb_op = (tetragonal[0][0], tetragonal[0][1]["cb_op"]) if tetragonal else ("9", "b,c,a")
        seconds["reindex"] = ewald("reindex", "indexed.refl", f"change_of_basis_op={cb_op}")
        seconds["refine"] = ewald("refine", f"bravais_setting_{solution}.expt", "reindexed.refl", "detector.fix=all")
        seconds["integrate"] = ewald("integrate", "refined.expt", "refined.refl", f"prediction.d_min={settings['d_min']}")
        strong = read_reflections("strong.refl")
        indexed = read_reflections("indexed.refl")
        integrated = read_reflections("integrated.refl")
        profile = read_experiments("integrated.expt")[0].profile

        def mean_i_over_sigma(kind, flag):
            ok = integrated.get_flags(flag) & (integrated[f"intensity.{kind}.variance"] > 0)
            return float(np.mean(integrated[f"intensity.{kind}.value"][ok] / np.sqrt(integrated[f"intensity.{kind}.variance"][ok])))

        return {
            "spots": len(strong),
            "percent_indexed": 100.0 * int(indexed.get_flags(Flags.indexed).sum()) / len(strong),
            "index_rmsds": last_rmsds(Path("index.log").read_text()),
            "p1_cell": list(read_experiments("indexed.expt")[0].crystal.unit_cell.parameters),
            "tetragonal_solution": {"number": solution, "cb_op": cb_op},
            "refine_rmsds": last_rmsds(Path("refine.log").read_text()),
            "refined_cell": list(read_experiments("refined.expt")[0].crystal.unit_cell.parameters),
            "sigma_b_deg": float(profile.get("sigma_b", np.nan)),
            "sigma_m_deg": float(profile.get("sigma_m", np.nan)),
            "n_integrated": len(integrated),
            "i_over_sigma_sum": mean_i_over_sigma("sum", Flags.integrated_sum),
            "i_over_sigma_prf": mean_i_over_sigma("prf", Flags.integrated_prf),
            "seconds": seconds,
        }


def scale_and_merge(folder: Path, crystal_folders: list[Path]) -> dict:
    inputs = [str(f / name) for f in crystal_folders for name in ("integrated.expt", "integrated.refl")]
    with working_directory(folder):
        seconds = {"scale": ewald("scale", *inputs), "merge": ewald("merge", "scaled.expt", "scaled.refl")}
        return {"merging": merging_summary(Path("merge.log").read_text()),
                "vs_dials": dials_comparison(Path("merged.mtz")), "seconds": seconds}


def dials_comparison(merged_mtz: Path) -> dict:
    """CC of IMEAN with DIALS' merged.mtz (common reflections, best alternative indexing); Pearson
    on intensities is dominated by the few strongest low-resolution reflections, so the CC on
    d < 5 Å and the rank correlation are given too."""
    reference = REFERENCE / "combined" / "merged.mtz"
    everything = compare_with_truth(merged_mtz, reference)
    beyond_5 = [b for b in everything["bins"] if b["d_max"] <= 5.8]
    return {"cc": everything["cc"], "n_common": everything["n_common"], "indexing": everything["indexing"],
            "n_dials": everything["n_true"], "cc_by_resolution": everything["bins"],
            "mean_bin_cc_below_5.8A": float(np.mean([b["cc"] for b in beyond_5])) if beyond_5 else float("nan"),
            "cc_d_below_20A": cc_in_resolution_range(merged_mtz, reference, everything["indexing"], d_max=20.0)}


def cc_in_resolution_range(merged_mtz: Path, reference_mtz: Path, indexing: str, d_max: float) -> dict:
    """CC of IMEAN with the reference on common reflections with d < d_max, under ``indexing``.

    The overall CC is dominated by the handful of reflections within ~10 px of the direct beam
    (d > 20 Å: (0,1,0), (1,1,0), (2,1,0) ... carry most of the variance of IMEAN), whose
    intensities depend on how the steep beam halo is modelled, not on the crystal."""
    import gemmi

    from algorithms.merging import map_to_asu

    def read(path):
        mtz = gemmi.read_mtz_file(str(path))
        return mtz, np.asarray(mtz.make_miller_array(), np.int64), np.asarray(mtz.column_with_label("IMEAN").array)

    merged, hkl, intensity = read(merged_mtz)
    reference, hkl_ref, intensity_ref = read(reference_mtz)
    rotation = np.array(gemmi.Op(indexing).rot) // gemmi.Op.DEN
    asu = map_to_asu(hkl @ rotation, reference.spacegroup).asu_index
    lookup = {tuple(h): v for h, v in zip(map_to_asu(hkl_ref, reference.spacegroup).asu_index, intensity_ref)}
    d = np.asarray(reference.cell.calculate_d_array(asu.astype(np.int32)))
    pairs = [(v, lookup[tuple(h)]) for h, v, dd in zip(asu, intensity, d) if dd < d_max and tuple(h) in lookup]
    x, y = np.array(pairs).T
    return {"d_max": d_max, "n": len(pairs), "cc": float(np.corrcoef(x, y)[0, 1])}


# ΔCC½ per 4-image group: crystal 14's last images (its scale falls to ~0.1) are removed, as DIALS'
# refinement trimmed that sweep to images 1-47; 10-image groups are too few for the 4σ cutoff.
DELTA_CC_HALF = ("filtering.method=deltacchalf", "deltacchalf.mode=image_group", "deltacchalf.group_size=4")


def process_run(folder: Path, extra: tuple[str, ...] = ()) -> dict:
    with working_directory(folder):
        seconds = ewald("process", DATA / "experiment_14" / "SMV" / "data", DATA / "experiment_24" / "SMV" / "data",
                        f"goniometer.axis={AXIS}", "space_group=P4", f"d_min={D_MIN_MERGED}", f"workdir={folder}", *extra)
        merged = sorted(folder.rglob("merged.mtz"))
        result = {"seconds": seconds, "parameters": list(extra), "merged_mtz": [str(p) for p in merged]}
        if merged:
            log_text = (folder / "process.log").read_text()
            result["merging"] = {**merging_summary(log_text), "cc_half_by_shell": cc_half_by_shell(log_text)}
            result["vs_dials"] = dials_comparison(merged[0])
            result["datasets"] = {
                path.parent.name: {"cell": list(x.crystal.unit_cell.parameters), "space_group": x.crystal.space_group.hm,
                                   "beam_direction": list(map(float, x.beam.direction)),
                                   "detector_origin_mm": list(map(float, x.detector.origin)),
                                   "profile": x.profile}
                for path in sorted(folder.glob("*/integrated.expt")) for x in read_experiments(path)[:1]}
        return result


def main_benchmark() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ewald_bench_real_lysozyme"))
    parser.add_argument("--skip-process", action="store_true", help="only the step-by-step chain")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "real_lysozyme.json")
    args = parser.parse_args()
    workdir = args.workdir.resolve()
    revision = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True)
    results = {"data": str(DATA), "revision": revision.stdout.strip(), "date": time.strftime("%Y-%m-%d %H:%M:%S"), "steps": {}, "dials": {name: dials_figures(name) for name in CRYSTALS},
               "dials_merging": dials_merging()}
    folders = []
    for name in CRYSTALS:
        folders.append(workdir / "steps" / name)
        results["steps"][name] = crystal_steps(name, folders[-1])
    results["combined"] = scale_and_merge(workdir / "steps" / "combined", folders)
    if not args.skip_process:
        results["process"] = process_run(workdir / "process")
        results["process_deltacchalf"] = process_run(workdir / "process_deltacchalf", DELTA_CC_HALF)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main_benchmark()
