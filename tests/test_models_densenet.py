"""DenseNet: parameter counts against the paper and torchvision, concatenation and growth,
transitions with compression, clear errors for invalid depths."""
import pytest
import torch
import torch.nn as nn
import torchvision

from cnnlib import count_params, models
from cnnlib.models.densenet import DenseBlock, DenseLayer, Transition


def meta_params(name, **kwargs):
    with torch.device("meta"):
        return count_params(models.create(name, **kwargs))


def test_cifar_densenets_match_huang_et_al_table_2():
    assert round(meta_params("densenet_cifar", depth=40, growth=12, bc=False) / 1e6, 1) == 1.0
    assert round(meta_params("densenet_cifar", depth=100, growth=12, bc=True) / 1e6, 1) == 0.8
    assert round(meta_params("densenet_cifar", depth=250, growth=24, bc=True) / 1e6, 1) == 15.3
    assert round(meta_params("densenet_cifar", depth=100, growth=12, bc=False) / 1e6, 1) == 7.0
    assert round(meta_params("densenet_cifar", depth=100, growth=24, bc=False) / 1e6, 1) == 27.2
    assert round(meta_params("densenet_cifar", depth=190, growth=40, bc=True) / 1e6, 1) == 25.6


@pytest.mark.parametrize("name", ["densenet121", "densenet161", "densenet169", "densenet201"])
def test_imagenet_densenets_equal_torchvision(name):
    with torch.device("meta"):
        reference = count_params(getattr(torchvision.models, name)(weights=None))
    assert meta_params(name) == reference


def test_a_dense_layer_appends_k_channels_and_keeps_its_input():
    layer = DenseLayer(20, growth=6, bottleneck=4).eval()
    x = torch.randn(2, 20, 5, 5)
    y = layer(x)
    assert y.shape == (2, 26, 5, 5)
    assert torch.equal(y[:, :20], x)  # concatenation, not addition
    assert layer.new_features[2].out_channels == 24  # the 1×1 bottleneck has 4k channels


def test_block_width_grows_linearly_and_every_layer_sees_all_earlier_features():
    block = DenseBlock(5, 16, growth=4, bottleneck=None)
    assert block.out_channels == 16 + 5 * 4
    assert [layer.new_features[-1].in_channels for layer in block] == [16, 20, 24, 28, 32]
    assert block(torch.randn(1, 16, 4, 4)).shape == (1, 36, 4, 4)


def test_densenet_bc_compresses_at_transitions():
    net = models.create("densenet_cifar", depth=40, growth=12, bc=True)  # 6 layers per block
    transitions = [m for m in net.blocks if isinstance(m, Transition)]
    assert len(transitions) == 2
    c1 = 24 + 6 * 12
    assert (transitions[0][2].in_channels, transitions[0][2].out_channels) == (c1, c1 // 2)
    plain = models.create("densenet_cifar", depth=40, growth=12, bc=False)
    t = [m for m in plain.blocks if isinstance(m, Transition)][0][2]
    assert t.in_channels == t.out_channels == 16 + 12 * 12


def test_forward_and_contract():
    net = models.create("densenet_cifar", num_classes=7, in_channels=1, depth=16, growth=4).eval()
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(net(x), net.head(net.blocks(net.stem(x))))
    assert net(x).shape == (2, 7)
    assert isinstance(net.head[-1], nn.Linear)


@pytest.mark.parametrize("kwargs, rule", [
    (dict(depth=41, bc=False), "3n\\+4"), (dict(depth=40, bc=True, growth=0), "growth"),
    (dict(depth=42, bc=True), "6n\\+4"), (dict(depth=4), "6n\\+4")])
def test_invalid_depths_name_the_rule(kwargs, rule):
    with pytest.raises(ValueError, match=rule):
        models.create("densenet_cifar", **kwargs)
