"""Pins agree everywhere, and every rule declares what the design card asks for."""

from __future__ import annotations

import re
import tomllib

import yaml

from tests.conftest import ROOT


def pyproject_pins() -> dict:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + project["optional-dependencies"]["dev"]
    pins = dict(dep.split("==") for dep in deps)
    assert all(pins.values()), "every dependency is pinned with =="
    return pins


def env_pins(path) -> dict:
    spec = yaml.safe_load(path.read_text())
    pip = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict))
    return dict(line.split("==") for line in pip if "==" in line)


def test_torch_is_pinned_to_the_cpu_build_on_disk():
    assert pyproject_pins()["torch"] == "2.13.0"


def test_environment_files_agree_with_pyproject():
    pins = pyproject_pins()
    files = [ROOT / "environment.yml", *sorted((ROOT / "workflow" / "envs").glob("*.yaml"))]
    for path in files:
        for name, version in env_pins(path).items():
            assert pins.get(name) == version, f"{path.name}: {name}=={version} vs pyproject"


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
