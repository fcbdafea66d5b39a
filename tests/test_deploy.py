"""The deploy recipes say what the code does: each one's ``bench.search`` command parses with
the command's own flags and runs on Ray; the KubeRay manifest is a RayJob whose entrypoint is
that command; the shell recipes pass ``bash -n``. (A Kubernetes or Slurm cluster is not available
here; what can be checked without one is.)"""

from __future__ import annotations

import re
import shlex
import subprocess

import pytest
import yaml

from bench.search import build_parser
from tests.conftest import REPO

DEPLOY = REPO / "deploy"


def _search_args(command: str) -> list[str]:
    """The arguments after ``python -m bench.search`` in a shell command, variables filled."""
    values = {"trials": "20", "port": "5000", "pgurl": "postgresql://h:5432"}

    def fill(match: re.Match) -> str:
        name = next(g for g in match.groups() if g)
        return values.get(name, "placeholder")

    command = command.replace('"$@"', "")  # the extra flags a user passes through

    command = re.sub(r"\$\((\w+)\)|\$\{?(\w+)\}?", fill, command.replace("\\\n", " "))
    words = shlex.split(command)
    at = words.index("bench.search")
    assert words[at - 2 : at] == ["python", "-m"], words
    return words[at + 1 :]


def _check(args: list[str]) -> None:
    parsed = build_parser().parse_args(args)  # an unknown or malformed flag exits here
    assert parsed.executor == "ray"
    assert parsed.storage and parsed.tracking_uri


def test_the_rayjob_runs_one_driver_on_its_ray_cluster():
    manifest = yaml.safe_load((DEPLOY / "kuberay-rayjob.yaml").read_text())
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayJob"
    spec = manifest["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # slots on workers
    workers = cluster["workerGroupSpecs"]
    assert workers and all(w["template"]["spec"]["containers"] for w in workers)
    _check(_search_args(spec["entrypoint"]))


@pytest.mark.component
@pytest.mark.parametrize("recipe", ["slurm.sbatch", "local.sh"])
def test_the_shell_recipes_are_valid_and_run_the_driver_on_ray(recipe):
    path = DEPLOY / recipe
    subprocess.run(["bash", "-n", str(path)], check=True)
    text = path.read_text()
    command = text[text.index("python -m bench.search") :].split("\n\n")[0]
    command = command.split(" || ")[0]
    lines = []
    for line in command.splitlines():
        lines.append(line)
        if not line.rstrip().endswith("\\"):
            break
    args = _search_args("\n".join(lines))
    _check(args)
    assert "RAY_ADDRESS=" in text  # the driver is pointed at the cluster the recipe started


def test_no_recipe_describes_the_removed_lease_mode():
    for path in DEPLOY.iterdir():
        text = path.read_text().lower()
        assert "lease" not in text.replace("release", "") and "bench_lease" not in text, path
