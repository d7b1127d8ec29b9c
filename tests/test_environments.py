"""Pins agree everywhere, every rule declares what the design card asks for, and the SLURM
profile asks for what training needs."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from tests.conftest import ROOT

#: Executor plugins submit jobs; a rule's environment only runs one, so it may leave them out.
SUBMIT_ONLY = {"snakemake-executor-plugin-slurm", "snakemake-executor-plugin-cluster-generic"}


def pyproject_pins() -> dict:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + project["optional-dependencies"]["dev"]
    pins = dict(dep.split("==") for dep in deps)
    assert all(pins.values()), "every dependency is pinned with =="
    return pins


def env_files() -> list[Path]:
    return [ROOT / "environment.yml", *sorted((ROOT / "workflow" / "envs").glob("*.yaml"))]


def pip_lines(path: Path) -> list[str]:
    """An environment's pip entries, `-r <requirements file>` expanded (comments dropped)."""
    spec = yaml.safe_load(path.read_text())
    lines = []
    for line in next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict)):
        if line.startswith("-r "):
            text = (path.parent / line[3:]).read_text()
            lines += [row.strip() for row in text.splitlines()
                      if row.strip() and not row.lstrip().startswith("#")]
        else:
            lines.append(line)
    return lines


def env_pins(path) -> dict:
    return dict(line.split("==") for line in pip_lines(path) if "==" in line)


def installs_ferbench(path: Path) -> bool:
    """Whether an environment installs this project (`-e <folder of pyproject.toml>`)."""
    return any(line.startswith("-e ") and (path.parent / line[3:]).resolve() == ROOT
               for line in pip_lines(path))


def test_torch_is_pinned_to_the_cpu_build_on_disk():
    assert pyproject_pins()["torch"] == "2.13.0"


@pytest.mark.parametrize("path", env_files(), ids=lambda p: p.name)
def test_every_environment_file_parses_and_pins_every_package(path):
    spec = yaml.safe_load(path.read_text())
    assert isinstance(spec, dict) and spec.get("channels"), f"{path.name}: no channels"
    assert "python=3.11" in spec["dependencies"], f"{path.name}: python is not 3.11"
    for line in pip_lines(path):
        editable = line.startswith("-e ") and (path.parent / line[3:] / "pyproject.toml").exists()
        assert editable or re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][\w.]*", line), (
            f"{path.name}: {line!r} is neither an exact pin nor this project")


def test_environment_files_agree_with_pyproject():
    """Where an environment installs ferbench, pip must satisfy pyproject's pins there, so
    the environment pins the same versions of all of them (an environment that does not
    install ferbench, e.g. one for a tool with conflicting needs, only has to parse)."""
    pins = pyproject_pins()
    runtime = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "dependencies"])
    for path in filter(installs_ferbench, env_files()):
        listed = env_pins(path)
        for name, version in listed.items():
            assert pins.get(name) == version, f"{path.name}: {name}=={version} vs pyproject"
        needed = {dep.split("==")[0] for dep in runtime} - SUBMIT_ONLY
        if path.name == "environment.yml":  # the whole project: everything, dev tools too
            needed = set(pins)
        assert not needed - set(listed), f"{path.name} lacks {sorted(needed - set(listed))}"
    assert installs_ferbench(ROOT / "environment.yml")
    assert installs_ferbench(ROOT / "workflow" / "envs" / "ferbench.yaml")


def rule_blocks():
    for path in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        text = path.read_text()
        for match in re.finditer(r"^rule (\w+):\n((?:    .*\n|\n)+)", text, re.MULTILINE):
            yield path, match.group(1), match.group(2)


def test_every_rule_declares_log_benchmark_threads_resources_and_env():
    blocks = list(rule_blocks())
    assert len(blocks) >= 9
    for path, name, body in blocks:
        for directive in ("log:", "benchmark:", "threads:", "resources:", "conda:"):
            assert f"    {directive}" in body, f"rule {name} in {path.name} lacks {directive}"
        env = re.search(r'conda:\n\s+"([^"]+)"', body).group(1)
        assert (path.parent / env).resolve().exists(), f"rule {name}: {env} missing"


def slurm_profile() -> dict:
    return yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())


def train_request(model: str, input_mb: float, attempt: int = 1) -> dict:
    """The profile's train resources as Snakemake evaluates them for one job."""
    namespace = {"wildcards": SimpleNamespace(model=model),
                 "input": SimpleNamespace(size_mb=input_mb), "attempt": attempt}
    resources = slurm_profile()["set-resources"]["train"]
    return {key: eval(value, namespace) if isinstance(value, str) and "(" in value else value
            for key, value in resources.items()}


def test_slurm_profile_asks_a_gpu_and_scales_training_by_model_and_data():
    profile = slurm_profile()
    assert profile["executor"] == "slurm"
    assert {"slurm_partition", "slurm_account", "mem_mb", "runtime"} <= set(
        profile["default-resources"])
    small, large = train_request("deep_emotion", 10), train_request("damcnn", 10)
    assert small["gres"] == "gpu:1" and small["gpu"] == 0  # one GPU, requested once
    for key in ("mem_mb", "runtime"):
        assert isinstance(small[key], int) and small[key] > 0
        assert large[key] > small[key], f"a VGG model on 224x224 gets more {key}"
        assert train_request("deep_emotion", 1000)[key] > small[key], f"{key} grows with data"
        assert train_request("deep_emotion", 10, attempt=2)[key] == 2 * small[key]
    assert small["mem_mb"] >= 4000 and small["runtime"] >= 60


def test_workflow_lints_clean_through_the_slurm_profile():
    """The profile parses (its resource expressions included) and the workflow is lint-clean
    under it; the plain lint and snakefmt run in tests/test_cli.py."""
    bin_dir = Path(sys.executable).parent
    lint = subprocess.run([str(bin_dir / "snakemake"), "--lint", "--profile", "profiles/slurm",
                           "--configfile", "params.yaml"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert lint.returncode == 0 and "Congratulations" in lint.stdout + lint.stderr, (
        lint.stdout[-3000:] + lint.stderr[-3000:])
