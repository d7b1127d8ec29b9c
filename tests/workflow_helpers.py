"""Running the real workflow on a tiny config, for the integration tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import ROOT

BIN = Path(sys.executable).parent


def env() -> dict:
    """The test interpreter's environment, with its venv's tools first on PATH."""
    out = dict(os.environ)
    out["PATH"] = f"{BIN}{os.pathsep}{out.get('PATH', '')}"
    out.pop("MLFLOW_TRACKING_URI", None)
    return out


def write_config(workdir: Path, config: dict) -> Path:
    """Write the config where the Snakefile's `configfile:` looks for it in `workdir`."""
    path = workdir / "config" / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_snakemake(workdir: Path, *args: str, check: bool = True, timeout: int = 900):
    """The real `snakemake` on the repository's Snakefile, with `workdir` as working folder."""
    cmd = [str(BIN / "snakemake"), "--snakefile", str(ROOT / "Snakefile"), "--directory",
           str(workdir), "--cores", "2", *args]
    result = subprocess.run(cmd, cwd=workdir, env=env(), capture_output=True, text=True,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result
