"""Running the real workflow on a tiny config, for the integration tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import MLFLOW_STORE_VARIABLES, ROOT, TINY_FOLDS

BIN = Path(sys.executable).parent


def env() -> dict:
    """The test interpreter's environment, with its venv's tools first on PATH."""
    out = dict(os.environ)
    out["PATH"] = f"{BIN}{os.pathsep}{out.get('PATH', '')}"
    for store in MLFLOW_STORE_VARIABLES:  # a study names its own store
        out.pop(store, None)
    return out


#: Where a test's study file lives in its working folder (run_snakemake passes it).
STUDY_FILE = Path("params.yaml")  # DVC's own params file, as the demo's


def write_config(workdir: Path, config: dict) -> Path:
    """Write a test's study file into `workdir` (snakemake_command passes it)."""
    path = workdir / STUDY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def snakemake_command(workdir: Path, *args: str, cores: int = 2) -> list[str]:
    """The real `snakemake` on the repository's Snakefile, with `workdir` as working folder
    and its study file as the only config (unless `args` name another)."""
    # `--configfile=FILE`: the spaced form would swallow the targets that follow as files.
    study = [] if "--configfile" in args else [f"--configfile={workdir / STUDY_FILE}"]
    return [str(BIN / "snakemake"), "--snakefile", str(ROOT / "Snakefile"), "--directory",
            str(workdir), "--cores", str(cores), *study, *args]


def run_snakemake(workdir: Path, *args: str, check: bool = True, timeout: int = 900,
                  cores: int = 2):
    """Run snakemake_command and return its result (an AssertionError on failure)."""
    cmd = snakemake_command(workdir, *args, cores=cores)
    result = subprocess.run(cmd, cwd=workdir, env=env(), capture_output=True, text=True,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result


def mlflow_client(results: Path):
    """A client of a study's local SQLite store (never the process-wide one)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{Path(results).resolve() / 'mlflow.db'}")


def mlflow_runs(results: Path) -> tuple[list, list]:
    """(parent runs, fold runs) of the `ferbench` experiment in a study's local SQLite store."""
    from ferbench import tracking

    client = mlflow_client(results)
    experiment = client.get_experiment_by_name("ferbench")
    runs = client.search_runs([experiment.experiment_id])
    roles = [run.data.tags.get(tracking.ROLE_TAG) for run in runs]
    assert set(roles) <= {"parent", "fold"}, f"runs of unknown role: {roles}"
    return ([r for r, role in zip(runs, roles) if role == "parent"],
            [r for r, role in zip(runs, roles) if role == "fold"])


def assert_study_finished(results: Path, model: str = "deep_emotion", folds: int = TINY_FOLDS,
                          study: str = "synthetic/subject_5fold") -> None:
    """What a finished tiny study leaves however it was executed (locally, on SLURM, after a
    kill): each fold's model and metrics, the summary and report, and exactly one FINISHED
    MLflow run per fold with its metrics, all nested under exactly one parent run."""
    from ferbench import tracking

    model_dir = Path(results) / study / model
    for fold in range(folds):
        for name in ("model.pt", "history.csv", "metrics.json"):
            assert (model_dir / f"fold{fold}" / name).exists(), f"fold{fold}/{name}"
        assert not (model_dir / f"fold{fold}" / "checkpoint.pt").exists()
    summary = json.loads((model_dir / "summary.json").read_text())
    assert len(summary["folds"]) == folds
    assert "data:image/png;base64" in (Path(results) / "report.html").read_text()
    parents, children = mlflow_runs(results)
    assert len(parents) == 1, f"{len(parents)} parent runs"
    assert sorted(int(c.data.tags["fold"]) for c in children) == list(range(folds))
    assert parents[0].info.run_id == summary["mlflow_run_id"]
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags[tracking.PARENT_TAG] == parents[0].info.run_id
        assert {"val_acc", "train_loss", "test_accuracy"} <= set(child.data.metrics)


def apt_install_or_skip(what: str, packages: tuple[str, ...], installed) -> None:
    """Install Debian `packages` unless `installed()` says they are there; skip, saying why,
    where that is impossible (not root, no apt-get, apt-get failed)."""
    if installed():
        return
    if os.geteuid() != 0:
        pytest.skip(f"{what} is not installed and installing it (apt-get) needs root")
    if not shutil.which("apt-get"):
        pytest.skip(f"{what} is not installed and apt-get is not available on this machine")
    apt = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"],
                ["apt-get", "install", "-y", "--no-install-recommends", *packages]):
        done = subprocess.run(cmd, env=apt, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            pytest.skip(f"`{' '.join(cmd)}` failed, {what} cannot be installed: "
                        f"{done.stderr.strip()[-500:]}")


#: Injected first into a page's <head>: records script errors and resources that failed to
#: load, and on `load` writes them, with every image that did not decode, into the DOM.
BROWSER_CHECK = """<script>
window.ferbenchErrors = [];
window.addEventListener("error", e => window.ferbenchErrors.push(
  e.message || ("failed to load " + (e.target.alt || e.target.tagName))), true);
window.addEventListener("load", () => {
  const broken = [...document.images].filter(i => !i.complete || i.naturalWidth === 0)
    .map(i => i.alt || i.src.slice(0, 60));
  const out = document.createElement("pre");
  out.id = "ferbench-check";
  out.textContent = JSON.stringify({images: document.images.length, broken,
                                    errors: window.ferbenchErrors});
  document.body.appendChild(out);
});
</script>"""


def chromium() -> str:
    """Debian's headless-capable Chromium (`.ci/run` installs it; skip where it cannot be)."""
    apt_install_or_skip("chromium", ("chromium",), lambda: shutil.which("chromium"))
    return shutil.which("chromium")


def render_in_chromium(page: Path, html: str) -> dict:
    """Load `html` (written to `page`) in headless Chromium: {images, broken, errors}."""
    page.write_text(html.replace("<head>", "<head>" + BROWSER_CHECK, 1), encoding="utf-8")
    result = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--user-data-dir={page.parent / 'chromium-profile'}", "--virtual-time-budget=10000",
         "--dump-dom", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    marker = '<pre id="ferbench-check">'
    assert marker in result.stdout, f"the page never finished loading: {result.stderr[-2000:]}"
    dumped = result.stdout.split(marker, 1)[1].split("</pre>", 1)[0]
    return json.loads(dumped.replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">")
                      .replace("&amp;", "&"))
