"""The batch scripts in deploy/ are valid shell and their ``ewald process`` lines valid parameters."""
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from pipeline.params import parse_parameters
from pipeline.steps import process

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SCRIPTS = [DEPLOY / "slurm" / "ewald-process.sbatch", DEPLOY / "pbs" / "ewald-process.pbs"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_batch_script_is_valid_and_asks_for_its_batch_system(script):
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text().replace("\\\n", " ")
    command = re.search(r"^ewald process (.*)$", text, re.M).group(1)
    arguments = [a for a in shlex.split(command) if "=" in a and not a.startswith("$")]
    params, positional = parse_parameters(process.Params, [a.replace('"', "") for a in arguments])
    assert positional == []
    expected_kind = "slurm" if script.suffix == ".sbatch" else "pbs"
    assert params.cluster.kind == expected_kind
    assert params.goniometer.axis == "auto" and params.distance == "auto" and params.unit_cell is not None
