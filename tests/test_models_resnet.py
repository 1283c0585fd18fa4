"""ResNet family: parameter counts against the papers and torchvision, the block contract used by
lesion/weight-matching code, shortcuts, stochastic depth, and clear errors for invalid configs."""
from functools import partial

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from cnnlib import count_params, models
from cnnlib.models.layers import SqueezeExcitation
from cnnlib.models.resnet import (BasicBlock, Bottleneck, CifarResNet, ImageNetResNet, PreActBlock,
                                  ZeroPadShortcut, survival_probs)


def meta_params(name, **kwargs):
    with torch.device("meta"):
        return count_params(models.create(name, **kwargs))


# --------------------------------------------------------------------------------------------
# Parameter counts
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("depth, millions, digits", [
    (20, 0.27, 2), (32, 0.46, 2), (44, 0.66, 2), (56, 0.85, 2), (110, 1.7, 1), (1202, 19.4, 1)])
def test_cifar_resnet_parameters_match_he_et_al_table_6(depth, millions, digits):
    assert round(meta_params(f"resnet{depth}") / 1e6, digits) == millions


def test_resnet20_parameter_count_by_hand():
    # stem 3·16·9 + BN; per block two 3×3 convs + two BNs; option A adds nothing; head 64·10 + 10
    def stage(cin, c, n):
        return (cin * c * 9 + c * c * 9 + 4 * c) + (n - 1) * (2 * c * c * 9 + 4 * c)
    expected = 3 * 16 * 9 + 2 * 16 + stage(16, 16, 3) + stage(16, 32, 3) + stage(32, 64, 3) + 64 * 10 + 10
    assert meta_params("resnet20") == expected == 269_722


def test_plain_nets_have_exactly_the_parameters_of_option_a_resnets():
    for depth in (20, 56):
        assert meta_params(f"plain{depth}") == meta_params(f"resnet{depth}")


def test_option_b_adds_only_the_two_projections():
    extra = (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)  # 1×1 conv + BN at the two downsampling blocks
    assert meta_params("resnet20", shortcut="B") == meta_params("resnet20") + extra


def test_wide_resnet_28_10_and_resnext29_match_their_papers():
    assert round(meta_params("wrn28_10") / 1e6, 1) == 36.5
    # Xie et al. truncate: 34,426,698 -> 34.4M and 68,155,210 -> 68.1M
    assert meta_params("resnext29_8x64d") // 100_000 == 344
    assert meta_params("resnext29_16x64d") // 100_000 == 681
    assert round(meta_params("preact_resnet_cifar", depth=110) / 1e6, 1) == 1.7


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
                                  "resnext50_32x4d", "resnext101_32x8d", "wide_resnet50_2"])
def test_imagenet_resnets_equal_torchvision(name):
    with torch.device("meta"):
        reference = count_params(getattr(torchvision.models, name)(weights=None))
    assert meta_params(name) == reference


# --------------------------------------------------------------------------------------------
# The stem/blocks/head contract
# --------------------------------------------------------------------------------------------

def test_contract_of_cifar_resnet():
    net = models.create("resnet_cifar", depth=20, num_classes=10, in_channels=3).eval()
    assert isinstance(net, CifarResNet) and len(net.blocks) == 9
    assert all(isinstance(b, BasicBlock) for b in net.blocks)
    assert [b.downsample for b in net.blocks] == [False] * 3 + [True, False, False] * 2
    assert isinstance(net.head[0], nn.AdaptiveAvgPool2d) and isinstance(net.head[-1], nn.Linear)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(x), net.head(net.blocks(net.stem(x))))
        h = net.stem(x)
        for block in net.blocks:
            expected = F.relu(block.residual(h) + block.shortcut(h))
            assert torch.allclose(block(h), expected)
            h = block(h)


def test_shortcut_modules():
    net = models.create("resnet20")
    assert isinstance(net.blocks[0].shortcut, nn.Identity)
    assert isinstance(net.blocks[3].shortcut, ZeroPadShortcut)
    b = models.create("resnet20", shortcut="B")
    assert isinstance(b.blocks[3].shortcut[0], nn.Conv2d) and b.blocks[3].shortcut[0].stride == (2, 2)
    plain = models.create("plain20")
    assert all(block.shortcut is None for block in plain.blocks)
    x = torch.randn(2, 16, 8, 8)
    assert torch.equal(plain.blocks[0].eval()(x), F.relu(plain.blocks[0].residual(x)))


def test_option_a_shortcut_is_the_identity_on_old_channels_and_zero_on_new_ones():
    x = torch.randn(2, 16, 8, 8)
    y = ZeroPadShortcut(16, 32, 2)(x)
    assert y.shape == (2, 32, 4, 4)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert not y[:, :8].any() and not y[:, 24:].any()


def test_a_zero_residual_branch_makes_the_block_the_identity():
    block = BasicBlock(16, 16).eval()
    nn.init.zeros_(block.residual[4].weight)  # last BN's γ
    x = torch.rand(2, 16, 8, 8)  # non-negative, as after a ReLU
    assert torch.equal(block(x), x)


def test_attention_is_applied_to_the_residual_branch_before_the_addition():
    class Gate(nn.Module):  # a stand-in for SE/CBAM: scales the branch by a constant
        def __init__(self, channels):
            super().__init__()
            self.channels, self.scale = channels, 0.0

        def forward(self, x):
            return self.scale * x

    net = models.create("resnet20", attention=Gate).eval()
    assert all(isinstance(b.residual[-1], Gate) and b.residual[-1].channels == b.residual[0].out_channels
               for b in net.blocks)
    h = torch.rand(2, 16, 8, 8)
    assert torch.equal(net.blocks[0](h), h)  # gate closed -> identity


@pytest.mark.parametrize("name, kwargs", [("preact_resnet_cifar", dict(depth=8, width=8)),
                                          ("wide_resnet_cifar", dict(depth=10, widen=2, width=8))])
def test_pre_activation_and_wide_resnets_take_attention_on_the_residual_branch(name, kwargs):
    plain = models.create(name, in_channels=1, **kwargs)
    se = models.create(name, in_channels=1, attention=partial(SqueezeExcitation, reduction=4), **kwargs)
    assert all(isinstance(b.residual[-1], SqueezeExcitation) for b in se.blocks)
    # SE's overhead per block (Hu et al. 2018, Eq. 5 plus biases): 2·C·(C/r) + C/r + C, C = block output
    overhead = sum(2 * c * (c // 4) + c // 4 + c for c in (b.residual[-2].out_channels for b in se.blocks))
    assert count_params(se) == count_params(plain) + overhead
    assert se(torch.randn(2, 1, 16, 16)).shape == (2, 10)


def test_attention_must_be_a_factory_not_a_module_instance():
    for name, kwargs in [("resnet20", {}), ("wide_resnet_cifar", dict(depth=10, widen=2)),
                         ("resnext_cifar", dict(depth=11, cardinality=4, base_width=4, width=8))]:
        with pytest.raises(TypeError, match="factory channels -> module.*got a SqueezeExcitation instance"):
            models.create(name, attention=SqueezeExcitation(16), **kwargs)


def test_deleting_a_block_keeps_the_network_runnable():
    net = models.create("resnet20").eval()
    x = torch.randn(2, 3, 32, 32)
    for i in (1, 3):  # an identity block and a downsampling block
        deleted = nn.Sequential(net.blocks[i].shortcut, nn.ReLU())
        lesioned = nn.Sequential(*net.blocks[:i], deleted, *net.blocks[i + 1:])
        assert net.head(lesioned(net.stem(x))).shape == (2, 10)


@pytest.mark.parametrize("name, kwargs", [
    ("resnet20", {}), ("plain20", {}), ("resnet_cifar", dict(depth=8, width=8, shortcut="B")),
    ("preact_resnet_cifar", dict(depth=8)), ("wide_resnet_cifar", dict(depth=10, widen=2, dropout=0.3)),
    ("resnext_cifar", dict(depth=11, cardinality=4, base_width=4, width=8)),
    ("resnet18", dict(num_classes=7))])
def test_forward_shapes_on_small_gray_images(name, kwargs):
    kwargs.setdefault("num_classes", 10)
    net = models.create(name, in_channels=1, **kwargs)
    out = net(torch.randn(2, 1, 16, 16))
    assert out.shape == (2, kwargs["num_classes"])
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())


# --------------------------------------------------------------------------------------------
# Pre-activation, wide, ResNeXt
# --------------------------------------------------------------------------------------------

def test_preactivation_block_adds_without_a_final_relu():
    net = models.create("preact_resnet_cifar", depth=8).eval()
    assert all(isinstance(b, PreActBlock) for b in net.blocks)
    assert isinstance(net.head[0], nn.BatchNorm2d)
    h = net.stem(torch.randn(2, 3, 16, 16))
    with torch.no_grad():
        y = net.blocks[0](h)
        assert torch.allclose(y, net.blocks[0].residual(h) + h)
    assert (y < 0).any()  # no ReLU after the addition


def test_wide_resnet_widths_and_dropout():
    net = models.create("wide_resnet_cifar", depth=16, widen=4, dropout=0.3)
    assert [b.residual[2].out_channels for b in net.blocks] == [64, 64, 128, 128, 256, 256]
    assert any(isinstance(m, nn.Dropout) and m.p == 0.3 for m in net.blocks[0].residual)
    with torch.device("meta"):
        assert not any(isinstance(m, nn.Dropout) for m in models.create("wrn28_10").modules())


def test_resnext_grouped_convolution_equals_aggregated_separate_paths():
    block = models.create("resnext_cifar", depth=11, cardinality=4, base_width=2, width=8).blocks[0]
    assert isinstance(block, Bottleneck)
    grouped = block.residual[3]
    assert grouped.groups == 4 and grouped.in_channels == 8
    x = torch.randn(1, 8, 6, 6)
    # Xie et al. Fig. 3: C separate 3×3 convolutions on C slices of the channels, concatenated
    paths = [F.conv2d(x[:, 2 * g:2 * g + 2], grouped.weight[2 * g:2 * g + 2], padding=1) for g in range(4)]
    assert torch.allclose(grouped(x), torch.cat(paths, 1), atol=1e-6)


# --------------------------------------------------------------------------------------------
# Stochastic depth
# --------------------------------------------------------------------------------------------

def test_survival_probabilities_decay_linearly_to_p_L():
    p = survival_probs(54, 0.5)
    assert p[0] == pytest.approx(1 - 0.5 / 54) and p[-1] == pytest.approx(0.5)
    assert all(a > b for a, b in zip(p, p[1:]))
    net = models.create("resnet110", survival_prob=0.5)
    assert [b.survival for b in net.blocks] == pytest.approx(p)
    assert all(b.survival == 1.0 for b in models.create("resnet110").blocks)


def test_stochastic_depth_drops_whole_branches_in_training_and_scales_them_at_test():
    torch.manual_seed(0)
    block = BasicBlock(8, 8, survival=0.3)
    calls = []
    block.residual.register_forward_hook(lambda *_: calls.append(1))
    x = torch.rand(2, 8, 4, 4)
    outputs = [block(x) for _ in range(400)]
    dropped = sum(torch.equal(y, x) for y in outputs)
    assert len(calls) == 400 - dropped  # a dropped branch is not computed at all
    assert 0.6 < dropped / 400 < 0.8
    block.eval()
    with torch.no_grad():
        assert torch.allclose(block(x), F.relu(0.3 * block.residual(x) + x))


# --------------------------------------------------------------------------------------------
# Invalid configurations
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, kwargs, rule", [
    ("resnet_cifar", dict(depth=21), "6n\\+2"),
    ("resnet_cifar", dict(depth=2), "6n\\+2"),
    ("resnet_cifar", dict(shortcut="C"), "'A'.*'B'"),
    ("resnet_cifar", dict(shortcut=False), "got False; for the plain net without shortcuts use plain=True"),
    ("resnet_cifar", dict(width=0), "width .*integer ≥ 1, got 0"),
    ("resnet_cifar", dict(depth=20.0), "6n\\+2.*got 20.0"),
    ("resnet_cifar", dict(plain=True, survival_prob=0.5), "shortcuts"),
    ("resnet_cifar", dict(survival_prob=0.0), "\\(0, 1\\]"),
    ("wide_resnet_cifar", dict(depth=26), "6n\\+4"),
    ("wide_resnet_cifar", dict(widen=0), "widening factor k must be an integer ≥ 1, got 0"),
    ("wide_resnet_cifar", dict(widen=2.5), "widening factor k must be an integer ≥ 1, got 2.5"),
    ("wide_resnet_cifar", dict(width=0), "width .*integer ≥ 1"),
    ("preact_resnet_cifar", dict(width=-16), "width .*integer ≥ 1"),
    ("resnext_cifar", dict(cardinality=0), "cardinality C must be an integer ≥ 1, got 0"),
    ("resnext_cifar", dict(base_width=0), "bottleneck width d .*integer ≥ 1"),
    ("preact_resnet_cifar", dict(depth=28), "6n\\+2"),
    ("resnext_cifar", dict(depth=30), "9n\\+2"),
])
def test_invalid_configurations_name_the_rule(name, kwargs, rule):
    with pytest.raises(ValueError, match=rule):
        models.create(name, **kwargs)


def test_other_invalid_blocks_and_depths():
    with pytest.raises(ValueError, match="cardinality.*must divide"):
        Bottleneck(16, 10, 32, groups=4)
    with pytest.raises(ValueError, match="cardinality C \\(groups\\) must be an integer ≥ 1, got 0"):
        Bottleneck(16, 8, 32, groups=0)
    with pytest.raises(ValueError, match="one of"):
        ImageNetResNet(depth=60)
    with pytest.raises(ValueError, match="bottleneck"):
        ImageNetResNet(depth=18, groups=32, width_per_group=4)


def test_option_a_cannot_shrink_channels():
    with pytest.raises(ValueError, match="cannot reduce"):
        ZeroPadShortcut(32, 16, 1)


@pytest.mark.parametrize("name, kwargs, message", [
    ("resnet20", dict(depth=56), "resnet20 is a preset with depth=20; to choose depth yourself use resnet_cifar"),
    ("plain56", dict(plain=False), "plain56 is a preset with plain=True; .* use resnet_cifar"),
    ("resnet50", dict(depth=50), "resnet50 is a preset with depth=50; .* use cnnlib.models.resnet.ImageNetResNet"),
    ("resnext50_32x4d", dict(groups=8, width_per_group=4),
     "groups=32, width_per_group=4; to choose groups and width_per_group yourself"),
])
def test_presets_reject_the_options_they_fix(name, kwargs, message):
    with pytest.raises(TypeError, match=message):
        models.create(name, **kwargs)
    assert meta_params(name, num_classes=7) > 0  # the options a preset leaves open still work
