"""The shared VGG trunk: layouts, shapes and pretrained-weight loading at a tiny width."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ferbench.data.download import sha256sum
from ferbench.models import pretrained
from ferbench.models.vgg import VGGTrunk, load_pretrained

TINY = 1 / 16


@pytest.mark.parametrize("layout, depths", [("vgg16", (2, 2, 3, 3, 3)), ("vgg19", (2, 2, 4, 4, 4))])
def test_layout_and_shapes(layout, depths):
    trunk = VGGTrunk(layout, in_channels=1, width=TINY)
    assert len(trunk.stages) == 5
    assert all(isinstance(stage[-1], nn.MaxPool2d) for stage in trunk.stages)
    assert tuple(sum(isinstance(m, nn.Conv2d) for m in stage) for stage in trunk.stages) == depths
    assert trunk.out_channels == 32
    assert trunk(torch.zeros(2, 1, 64, 64)).shape == (2, 32, 2, 2)


def test_batch_norm_layers():
    trunk = VGGTrunk("vgg16", width=TINY, batch_norm=True)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in trunk.modules()) == 13


def _torchvision_style_file(tmp_path, trunk: VGGTrunk):
    """A state dict laid out like torchvision's vgg16: features.N.* then a 2D classifier."""
    state = {f"features.{k}": v for k, v in trunk.state_dict().items()}
    state["classifier.0.weight"] = torch.randn(10, 4)
    state["classifier.0.bias"] = torch.randn(10)
    path = tmp_path / "vgg.pth"
    torch.save(state, path)
    return path


def test_load_pretrained_averages_rgb_into_gray(tmp_path):
    colour = VGGTrunk("vgg16", in_channels=3, width=TINY)
    path = _torchvision_style_file(tmp_path, colour)
    gray = load_pretrained(VGGTrunk("vgg16", in_channels=1, width=TINY), path, sha256sum(path))
    first_colour, first_gray = colour.stages[0][0], gray.stages[0][0]
    assert torch.allclose(first_gray.weight, first_colour.weight.mean(dim=1, keepdim=True))
    assert torch.equal(gray.stages[4][0].weight, colour.stages[4][0].weight)


def test_load_pretrained_from_url_uses_the_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained, "WEIGHTS_CACHE", tmp_path / "cache")
    source = VGGTrunk("vgg16", in_channels=1, width=TINY)
    path = _torchvision_style_file(tmp_path, source)
    trunk = load_pretrained(VGGTrunk("vgg16", width=TINY), path.as_uri(), sha256sum(path))
    assert (tmp_path / "cache" / "vgg.pth").is_file()
    assert torch.equal(trunk.stages[2][2].bias, source.stages[2][2].bias)


def test_load_pretrained_refuses_mismatches(tmp_path):
    path = _torchvision_style_file(tmp_path, VGGTrunk("vgg16", width=TINY))
    digest = sha256sum(path)
    with pytest.raises(ValueError, match="sha256"):
        load_pretrained(VGGTrunk("vgg16", width=TINY), path, "0" * 64)
    with pytest.raises(ValueError, match="13 conv/batch-norm layers, the vgg19 trunk 16"):
        load_pretrained(VGGTrunk("vgg19", width=TINY), path, digest)
    wider = VGGTrunk("vgg16", width=2 * TINY)
    before = wider.stages[0][0].weight.clone()
    with pytest.raises(ValueError, match="layer 0 weight"):
        load_pretrained(wider, path, digest)
    assert torch.equal(wider.stages[0][0].weight, before)  # nothing copied on a refusal
