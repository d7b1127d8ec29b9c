"""`protocols.<name>.leak_twin: true`: the same studies under the image-level twin protocol,
and the report's honest-versus-leaky table."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ferbench import compare, paths
from ferbench import config as config_mod
from ferbench.report import build_report
from tests.conftest import TINY_FOLDS, tiny_config
from tests.test_report import write_summary


def twin_config(tmp_path) -> dict:
    raw = tiny_config(tmp_path)
    raw["protocols"]["subject_5fold"]["leak_twin"] = True
    raw["studies"][0]["models"] = ["deepfer", "deep_emotion"]
    return config_mod.validate(raw)


def test_a_leak_twin_adds_the_image_level_protocol_and_its_studies(tmp_path):
    config = twin_config(tmp_path)
    honest = config["protocols"]["subject_5fold"]
    twin = config["protocols"]["subject_5fold_image_twin"]
    assert twin["kind"] == "image_kfold" and "leak_twin" not in twin
    assert {k: v for k, v in twin.items() if k != "kind"} == {
        k: v for k, v in honest.items() if k not in ("kind", "leak_twin")}
    assert [(s.protocol, s.model, s.folds) for s in paths.studies(config)] == [
        (protocol, model, TINY_FOLDS) for protocol in ("subject_5fold", "subject_5fold_image_twin")
        for model in ("deepfer", "deep_emotion")]


def test_validating_a_validated_config_changes_nothing(tmp_path):
    config = twin_config(tmp_path)
    assert config_mod.validate(config) == config


def test_an_image_level_protocol_has_no_leaky_twin(tmp_path):
    raw = tiny_config(tmp_path)
    raw["protocols"]["subject_5fold"].update(kind="image_kfold", leak_twin=True)
    with pytest.raises(config_mod.ConfigError,
                       match="'protocols.subject_5fold.leak_twin': .* image-level already"):
        config_mod.validate(raw)


def test_report_prints_honest_and_leaky_side_by_side_with_the_difference(tmp_path):
    rng = np.random.default_rng(0)
    honest = write_summary(tmp_path / "results", "deep_emotion", [0.62, 0.70, 0.66], rng)
    leaky = write_summary(tmp_path / "twin", "deep_emotion", [0.97, 0.99, 0.98], rng)
    moved = tmp_path / "results" / "synthetic" / "subject_5fold_image_twin" / "deep_emotion"
    moved.parent.mkdir(parents=True)
    leaky.parent.rename(moved)
    data = json.loads((moved / "summary.json").read_text())
    data["protocol"] = "subject_5fold_image_twin"
    (moved / "summary.json").write_text(json.dumps(data))
    text = build_report([honest, moved / "summary.json"], [], [],
                        tmp_path / "report.html").read_text(encoding="utf-8")
    table = text.split("<h3>Leak inflation")[1].split("</table>")[0]
    difference = compare.unpaired_difference([0.62, 0.70, 0.66], 0.0, [0.97, 0.99, 0.98], 0.0)
    assert "<td>deep_emotion</td><td>synthetic / subject_5fold</td><td>66.00 ± 4.00</td>" in table
    assert "<td>98.00 ± 1.00</td>" in table
    assert (f"<td>{100 * difference['mean']:+.2f}</td><td>[{100 * difference['low']:.2f}, "
            f"{100 * difference['high']:.2f}]</td>") in table
    assert difference["high"] < 0  # the leak inflates beyond doubt here
