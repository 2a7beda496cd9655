"""The parameter system: key=value with DIALS' partial keys, PHIL files, listing and records."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from pipeline.errors import InputFileError, ParameterError
from pipeline.params import (
    format_parameters,
    param,
    parameter_definitions,
    parameters_from_dict,
    parameters_to_dict,
    parse_parameters,
    scope,
)
from walkthrough import WALKTHROUGH_RESTRAINT_PHIL

MYD88_CELL = (99.06, 31.01, 54.30, 90.0, 107.7, 90.0)


@dataclass
class TieToTarget:
    values: tuple[float, float, float, float, float, float] | None = param(None, "Target cell a,b,c,α,β,γ (Å, °).")
    sigmas: tuple[float, float, float, float, float, float] | None = param(None, "Restraint sigma of each cell parameter.")


@dataclass
class Restraints:
    tie_to_target: list[TieToTarget] = scope(TieToTarget, "Restrain the cell to a target cell.", multiple=True)


@dataclass
class UnitCell:
    restraints: Restraints = scope(Restraints, "Unit-cell restraints.")


@dataclass
class CrystalModel:
    unit_cell: UnitCell = scope(UnitCell, "The unit cell parameterisation.")
    fix: list[Literal["all", "cell", "orientation"]] = param([], "Crystal parameters to fix.")


@dataclass
class DetectorModel:
    fix: list[Literal["all", "position", "orientation", "distance"]] = param([], "Detector parameters to fix.")


@dataclass
class Parameterisation:
    crystal: CrystalModel = scope(CrystalModel, "Crystal model.")
    detector: DetectorModel = scope(DetectorModel, "Detector model.")
    scan_varying: bool | None = param(None, "Scan-varying refinement; None means Auto.")


@dataclass
class Refinement:
    parameterisation: Parameterisation = scope(Parameterisation, "Models and their parameters.")


@dataclass
class Filter:
    d_min: float | None = param(None, "High-resolution limit (Å); None means no limit.")
    d_max: float | None = param(None, "Low-resolution limit (Å); None means no limit.")


@dataclass
class Spotfinder:
    filter: Filter = scope(Filter, "Which spots to keep.")
    min_spot_size: int = param(3, "Fewest pixels in a spot.")


@dataclass
class Output:
    experiments: str = param("refined.expt", "The output experiment file.")
    title: str | None = param(None, "A title for the report.")


@dataclass
class Params:
    spotfinder: Spotfinder = scope(Spotfinder, "Spot finding.")
    refinement: Refinement = scope(Refinement, "Refinement.")
    output: Output = scope(Output, "Output files.")
    d_min: float | None = param(None, "Resolution limit of the whole job (Å).")
    axis: tuple[float, float, float] | Literal["auto"] = param((1.0, 0.0, 0.0), "Rotation axis, or auto.")
    method: Literal["fft3d", "fft1d", "real_space_grid_search"] = param("fft3d", "Indexing method.")
    space_group: str | None = param(None, "Space group symbol; None means Auto.")
    nproc: int = param(1, "Number of processes.", expert_level=1)
    anomalous: bool = param(False, "Keep Friedel mates apart.")
    mode: str = param("image_group", "ΔCC½ mode.", choices=("dataset", "image_group"))
    corrections: list[str] = param(["scale"], "Corrections to model.", choices=("scale", "decay", "absorption"))
    wavelength: object = param(None, "Wavelength override (Å).", type=float | None)


def parse(*args: str) -> Params:
    params, files = parse_parameters(Params, list(args))
    assert files == []
    return params


def test_defaults_come_from_the_declaration() -> None:
    params = parse()
    assert params == Params()
    assert params.spotfinder.min_spot_size == 3 and params.axis == (1.0, 0.0, 0.0)
    assert params.refinement.parameterisation.crystal.unit_cell.restraints.tie_to_target == []


def test_full_and_partial_keys() -> None:
    params = parse("spotfinder.filter.d_min=2.5", "d_max=20", "detector.fix=distance", "filter.d_min=2.0")
    assert params.spotfinder.filter.d_max == 20.0
    assert params.spotfinder.filter.d_min == 2.0  # later settings win
    assert params.refinement.parameterisation.detector.fix == ["distance"]
    assert params.d_min is None


def test_an_exact_full_name_wins_over_longer_names_ending_the_same() -> None:
    params = parse("d_min=3.0")  # also the ending of spotfinder.filter.d_min
    assert params.d_min == 3.0 and params.spotfinder.filter.d_min is None


def test_ambiguous_key_lists_the_candidates() -> None:
    with pytest.raises(ParameterError) as error:
        parse("fix=all")
    message = str(error.value)
    assert "ambiguous" in message
    assert "refinement.parameterisation.crystal.fix" in message
    assert "refinement.parameterisation.detector.fix" in message


@pytest.mark.parametrize("key, suggestion", [
    ("d_mx", "spotfinder.filter.d_max"),
    ("spotfinder.filtr.d_max", "spotfinder.filter.d_max"),
    ("detector.fixx", "refinement.parameterisation.detector.fix"),
    ("min_spotsize", "spotfinder.min_spot_size"),
])
def test_unknown_key_names_the_closest_valid_keys(key: str, suggestion: str) -> None:
    with pytest.raises(ParameterError) as error:
        parse(f"{key}=1")
    message = str(error.value)
    assert f"{key}=1" in message and "unknown parameter" in message and suggestion in message


def test_unknown_key_without_close_names_points_to_the_listing() -> None:
    with pytest.raises(ParameterError, match="zzzzzz=1.*-c"):
        parse("zzzzzz=1")


def test_a_block_name_is_not_a_parameter() -> None:
    with pytest.raises(ParameterError, match="block of parameters.*spotfinder.filter.d_min"):
        parse("filter=3")


@pytest.mark.parametrize("arg, expected_text", [
    ("d_max=abc", "a number"),
    ("min_spot_size=2.5", "an integer"),
    ("method=fft2d", "one of fft3d, fft1d, real_space_grid_search"),
    ("axis=1,2", "3 numbers"),
    ("anomalous=maybe", "True/False"),
    ("detector.fix=distance,tilt", "any of all, position, orientation, distance"),
    ("mode=images", "one of dataset, image_group"),
])
def test_invalid_value_names_key_value_and_expected_type(arg: str, expected_text: str) -> None:
    key, value = arg.split("=")
    with pytest.raises(ParameterError) as error:
        parse(arg)
    message = str(error.value)
    assert value in message and expected_text in message
    full_names = [d.name for d in parameter_definitions(Params) if d.name.endswith(key)]
    assert full_names[0] in message


@pytest.mark.parametrize("text, value", [
    ("True", True), ("true", True), ("YES", True), ("1", True),
    ("False", False), ("no", False), ("0", False),
])
def test_bool_spellings(text: str, value: bool) -> None:
    assert parse(f"anomalous={text}").anomalous is value


@pytest.mark.parametrize("text", ["None", "none", "Auto", "auto", ""])
def test_none_and_auto_give_none_for_optional_parameters(text: str) -> None:
    assert parse("refinement.parameterisation.scan_varying=True", f"scan_varying={text}") \
        .refinement.parameterisation.scan_varying is None


@pytest.mark.parametrize("text", ["-107,-122,0", "-107 -122 0", "-107,-122,0.0", "-107, -122, 0"])
def test_vectors(text: str) -> None:
    assert parse(f"axis={text}").axis == (-107.0, -122.0, 0.0)


def test_a_literal_alternative_of_a_vector() -> None:
    assert parse("axis=auto").axis == "auto"
    assert parse("axis=AUTO").axis == "auto"


def test_choices_case_insensitive_and_in_dials_star_notation() -> None:
    assert parse("method=FFT1D").method == "fft1d"
    assert parse("method=fft3d *real_space_grid_search fft1d").method == "real_space_grid_search"
    assert parse("detector.fix=all *position *orientation distance") \
        .refinement.parameterisation.detector.fix == ["position", "orientation"]
    assert parse("detector.fix=position,distance").refinement.parameterisation.detector.fix == ["position", "distance"]
    assert parse("detector.fix=distance", "detector.fix=None").refinement.parameterisation.detector.fix == []


def test_choices_and_type_given_to_param_replace_the_annotation() -> None:
    params = parse("corrections=decay,scale", "wavelength=0.0251")
    assert params.corrections == ["decay", "scale"] and params.wavelength == 0.0251
    with pytest.raises(ParameterError, match="any of scale, decay, absorption"):
        parse("corrections=lorentz")
    with pytest.raises(ParameterError, match="a number or None"):
        parse("wavelength=short")


def test_values_with_spaces_and_equals_signs() -> None:
    params = parse("title=MyD88 TIR, crystal 1", "output.experiments=a=b.expt")
    assert params.output.title == "MyD88 TIR, crystal 1"
    assert params.output.experiments == "a=b.expt"


def test_positional_arguments_are_returned_in_order(tmp_path: Path) -> None:
    image = tmp_path / "image_00001.img"
    image.write_bytes(b"{\nHEADER_BYTES=512;\nDIM=2;\n}" + bytes(600))  # an SMV header, then pixels
    experiments = tmp_path / "imported.expt"
    experiments.write_text('{"__id__": "ExperimentList", "experiment": []}')
    folder = tmp_path / "data"
    folder.mkdir()
    args = [str(image), "d_max=20", str(experiments), "missing.refl", str(folder)]
    params, files = parse_parameters(Params, args)
    assert files == [str(image), str(experiments), "missing.refl", str(folder)]
    assert params.spotfinder.filter.d_max == 20.0


def test_walkthrough_restraint_file(tmp_path: Path) -> None:
    phil = tmp_path / "restraint.phil"
    phil.write_text(WALKTHROUGH_RESTRAINT_PHIL)
    params, files = parse_parameters(Params, ["bravais_setting_2.expt", str(phil), "scan_varying=False"])
    assert files == ["bravais_setting_2.expt"]
    (tie,) = params.refinement.parameterisation.crystal.unit_cell.restraints.tie_to_target
    assert tie.values == pytest.approx(MYD88_CELL, abs=0) and tie.sigmas == (0.01,) * 6
    assert params.refinement.parameterisation.scan_varying is False


def test_multiple_scope_repeated_gives_one_entry_per_block(tmp_path: Path) -> None:
    phil = tmp_path / "two_targets.phil"
    phil.write_text("""
        refinement.parameterisation.crystal.unit_cell.restraints {
          tie_to_target { values = 1,2,3,90,90,90; sigmas = 0.1,0.1,0.1,0.1,0.1,0.1 }
          tie_to_target {
            values = 4,5,6,90,100,90
          }
        }
        """)
    targets = parse(str(phil)).refinement.parameterisation.crystal.unit_cell.restraints.tie_to_target
    assert [t.values for t in targets] == [(1, 2, 3, 90, 90, 90), (4, 5, 6, 90, 100, 90)]
    assert targets[0].sigmas == (0.1,) * 6 and targets[1].sigmas is None


def test_multiple_scope_from_key_value_fills_the_last_entry_until_a_key_repeats() -> None:
    targets = parse(
        "tie_to_target.values=1,2,3,90,90,90", "tie_to_target.sigmas=0.1,0.1,0.1,0.1,0.1,0.1",
        "tie_to_target.values=4,5,6,90,100,90",
    ).refinement.parameterisation.crystal.unit_cell.restraints.tie_to_target
    assert [t.values for t in targets] == [(1, 2, 3, 90, 90, 90), (4, 5, 6, 90, 100, 90)]
    assert targets[0].sigmas == (0.1,) * 6 and targets[1].sigmas is None


def test_phil_syntax(tmp_path: Path) -> None:
    phil = tmp_path / "job.phil"
    phil.write_text("""# a comment line
spotfinder { filter.d_max = 15 ; min_spot_size=5 }  # trailing comment
spotfinder.filter {
  d_min = 2.5  # high resolution
}
output { title = "a {braced} # not a comment; value" ; experiments='my file.expt' }
method = *fft1d fft3d
""")
    params = parse(str(phil))
    assert params.spotfinder.filter.d_max == 15.0 and params.spotfinder.filter.d_min == 2.5
    assert params.spotfinder.min_spot_size == 5 and params.method == "fft1d"
    assert params.output.title == "a {braced} # not a comment; value"
    assert params.output.experiments == "my file.expt"


def test_a_text_file_that_parses_as_phil_is_read_as_parameters(tmp_path: Path) -> None:
    settings = tmp_path / "settings.txt"
    settings.write_text("# my settings\nd_max = 12\n")
    params, files = parse_parameters(Params, [str(settings), "other.txt"])
    assert params.spotfinder.filter.d_max == 12.0 and files == ["other.txt"]


def test_order_of_files_and_key_values_decides(tmp_path: Path) -> None:
    phil = tmp_path / "a.phil"
    phil.write_text("d_max = 10")
    assert parse(str(phil), "d_max=20").spotfinder.filter.d_max == 20.0
    assert parse("d_max=20", str(phil)).spotfinder.filter.d_max == 10.0


@pytest.mark.parametrize("text, where", [
    ("spotfinder {\n  d_max = 1\n", "line 1"),  # block never closed
    ("d_max = 1\n}\n", "line 2"),
    ("d_max 1\n", "line 1"),
    ("d_max = 1\n\nd_mx = 2\n", "line 3"),
    ("output.title = 'open\n", "line 1"),
])
def test_phil_errors_name_file_and_line(tmp_path: Path, text: str, where: str) -> None:
    phil = tmp_path / "bad.phil"
    phil.write_text(text)
    with pytest.raises(ParameterError) as error:
        parse(str(phil))
    assert f"{phil}, {where}" in str(error.value)


def test_missing_phil_file() -> None:
    with pytest.raises(InputFileError, match="nothere.phil.*not found"):
        parse("nothere.phil")


def changed_params() -> Params:
    params = Params()
    params.spotfinder.filter.d_max = 20.0
    params.refinement.parameterisation.detector.fix = ["position", "distance"]
    params.refinement.parameterisation.scan_varying = False
    params.refinement.parameterisation.crystal.unit_cell.restraints.tie_to_target = [
        TieToTarget(MYD88_CELL, (0.01,) * 6), TieToTarget((1.0, 2.0, 3.0, 90.0, 90.0, 90.0), None)]
    params.output.title = "None"  # the text, not None
    params.output.experiments = ""
    params.axis = (-0.6592, -0.7521, 1e-17)
    params.method = "real_space_grid_search"
    params.nproc = 4
    params.mode = "dataset"
    params.corrections = []
    params.wavelength = 0.0251
    return params


def test_format_lists_every_parameter_with_default_and_help() -> None:
    text = format_parameters(Params)
    for definition in parameter_definitions(Params):
        assert definition.path[-1] in text
    assert "# Low-resolution limit (Å); None means no limit. [a number or None]\n    d_max = None" in text
    assert "method = *fft3d fft1d real_space_grid_search" in text
    assert "min_spot_size = 3" in text and "axis = 1,0,0" in text
    assert "# tie_to_target {" in text  # the template of a multiple scope, commented out
    assert "nproc" not in format_parameters(Params, expert_level=0)
    assert "#" not in format_parameters(Params, show_help=False)


@pytest.mark.parametrize("show_help", [True, False])
def test_formatted_parameters_read_back_identically(tmp_path: Path, show_help: bool) -> None:
    params = changed_params()
    phil = tmp_path / "recorded.phil"
    phil.write_text(format_parameters(params, show_help=show_help))
    assert parse(str(phil)) == params
    phil.write_text(format_parameters(params, show_help=show_help, only_changed=True))
    assert parse(str(phil)) == params


def test_only_changed_lists_just_the_changes() -> None:
    params = Params()
    params.spotfinder.filter.d_max = 20.0
    assert format_parameters(params, show_help=False, only_changed=True) == \
        "spotfinder {\n  filter {\n    d_max = 20\n  }\n}\n"
    assert format_parameters(Params(), only_changed=True) == ""


def test_dict_record_round_trips_through_json() -> None:
    params = changed_params()
    record = json.loads(json.dumps(parameters_to_dict(params)))
    assert record["spotfinder"]["filter"]["d_max"] == 20.0 and record["axis"] == [-0.6592, -0.7521, 1e-17]
    assert parameters_from_dict(Params, record) == params
    assert parameters_from_dict(Params, {}) == Params()
    with pytest.raises(ParameterError, match="spotfinder.filter.d_mx"):
        parameters_from_dict(Params, {"spotfinder": {"filter": {"d_mx": 1}}})
    with pytest.raises(ParameterError, match="method"):
        parameters_from_dict(Params, {"method": "fft2d"})


def test_declaration_mistakes_are_caught() -> None:
    @dataclass
    class Undocumented:
        d_min: float = 1.0

    @dataclass
    class WrongDefault:
        d_min: float = param("high", "A resolution limit.")

    with pytest.raises(TypeError, match="param"):
        parameter_definitions(Undocumented)
    with pytest.raises(TypeError, match="d_min"):
        parameter_definitions(WrongDefault)
