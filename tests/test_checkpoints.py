"""A damaged checkpoint costs an epoch, not the job: training falls back to the previous
checkpoint (or a fresh start), says so in its log, and still ends where an uninterrupted
run ends."""

from __future__ import annotations

import numpy as np
import torch

from ferbench import train
from tests.test_models import run_fit

EPOCHS = 4


def truncate(path) -> None:
    """What a crash mid-write or a full disk leaves: the first half of the file."""
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def assert_same_training(got, expected) -> None:
    np.testing.assert_allclose(got[0].drop(columns="seconds").to_numpy(),
                               expected[0].drop(columns="seconds").to_numpy())
    for key in expected[1]:
        assert torch.equal(got[1][key], expected[1][key]), key


def test_each_checkpoint_keeps_the_one_before_it(tmp_path):
    run_fit(tmp_path, epochs=3)
    latest = train.load_tensors(tmp_path / "ckpt.pt")
    previous = train.load_tensors(train.previous_checkpoint(tmp_path / "ckpt.pt"))
    assert (latest["state"]["epoch"], previous["state"]["epoch"]) == (3, 2)
    assert not (tmp_path / "ckpt.pt.tmp").exists()
    train.remove_checkpoint(tmp_path / "ckpt.pt")
    assert list(tmp_path.iterdir()) == []


def test_a_corrupt_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
    train.make_deterministic(0, 1)
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    expected = run_fit(tmp_path / "a", epochs=EPOCHS)
    run_fit(tmp_path / "b", epochs=3)  # "killed" after epoch 3
    truncate(tmp_path / "b" / "ckpt.pt")
    capsys.readouterr()
    resumed = run_fit(tmp_path / "b", epochs=EPOCHS)
    log = capsys.readouterr().out
    assert f"checkpoint {tmp_path / 'b' / 'ckpt.pt'} does not load (" in log
    assert "falling back to the previous checkpoint" in log
    assert f"resumed from epoch 2 of {EPOCHS}" in log  # one epoch lost, not the job
    assert_same_training(resumed, expected)


def test_with_both_checkpoints_corrupt_the_fold_restarts(tmp_path, capsys):
    train.make_deterministic(0, 1)
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    expected = run_fit(tmp_path / "a", epochs=EPOCHS)
    run_fit(tmp_path / "b", epochs=3)
    truncate(tmp_path / "b" / "ckpt.pt")
    (tmp_path / "b" / "ckpt.prev.pt").write_bytes(b"not a checkpoint")
    capsys.readouterr()
    restarted = run_fit(tmp_path / "b", epochs=EPOCHS)
    log = capsys.readouterr().out
    assert "ckpt.prev.pt does not load (" in log and "falling back to a fresh start" in log
    assert "resumed from" not in log
    assert_same_training(restarted, expected)
