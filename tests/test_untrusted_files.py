"""A model.pt or checkpoint that would run code when unpickled is refused, not executed.

The crafted file holds an object whose unpickling calls `open(marker, "w")`: loading it the
trusting way (weights_only=False) creates the marker file, which proves the payload is live;
every ferbench loader must refuse it with a one-line error naming the file, and leave no
marker behind.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ferbench import cli, faces, jobs, live, tracking
from ferbench import train as train_mod


class CreatesAFile:
    """Unpickling this calls open(path, "w"): arbitrary code, as harmless as it gets."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def crafted_model(folder: Path, marker: Path) -> Path:
    """A genuine model.pt with the payload added beside its weights."""
    path = live.write_untrained_model(folder / "model.pt", "deep_emotion", ["happiness", "neutral"],
                                      vars(faces.FaceOptions()))
    saved = torch.load(path, weights_only=True)  # what ferbench writes loads safely
    torch.save({**saved, "note": CreatesAFile(marker)}, path)
    return path


@pytest.fixture
def crafted(tmp_path) -> tuple[Path, Path]:
    marker = tmp_path / "code-ran"
    path = crafted_model(tmp_path, marker)
    control = tmp_path / "control-code-ran"
    torch.save({"note": CreatesAFile(control)}, tmp_path / "control.pt")
    torch.load(tmp_path / "control.pt", weights_only=False)
    assert control.exists(), "the payload must really run code when loaded the trusting way"
    return path, marker


def assert_refused(error: str, path: Path, marker: Path) -> None:
    assert str(path) in error and "\n" not in error.strip()
    assert "refusing to load" in error and "global io.open" in error
    assert not marker.exists(), "the crafted file ran code"


def test_a_model_that_would_run_code_is_refused_naming_the_file(crafted):
    path, marker = crafted
    with pytest.raises(train_mod.UnsafeFileError) as err:
        jobs.load_model(path)
    assert_refused(str(err.value), path, marker)


def test_a_checkpoint_that_would_run_code_is_refused_naming_the_file(crafted, tmp_path):
    _, marker = crafted
    checkpoint = tmp_path / "checkpoint.pt"
    torch.save({"model": {}, "optimizer": {}, "state": {"fingerprint": "x"},
                "note": CreatesAFile(marker)}, checkpoint)
    with pytest.raises(train_mod.UnsafeFileError) as err:
        train_mod.load_checkpoint(checkpoint, "x", torch.device("cpu"))
    assert_refused(str(err.value), checkpoint, marker)


def test_ferbench_live_refuses_a_pickled_mlflow_model_fetched_by_run_id(tmp_path, capsys,
                                                                        monkeypatch):
    """The remote path of the issue: a fold run's MLflow model on a tracking store, saved as
    a pickle carrying the payload instead of a torch.export graph, is refused even where
    MLflow's own switch would unpickle it."""
    import mlflow
    import mlflow.pytorch

    marker = tmp_path / "code-ran"
    network, saved = jobs.load_model(live.write_untrained_model(
        tmp_path / "model.pt", "deep_emotion", ["happiness", "neutral"],
        vars(faces.FaceOptions())))
    network.note = CreatesAFile(marker)
    uri = "sqlite:///" + str(tmp_path / "mlflow.db")
    tracker = tracking.Tracker(uri, "untrusted", tmp_path)
    run_id = tracker.start_run("deep_emotion-fold0", {})
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=run_id):
        mlflow.pytorch.log_model(network, name=tracking.MODEL_NAME,
                                 serialization_format="pickle", pip_requirements=[],
                                 metadata={tracking.METADATA_KEY: {"model": saved["model"]}})
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
    code = cli.main(["live", str(tmp_path / "no-video-needed.avi"), "--run-id", run_id,
                     "--tracking-uri", uri, "-o", str(tmp_path / "out"), "--quiet"])
    assert code == 2
    errors = [line for line in capsys.readouterr().err.splitlines()
              if line.startswith("ferbench: error:")]  # MLflow logs its own lines too
    assert len(errors) == 1
    assert f"runs:/{run_id}/model" in errors[0] and "refusing to load it" in errors[0]
    assert not marker.exists(), "the crafted model ran code"
