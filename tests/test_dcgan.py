"""DE-Capsnet's DCGAN augmentation: the networks, one fold's generation, the rule's wiring."""

import math
from dataclasses import asdict, replace

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from ferbench import config as config_mod
from ferbench import gan_augment, jobs, paths
from ferbench.gan_augment import DCGANOptions, generate_fold
from ferbench.models import dcgan
from tests.conftest import tiny_config
from tests.workflow_helpers import run_snakemake, write_config

TINY = DCGANOptions(epochs=2, batch_size=4, latent_dim=8, width=4, samples_per_class=3)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here trains tiny networks; one thread also fixes the float reductions."""


def fold_table() -> tuple[np.ndarray, pd.DataFrame]:
    """Ten 32x32 faces: two classes of three training faces each, plus val and test faces."""
    faces = np.random.default_rng(0).integers(0, 256, size=(10, 32, 32), dtype=np.uint8)
    folds = pd.DataFrame({
        "fold": 0, "uid": range(10),
        "label": ["anger"] * 3 + ["happiness"] * 3 + ["anger", "happiness", "anger", "fear"],
        "subject": ["a", "a", "b", "b", "c", "c", "d", "d", "e", "e"],
        "role": ["train"] * 6 + ["val", "val", "test", "test"]})
    return faces, folds


@pytest.mark.parametrize("side", [32, 48, 64])
def test_networks_map_latents_to_faces_and_faces_to_one_logit(side):
    gen, disc = dcgan.Generator(side, latent_dim=8, width=4), dcgan.Discriminator(side, width=4)
    images = gen(dcgan.sample_latent(3, 8, torch.Generator().manual_seed(0)))
    assert images.shape == (3, 1, side, side)
    assert images.abs().max() <= 1.0  # tanh output, the range faces are scaled to
    assert disc(images).shape == (3,)


@pytest.mark.parametrize("face_side, network_side", [(48, 48), (64, 64), (56, 64), (40, 48),
                                                     (100, 96), (20, 32)])
def test_network_side_is_the_nearest_multiple_of_16(face_side, network_side):
    assert dcgan.network_side(face_side) == network_side


def test_a_side_the_networks_cannot_take_is_refused():
    with pytest.raises(ValueError, match="multiple of 16"):
        dcgan.Generator(56)


def test_initialisation_is_radfords_and_seeded():
    """N(0, 0.02) weights, N(1, 0.02) batch-norm gains, from the given generator only."""
    first = dcgan.initialise(dcgan.Generator(64, 100, 16), torch.Generator().manual_seed(1))
    torch.manual_seed(123)  # the global seed must not matter
    again = dcgan.initialise(dcgan.Generator(64, 100, 16), torch.Generator().manual_seed(1))
    weights = torch.cat([m.weight.detach().flatten() for m in first.modules()
                         if isinstance(m, (torch.nn.ConvTranspose2d, torch.nn.Linear))])
    gains = torch.cat([m.weight.detach() for m in first.modules()
                       if isinstance(m, torch.nn.BatchNorm2d)])
    assert abs(weights.mean().item()) < 1e-3
    assert weights.std().item() == pytest.approx(0.02, rel=0.02)
    assert gains.mean().item() == pytest.approx(1.0, abs=0.01)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(),
                                                 again.state_dict().values()))


def test_adversarial_steps_update_both_networks_with_finite_losses():
    seeded = torch.Generator().manual_seed(0)
    gen = dcgan.initialise(dcgan.Generator(32, 8, 4), seeded)
    disc = dcgan.initialise(dcgan.Discriminator(32, 4), seeded)
    before = [p.detach().clone() for p in (*gen.parameters(), *disc.parameters())]
    optimisers = [torch.optim.Adam(n.parameters(), lr=2e-4, betas=(0.5, 0.999))
                  for n in (gen, disc)]
    real = gan_augment.to_network(fold_table()[0][:6], 32)
    losses = [dcgan.adversarial_step(gen, disc, *optimisers, real,
                                     dcgan.sample_latent(6, 8, seeded)) for _ in range(3)]
    # Small initial weights: the discriminator starts out unable to tell, loss ~ 2 ln 2.
    assert losses[0][0] == pytest.approx(2 * math.log(2), abs=0.1)
    assert all(math.isfinite(value) for pair in losses for value in pair)
    after = [*gen.parameters(), *disc.parameters()]
    assert all(not torch.equal(a, b) for a, b in zip(before, after))


def test_discriminator_alone_learns_to_tell_real_from_generated():
    """With the generator left untrained, discriminator updates drive its loss down."""
    seeded = torch.Generator().manual_seed(0)
    gen = dcgan.initialise(dcgan.Generator(32, 8, 4), seeded)
    disc = dcgan.initialise(dcgan.Discriminator(32, 4), seeded)
    real = gan_augment.to_network(fold_table()[0][:6], 32)
    frozen_gen_optimiser = torch.optim.SGD(gen.parameters(), lr=0.0)
    disc_optimiser = torch.optim.Adam(disc.parameters(), lr=2e-3, betas=(0.5, 0.999))
    losses = [dcgan.adversarial_step(gen, disc, frozen_gen_optimiser, disc_optimiser, real,
                                     dcgan.sample_latent(6, 8, seeded))[0] for _ in range(20)]
    assert losses[-1] < 0.5 * losses[0]


def test_generate_fold_is_byte_identical_for_a_seed_and_differs_for_another():
    faces, folds = fold_table()
    a, table_a = generate_fold(faces, folds, 0, TINY, seed=3, progress=False)
    b, table_b = generate_fold(faces, folds, 0, TINY, seed=3, progress=False)
    c, _ = generate_fold(faces, folds, 0, TINY, seed=4, progress=False)
    assert a.dtype == np.uint8 and a.tobytes() == b.tobytes() and table_a.equals(table_b)
    assert not np.array_equal(a, c)


def test_samples_per_class_and_their_table():
    faces, folds = fold_table()
    array, table = generate_fold(faces, folds, 0, TINY, seed=0, progress=False)
    # fear exists only in the test role: no DCGAN for it
    assert table["label"].tolist() == ["anger"] * 3 + ["happiness"] * 3
    assert array.shape == (6, 32, 32) and len(table) == len(array)
    assert (table["uid"] == -1).all() and (table["subject"] == "dcgan").all()
    assert table["copy"].tolist() == [0, 1, 2] * 2
    assert table["augmentation"].iloc[0] == "dcgan class=anger epoch=2"
    assert len({image.tobytes() for image in array}) == len(array)  # distinct samples


def test_only_training_faces_reach_the_gans():
    faces, folds = fold_table()
    reference, _ = generate_fold(faces, folds, 0, TINY, seed=0, progress=False)
    held_out = folds.loc[folds["role"] != "train", "uid"].to_numpy()
    blanked = faces.copy()
    blanked[held_out] = 255
    same, _ = generate_fold(blanked, folds, 0, TINY, seed=0, progress=False)
    assert same.tobytes() == reference.tobytes()

    changed = faces.copy()
    changed[4] = 255 - changed[4]  # one happiness training face
    other, table = generate_fold(changed, folds, 0, TINY, seed=0, progress=False)
    happiness = (table["label"] == "happiness").to_numpy()
    assert not np.array_equal(other[happiness], reference[happiness])
    assert np.array_equal(other[~happiness], reference[~happiness])  # classes are independent


def test_other_folds_training_faces_are_not_used():
    faces, folds = fold_table()
    two_folds = pd.concat([folds, folds.assign(fold=1, role="test")], ignore_index=True)
    with_other, _ = generate_fold(faces, two_folds, 0, TINY, seed=0, progress=False)
    alone, _ = generate_fold(faces, folds, 0, TINY, seed=0, progress=False)
    assert with_other.tobytes() == alone.tobytes()
    nothing, table = generate_fold(faces, two_folds, 1, TINY, seed=0, progress=False)
    assert nothing.shape == (0, 32, 32) and table.empty


def test_faces_of_a_side_off_the_grid_come_back_at_their_own_side():
    faces = np.random.default_rng(1).integers(0, 256, size=(3, 40, 40), dtype=np.uint8)
    folds = pd.DataFrame({"fold": 0, "uid": range(3), "label": "fear", "subject": "s",
                          "role": "train"})
    array, _ = generate_fold(faces, folds, 0, TINY, seed=0, progress=False)
    assert array.shape == (3, 40, 40)


def test_non_square_faces_are_refused():
    with pytest.raises(ValueError, match="square"):
        generate_fold(np.zeros((2, 32, 48), np.uint8), fold_table()[1], 0, TINY, seed=0)


def test_schema_defaults_are_the_options_defaults(tmp_path):
    raw = tiny_config(tmp_path)
    raw.pop("dcgan", None)
    assert config_mod.validate(raw)["dcgan"] == asdict(DCGANOptions())


@pytest.mark.parametrize("block, message", [
    ({"epoch": 3}, "'epoch' was unexpected"),
    ({"beta1": 1.0}, "1.0 is greater than or equal to the maximum of 1"),
    ({"samples_per_class": 0}, "0 is less than the minimum of 1"),
])
def test_a_bad_dcgan_block_names_the_key(tmp_path, block, message):
    raw = tiny_config(tmp_path, dcgan=block)
    with pytest.raises(config_mod.ConfigError, match="config key 'dcgan") as err:
        config_mod.validate(raw)
    assert message in str(err.value)


def test_options_outside_the_workflow_name_an_unknown_key():
    with pytest.raises(ValueError, match="dcgan option 'epoch' is unknown"):
        DCGANOptions.from_config({"epoch": 3})


def test_job_writes_array_table_and_one_sheet_row_per_class(tmp_path):
    faces, folds = fold_table()
    np.save(tmp_path / "faces.npy", faces)
    folds.to_csv(tmp_path / "folds.csv", index=False)
    out = {name: tmp_path / "dcgan" / f"fold0.{ext}"
           for name, ext in [("out_array", "npy"), ("out_table", "csv"), ("out_samples", "png")]}
    options = asdict(replace(TINY, samples_per_class=2))
    jobs.dcgan_fold(tmp_path / "faces.npy", tmp_path / "folds.csv", 0, options, 0,
                    progress=False, **out)
    table = pd.read_csv(out["out_table"])
    assert np.load(out["out_array"]).shape == (4, 32, 32) and len(table) == 4
    sheet = cv2.imread(str(out["out_samples"]), cv2.IMREAD_GRAYSCALE)
    assert sheet.shape == (2 * 32, 10 * 32)  # two classes, ten tiles a row


def test_the_rule_makes_a_fold_from_faces_and_folds(tmp_path):
    config = tiny_config(tmp_path / "results")
    write_config(tmp_path, config)
    target = paths.fill(paths.DCGAN_ARRAY, config_mod.validate(config), dataset="synthetic",
                        protocol="subject_5fold", fold=0)
    dry = run_snakemake(tmp_path, "-n", target).stdout
    stats = dry.split("Job stats:")[1].split("total")[0].split()
    planned = dict(zip(stats[4::2], map(int, stats[5::2])))  # after the header and its rule
    assert planned == {"fetch": 1, "ingest": 1, "faces": 1, "folds": 1, "dcgan": 1}
