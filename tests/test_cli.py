import subprocess
import sys
from pathlib import Path

from ferbench import cli
from ferbench.models import REGISTRY
from tests.conftest import ROOT

FERBENCH = str(Path(sys.executable).parent / "ferbench")


def test_models_lists_the_registry_with_parameter_counts(capsys):
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    for name in REGISTRY:
        assert name in out
    assert "1x48x48" in out


def test_dvc_yaml_check_passes_on_the_committed_file():
    result = subprocess.run([FERBENCH, "dvc-yaml", "--check"], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr


def test_dvc_yaml_check_fails_when_out_of_date(tmp_path):
    stale = tmp_path / "dvc.yaml"
    stale.write_text("stages: {}\n")
    assert cli.main(["dvc-yaml", "--config", str(ROOT / "params.yaml"), "-o", str(stale),
                     "--check"]) == 1


def test_manifest_prints_the_counts_of_a_class_folder_dataset(tmp_path):
    import cv2
    import numpy as np

    layout = {"train/happy": 3, "train/sad": 2, "test/happy": 1, "test/angry": 2}
    for folder, n in layout.items():
        for i in range(n):
            path = tmp_path / "data" / folder / f"{folder.replace('/', '_')}{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), np.full((8, 8), 10 * len(list(tmp_path.rglob("*.png"))),
                                           np.uint8))
    out_csv = tmp_path / "manifest.csv"
    result = subprocess.run([FERBENCH, "manifest", "folder", str(tmp_path / "data"), "-o",
                             str(out_csv)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "images: 8" in result.stdout and "quarantined: 0" in result.stdout
    lines = dict(line.split() for line in result.stdout.splitlines()
                 if line.startswith("  ") and len(line.split()) == 2)
    assert lines == {"anger": "2", "happiness": "4", "sadness": "2", "test": "3", "train": "5"}
    assert out_csv.read_text().count("\n") == 9  # header + 8 rows


def test_manifest_on_a_missing_folder_is_a_one_line_error(tmp_path):
    result = subprocess.run([FERBENCH, "manifest", "folder", str(tmp_path / "absent")],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.startswith("ferbench: error: folder dataset not found")
    assert len(result.stderr.strip().splitlines()) == 1


def test_workflow_is_lint_and_snakefmt_clean():
    bin_dir = Path(sys.executable).parent
    lint = subprocess.run([str(bin_dir / "snakemake"), "--lint", "--cores", "1",
                           "--configfile", "params.yaml"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert lint.returncode == 0 and "Congratulations" in lint.stdout + lint.stderr, lint.stdout
    fmt = subprocess.run([str(bin_dir / "snakefmt"), "--check", "."], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert fmt.returncode == 0, fmt.stderr
