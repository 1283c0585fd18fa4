"""The two commands, the environment files and CI agree with each other."""
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_lists_the_same_dependencies_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_name(r) for r in project["dependencies"]}
    declared |= {_name(r) for r in project["optional-dependencies"]["dev"]}
    env = (ROOT / "environment.yml").read_text()
    packages = env.split("\ndependencies:", 1)[1]          # not the channels above it
    listed = {_name(m.group(1)) for m in re.finditer(r"^\s+- ([A-Za-z][\w.\-]*)", packages, re.M)}
    listed -= {"python", "pip"}
    assert declared == listed, (f"only in pyproject: {sorted(declared - listed)}; "
                                f"only in environment.yml: {sorted(listed - declared)}")
    assert re.search(r"^\s+- -e \.\[dev\]", env, re.M), "environment.yml must pip-install the package"


def _readme_command(label: str) -> str:
    readme = (ROOT / "README.md").read_text()
    m = re.search(rf"<!-- {label} -->\s*```(?:bash|sh)?\n(.+?)\n```", readme, re.S)
    assert m, f"README has no '{label}' command block"
    return m.group(1).strip()


def test_ci_runs_exactly_the_readme_test_command():
    command = _readme_command("test-command")
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.lstrip().startswith("#") and not line.startswith("set ")]
    assert command in ci, f".ci/run must run the README's test command {command!r}"


def test_the_two_commands_are_make_targets():
    makefile = (ROOT / "Makefile").read_text()
    for label in ("lab-command", "test-command"):
        target = _readme_command(label).split()[-1]
        assert re.search(rf"^{target}:", makefile, re.M), f"Makefile has no target {target!r}"
