"""DIALS' refinement log tables: layout (against lines of DIALS' own logs) and esd notation."""
import gemmi
import numpy as np

from algorithms.geometry.models import Crystal
from pipeline.refinement_report import (
    crystal_model_text,
    format_table,
    format_value_with_esd,
    refinement_steps_table,
    residual_summary_table,
    rmsds_by_experiment_table,
)


def test_values_with_esds_as_cctbx_prints_them():
    # DIALS' refine logs: 77.758(19), 40.51(7), 99.04(4), 31.010(18), 107.706(17)
    assert format_value_with_esd(77.7584, 0.019) == "77.758(19)"
    assert format_value_with_esd(40.513, 0.07) == "40.51(7)"
    assert format_value_with_esd(99.0412, 0.04) == "99.04(4)"
    assert format_value_with_esd(31.0101, 0.018) == "31.010(18)"
    assert format_value_with_esd(1762.4, 13.0) == "1762(13)"
    assert format_value_with_esd(90.00000000000003, 0.0) == "90.00000000000003"


def test_refinement_steps_table_matches_dials_layout():
    history = [{"step": 0, "nref": 1095, "rmsd_x_mm": 0.061392, "rmsd_y_mm": 0.068734, "rmsd_phi_deg": 0.53515},
               {"step": 10, "nref": 1095, "rmsd_x_mm": 0.060624, "rmsd_y_mm": 0.069799, "rmsd_phi_deg": 0.5079}]
    text = refinement_steps_table(history, "RMSD no longer decreasing")
    expected = """Refinement steps:
+--------+--------+----------+----------+------------+
|   Step |   Nref |   RMSD_X |   RMSD_Y |   RMSD_Phi |
|        |        |     (mm) |     (mm) |      (deg) |
|--------+--------+----------+----------+------------|
|      0 |   1095 | 0.061392 | 0.068734 |    0.53515 |
|     10 |   1095 | 0.060624 | 0.069799 |    0.5079  |
+--------+--------+----------+----------+------------+
RMSD no longer decreasing"""
    assert text == expected


def test_residual_summary_and_rmsd_tables_match_dials_layout():
    summary = {"nref": 1095, "Xc - Xo (mm)": [-0.1541, -0.04212, -0.002534, 0.04772, 0.1796],
               "Yc - Yo (mm)": [-0.1937, -0.02419, 0.0178, 0.06106, 0.2068],
               "Phic - Phio (deg)": [-1.182, -0.4482, 0.05922, 0.4381, 1.305],
               "X weights": [3718, 3898, 3917, 3933, 3967], "Y weights": [3750, 3898, 3916, 3932, 3967],
               "Phi weights": [25.11, 25.4, 25.4, 25.4, 25.4]}
    lines = residual_summary_table(summary).splitlines()
    assert lines[0] == "Summary statistics for 1095 observations matched to predictions:"
    assert lines[2] == "|                   |     Min |       Q1 |       Med |      Q3 |    Max |"
    assert lines[4] == "| Xc - Xo (mm)      | -0.1541 | -0.04212 | -0.002534 | 0.04772 | 0.1796 |"
    assert lines[9] == "| Phi weights       |   25.11 |     25.4 |      25.4 |    25.4 |   25.4 |"
    rmsds = {"nref": 1087, "x_px": 0.87447, "y_px": 0.84505, "z_images": 0.4191}
    lines = rmsds_by_experiment_table([rmsds]).splitlines()
    assert lines[2] == "|   Exp |   Nref |   RMSD_X |   RMSD_Y |     RMSD_Z |"
    assert lines[3] == "|    id |        |     (px) |     (px) |   (images) |"
    assert lines[5] == "|     0 |   1087 |  0.87447 |  0.84505 |     0.4191 |"


def test_decimal_alignment_and_text_columns():
    text = format_table(["Metric fit", "lattice"], [["1.2844", "tP"], ["1.1070", "mC"], ["0.0000", "aP"]])
    assert text.splitlines()[3:6] == ["|       1.2844 | tP        |", "|       1.107  | mC        |",
                                      "|       0      | aP        |"]


def test_crystal_model_text_has_cell_esds_matrices_and_scan_points():
    crystal = Crystal.from_cell_and_U(gemmi.UnitCell(99.04, 31.09, 54.29, 90, 107.71, 90), np.eye(3), "C 1 2 1")
    crystal.A_at_scan_points = np.repeat(crystal.A[None], 73, axis=0)
    text = crystal_model_text(crystal, (0.04, 0.02, 0.04, 0.0, 0.04, 0.0))
    lines = text.splitlines()
    assert lines[0] == "Crystal:"
    assert lines[1].startswith("    Unit cell: (99.04(4), 31.09(2), 54.29(4), 90.0")
    assert "107.71(4)" in lines[1]
    assert lines[2] == "    Space group: C 1 2 1"
    assert lines[3] == "    U matrix:  {{ 1.0000,  0.0000,  0.0000},"
    assert lines[5].startswith(" " * 16 + "{") and lines[5].endswith(",  0.0000,  1.0000}}")  # DIALS prints -0.0000 too
    assert lines[-1] == "    A sampled at 73 scan points"
