"""The ``ewald`` command: ``ewald <command> [files] [key=value ...] [file.phil ...]``.

A command is a module of :mod:`pipeline.steps` that defines ``cli``; it is named after the module
without a trailing underscore (``import_`` → ``ewald import``). Such a module provides

- ``HELP``: a one-line string literal, listed by ``ewald --help``;
- ``Params``: its parameters, a dataclass declared with :mod:`pipeline.params`;
- ``cli(params, files) -> None``: reads its inputs, calls the step's ``run`` and writes the
  outputs in the current directory; user errors raise :class:`~pipeline.errors.EwaldError`.

The command list is read from the modules' source without importing them, and only the module
of the command being run is imported, so that ``ewald`` starts quickly. Each run logs to stdout
and to ``<command>.log`` (DIALS: ``dials.<command>.log``), or to the step's ``output.log``
parameter if it declares one. Exit status: 0 success, 1 unexpected
error (a bug: traceback), 2 user error (one line on stderr, no traceback), 130 interrupted.
"""
from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
import re
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from pipeline.errors import EwaldError, ParameterError
from pipeline.logging_setup import ewald_version, log_run_header, run_logging
from pipeline.params import format_parameters, parameter_definitions, parse_parameters

STEPS_PACKAGE = "pipeline.steps"
_ARGUMENTS = "[files] [key=value ...] [file.phil ...]"
_OPTIONS_HELP = """\
Options:
  -h, --help        show this help and exit
  -c                print every parameter (with the key=value given) and its help, and exit
  -e LEVEL          with -c or -h, also show expert parameters up to LEVEL (default 0; -ce1 works)
  -v, --verbose     also log debug messages"""
_PARAMETERS_HELP = """\
Parameters are set as key=value, where the key may be shortened to any unique ending of its
full name (d_max=20 sets spotfinder.filter.d_max), or in PHIL files (name { key = value }).
Later settings win."""


@dataclass(frozen=True)
class Command:
    """A sub-command: its name, the module implementing it, and its one-line help."""

    name: str
    module: str
    help: str


def discover_commands(package: str | None = None) -> dict[str, Command]:
    """Every module of ``package`` (default :data:`STEPS_PACKAGE`) that defines ``cli``, by name."""
    package = package or STEPS_PACKAGE
    spec = importlib.util.find_spec(package)  # imports the parent package only
    if spec is None or not spec.submodule_search_locations:
        return {}
    commands = {}
    for directory in spec.submodule_search_locations:
        for path in sorted(Path(directory).glob("*.py")):
            if path.stem.startswith("_"):
                continue
            help_text = _step_help(path)
            if help_text is not None:
                name = path.stem.rstrip("_")
                commands[name] = Command(name, f"{package}.{path.stem}", help_text)
    return dict(sorted(commands.items()))


def _step_help(path: Path) -> str | None:
    """The HELP string of a module that defines ``cli`` (None if it does not), from its source."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    defines_cli, help_text = False, ""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "cli":
            defines_cli = True
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            defines_cli |= any((alias.asname or alias.name) == "cli" for alias in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = {target.id for target in targets if isinstance(target, ast.Name)}
            defines_cli |= "cli" in names
            if "HELP" in names and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                help_text = node.value.value
    return help_text if defines_cli else None


@dataclass
class _Options:
    help: bool = False
    show_config: bool = False
    expert_level: int = 0
    verbose: bool = False


def _split_options(args: Sequence[str]) -> tuple[_Options, list[str]]:
    """Separate -h, -c, -e LEVEL and -v from the files, key=value and PHIL arguments; any other
    ``--key value`` or ``--key=value`` becomes the parameter assignment ``key=value``."""
    options, rest = _Options(), []
    remaining = iter(args)
    for arg in remaining:
        if not arg.startswith("-") or "=" in arg and not arg.startswith("--"):
            rest.append(arg)
        elif arg in ("-h", "--help"):
            options.help = True
        elif arg in ("-c", "--show-config"):
            options.show_config = True
        elif arg in ("-v", "--verbose"):
            options.verbose = True
        elif match := re.fullmatch(r"-(c?)e(\d*)|--expert-level(?:=(\d+))?", arg):
            options.show_config |= match.group(1) == "c"
            level = match.group(2) or match.group(3) or next(remaining, "")
            if not level.isdigit():
                raise ParameterError(f"{arg}: give the expert level as a number, e.g. -e 1")
            options.expert_level = int(level)
        elif match := re.fullmatch(r"--([A-Za-z_][A-Za-z0-9_.]*)(?:=(.*))?", arg):
            # GNU style for any parameter: --preset myd88 and --preset=myd88 mean preset=myd88
            value = match.group(2)
            if value is None:
                value = next(remaining, None)
                if value is None:
                    raise ParameterError(f"{arg}: give a value, e.g. {arg} VALUE or {match.group(1)}=VALUE")
            rest.append(f"{match.group(1)}={value}")
        else:
            raise ParameterError(f"unknown option {arg}; the options are -h, -c, -e LEVEL, -v and --KEY VALUE")
    return options, rest


def _overview(commands: dict[str, Command]) -> str:
    width = max((len(name) for name in commands), default=0) + 2
    listing = "\n".join(f"  {name:<{width}}{command.help}" for name, command in commands.items())
    return (f"usage: ewald <command> {_ARGUMENTS}\n"
            f"       ewald <command> -h | -c\n"
            f"       ewald --version\n\n"
            "Rotation diffraction images to merged MTZ files, DIALS' way, as a Dask dataflow.\n\n"
            f"Commands:\n{listing or '  (none installed)'}\n\n"
            "Run 'ewald <command> -h' for a command's help and parameters.")


def _hidden_note(params_cls: type, expert_level: int) -> str:
    hidden = sum(d.expert_level > expert_level for d in parameter_definitions(params_cls))
    return f"# {hidden} expert parameters not shown; add -e {expert_level + 1} to see more\n" if hidden else ""


def _command_help(command: Command, params_cls: type, expert_level: int) -> str:
    return (f"usage: ewald {command.name} {_ARGUMENTS} [-c] [-e LEVEL] [-v] [-h]\n\n{command.help}\n\n"
            f"{_OPTIONS_HELP}\n\n{_PARAMETERS_HELP}\n\n"
            + format_parameters(params_cls, expert_level=expert_level) + _hidden_note(params_cls, expert_level))


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ewald`` with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if not args or args[0] in ("-h", "--help", "help"):
            print(_overview(discover_commands()))
            return 0
        if args[0] == "--version":
            print(f"ewald {ewald_version()}")
            return 0
        commands = discover_commands()
        command = commands.get(args[0])
        if command is None:
            close = difflib.get_close_matches(args[0], list(commands), n=3, cutoff=0.6)
            hint = f"did you mean {' or '.join(close)}? " if close else ""
            print(f"ewald: error: unknown command '{args[0]}'; {hint}run 'ewald --help' for the list",
                  file=sys.stderr)
            return 2
        return _run_command(command, args[1:])
    except KeyboardInterrupt:
        print("ewald: interrupted", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        print("ewald: unexpected error; this is a bug in ewald, please report it with the traceback above",
              file=sys.stderr)
        return 1


def _run_command(command: Command, args: list[str]) -> int:
    """Parse options and parameters (errors exit 2 before any output is written), then run."""
    try:
        options, rest = _split_options(args)
        module = importlib.import_module(command.module)
        if options.help:
            print(_command_help(command, module.Params, options.expert_level), end="")
            return 0
        params, files = parse_parameters(module.Params, rest)
    except EwaldError as error:
        print(f"ewald {command.name}: error: {error}", file=sys.stderr)
        return 2
    if options.show_config:
        print(format_parameters(params, expert_level=options.expert_level)
              + _hidden_note(module.Params, options.expert_level), end="")
        return 0
    return _execute(command, module, params, files, args, options.verbose)


def _execute(command: Command, module: ModuleType, params: Any, files: list[str], args: list[str],
             verbose: bool) -> int:
    """Run the step's ``cli`` with logging to stdout and ``<command>.log``."""
    prog = f"ewald {command.name}"
    # DIALS programs name their log with an output.log parameter; steps may declare one too.
    log_path = Path(getattr(getattr(params, "output", None), "log", None) or f"{command.name}.log")
    try:
        with run_logging(log_path, verbose=verbose) as log:
            log_run_header(log, ["ewald", command.name, *args], params)
            start = time.perf_counter()
            try:
                module.cli(params, files)
            except EwaldError as error:
                log.error("%s: error: %s", prog, error)
                return 2
            except KeyboardInterrupt:
                log.error("%s: interrupted", prog)
                return 130
            except Exception:
                log.exception("%s: unexpected error; this is a bug in ewald, please report it with %s",
                              prog, log_path)
                return 1
            log.info("Total time taken: %.2f s", time.perf_counter() - start)
            return 0
    except OSError as error:  # the log file itself cannot be written
        print(f"{prog}: error: cannot write {log_path.resolve()}: {error.strerror}; run in a writable "
              "directory", file=sys.stderr)
        return 2
