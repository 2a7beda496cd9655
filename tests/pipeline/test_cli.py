"""The ewald command line: command discovery, help and -c listings, logging and exit statuses.

The framework is tested on a package of fake step modules written to a temporary folder.
"""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline import cli

FAKE_PACKAGE = "ewald_fake_steps_for_cli_tests"

FIND_THINGS = '''
"""A fake step that finds things."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from pipeline.params import param, scope

NAME = "find_things"
HELP = "Find things in files (a fake step)."
logger = logging.getLogger("pipeline.steps.find_things")


@dataclass
class Filter:
    d_min: float | None = param(None, "High-resolution limit (Å); None means no limit.")
    d_max: float | None = param(None, "Low-resolution limit (Å); None means no limit.")


@dataclass
class Params:
    filter: Filter = scope(Filter, "Which things to keep.")
    threshold: float = param(3.0, "Sigma threshold of a strong pixel.")
    nproc: int = param(1, "Number of processes.", expert_level=1)


def cli(params: Params, files: list[str]) -> None:
    logger.info("Found 42 things")
    logger.debug("a debugging detail")
    with open("found.json", "w") as handle:
        json.dump({"files": files, "d_max": params.filter.d_max, "threshold": params.threshold}, handle)
'''

IMPORT = '''
from dataclasses import dataclass
from pipeline.params import param, scope

NAME = "import"
HELP = "Import things (a fake step)."


@dataclass
class Output:
    log: str = param("import.log", "The log file.")


@dataclass
class Params:
    distance: float = param(100.0, "Detector distance (mm).")
    output: Output = scope(Output, "Output files.")


def cli(params, files):
    with open("imported.json", "w") as handle:
        handle.write(repr(params.distance))
'''

FAILING = '''
from dataclasses import dataclass
from typing import Literal

from pipeline.errors import DataError
from pipeline.params import param

NAME = "failing"
HELP = "Fail in the chosen way (a fake step)."


@dataclass
class Params:
    failure: Literal["user", "bug", "interrupt"] = param("user", "How to fail.")


def cli(params, files):
    if params.failure == "user":
        raise DataError("crystal 3: only 12 spots, too few to index; try a lower threshold")
    if params.failure == "bug":
        raise ZeroDivisionError("division by zero in a fake step")
    raise KeyboardInterrupt
'''

NOT_A_COMMAND = '''
"""Shared helpers of the fake steps: no cli, so no command."""
HELP = "Not a command."
'''


@pytest.fixture(scope="module")
def fake_steps(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fake_steps")
    package = root / FAKE_PACKAGE
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name, source in [("find_things", FIND_THINGS), ("import_", IMPORT), ("failing", FAILING),
                         ("helpers", NOT_A_COMMAND)]:
        (package / f"{name}.py").write_text(textwrap.dedent(source))
    return root


@pytest.fixture
def ewald(fake_steps: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    """Run ``ewald`` on the fake steps in an empty working folder; return (status, stdout, stderr)."""
    monkeypatch.syspath_prepend(str(fake_steps))
    monkeypatch.setattr(cli, "STEPS_PACKAGE", FAKE_PACKAGE)
    monkeypatch.chdir(tmp_path)

    def run(*args: str) -> tuple[int, str, str]:
        status = cli.main(list(args))
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    return run


def test_commands_are_the_step_modules_with_cli(ewald) -> None:
    assert list(cli.discover_commands()) == ["failing", "find_things", "import"]
    for args in [(), ("--help",), ("-h",)]:
        status, out, _ = ewald(*args)
        assert status == 0
        assert "  find_things  Find things in files (a fake step)." in out
        assert "  import       Import things (a fake step)." in out
        assert "helpers" not in out and "Not a command" not in out


def test_no_step_module_is_imported_to_list_commands(ewald, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in sys.modules if name.startswith(f"{FAKE_PACKAGE}.")]:
        monkeypatch.delitem(sys.modules, name)
    ewald("--help")
    assert not [name for name in sys.modules if name.startswith(f"{FAKE_PACKAGE}.")]


def test_version(ewald) -> None:
    status, out, _ = ewald("--version")
    assert status == 0 and out.startswith("ewald ") and out.split()[1][0].isdigit()


def test_command_help_lists_parameters_with_help(ewald) -> None:
    status, out, _ = ewald("find_things", "-h")
    assert status == 0
    assert out.startswith("usage: ewald find_things [files] [key=value ...] [file.phil ...]")
    assert "Find things in files (a fake step)." in out
    assert "# Sigma threshold of a strong pixel. [a number]\nthreshold = 3" in out
    assert "1 expert parameters not shown" in out


def test_show_config_lists_defaults_help_and_given_values(ewald) -> None:
    status, out, _ = ewald("find_things", "-c")
    assert status == 0
    assert "filter {\n  # High-resolution limit (Å); None means no limit. [a number or None]\n  d_min = None" in out
    assert "threshold = 3\n" in out and "nproc" not in out
    assert not Path("find_things.log").exists()
    for expert in [("-c", "-e", "1"), ("-ce1",), ("-c", "--expert-level=1")]:
        assert "nproc = 1" in ewald("find_things", *expert)[1]
    out = ewald("find_things", "d_max=20", "-c")[1]
    assert "d_max = 20\n" in out


def test_run_passes_parameters_and_files_and_writes_a_log(ewald) -> None:
    status, out, err = ewald("find_things", "a.img", "d_max=20", "b.img", "threshold=4.5")
    assert status == 0 and err == ""
    result = json.loads(Path("found.json").read_text())
    assert result == {"files": ["a.img", "b.img"], "d_max": 20.0, "threshold": 4.5}
    log = Path("find_things.log").read_text()
    assert log.startswith("ewald ")
    assert "Command line: ewald find_things a.img d_max=20 b.img threshold=4.5\n" in log
    assert ("The following parameters have been modified:\n\nfilter {\n  d_max = 20\n}\nthreshold = 4.5\n"
            in log)
    assert "Found 42 things\n" in log and "Total time taken:" in log
    assert "a debugging detail" not in log
    assert "Found 42 things\n" in out and "Command line:" in out
    assert not logging.getLogger("pipeline").handlers  # the run removed its handlers


def test_verbose_logs_debug_messages(ewald) -> None:
    assert ewald("find_things", "-v")[0] == 0
    assert "a debugging detail" in Path("find_things.log").read_text()


def test_module_with_trailing_underscore_is_the_command_without_it(ewald) -> None:
    assert ewald("import", "distance=1762")[0] == 0
    assert Path("imported.json").read_text() == "1762.0"
    assert Path("import.log").is_file()
    assert ewald("import", "output.log=my_import.log")[0] == 0
    assert "output.log=my_import.log" in Path("my_import.log").read_text()


def test_unknown_command_suggests_close_ones(ewald) -> None:
    status, out, err = ewald("find_thing")
    assert status == 2 and out == ""
    assert err.startswith("ewald: error: unknown command 'find_thing'; did you mean find_things?")


def test_parameter_errors_exit_2_with_one_line_and_no_output(ewald) -> None:
    cases = {
        ("d_mx=20",): "did you mean filter.d_max",
        ("d_max=far",): "filter.d_max=far (command line): invalid value; expected a number or None",
        ("-x",): "unknown option -x",
        ("--d_max",): "--d_max: give a value",
        ("--d_mx", "20"): "did you mean filter.d_max",
        ("missing.phil",): "missing.phil: PHIL file not found",
    }
    for args, text in cases.items():
        status, out, err = ewald("find_things", *args)
        assert status == 2 and out == ""
        assert err.startswith("ewald find_things: error: ") and text in err
        assert err.count("\n") == 1 and "Traceback" not in err
    assert not Path("find_things.log").exists() and not Path("found.json").exists()


def test_gnu_style_options_are_parameter_assignments(ewald) -> None:
    status, out, _ = ewald("find_things", "--d_max", "20", "--d_min=2.5", "-c")
    assert status == 0
    assert "d_max = 20" in out and "d_min = 2.5" in out


def test_user_error_in_a_step_exits_2_without_traceback(ewald) -> None:
    status, out, err = ewald("failing", "failure=user")
    assert status == 2
    message = "ewald failing: error: crystal 3: only 12 spots, too few to index; try a lower threshold\n"
    assert err == message
    assert message in Path("failing.log").read_text()


def test_unexpected_error_exits_1_with_traceback(ewald) -> None:
    status, _, err = ewald("failing", "failure=bug")
    assert status == 1
    assert "Traceback" in err and "ZeroDivisionError: division by zero in a fake step" in err
    assert "ZeroDivisionError" in Path("failing.log").read_text()


def test_interrupt_exits_130(ewald) -> None:
    status, _, err = ewald("failing", "failure=interrupt")
    assert status == 130 and err == "ewald failing: interrupted\n"


def test_console_script_of_the_installed_package() -> None:
    script = Path(sys.executable).with_name("ewald")
    if not script.is_file():
        pytest.skip("ewald console script not installed")
    listing = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0 and listing.stdout.startswith("usage: ewald <command>")
    unknown = subprocess.run([str(script), "no_such_command"], capture_output=True, text=True, timeout=60)
    assert unknown.returncode == 2 and "unknown command 'no_such_command'" in unknown.stderr
