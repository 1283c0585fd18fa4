"""Squeeze-and-Excitation and CBAM: the equations, the parameter overhead, the drop-in use."""
from functools import partial

import pytest
import torch
import torch.nn as nn

from cnnlib import count_params, models
from cnnlib.models.layers import CBAM, ChannelAttention, SpatialAttention, SqueezeExcitation


def se_overhead(c: int, r: int) -> int:
    """2C²/r weights (Hu et al. 2018, Eq. 5) plus the biases of the two FC layers."""
    h = max(1, c // r)
    return 2 * c * h + h + c


@pytest.mark.parametrize("c,r", [(64, 16), (256, 16), (48, 4), (16, 16), (8, 16)])
def test_parameter_overhead_matches_the_formula(c, r):
    assert count_params(SqueezeExcitation(c, r)) == se_overhead(c, r)
    assert count_params(ChannelAttention(c, r)) == se_overhead(c, r)          # one shared MLP
    assert count_params(CBAM(c, r)) == se_overhead(c, r) + 2 * 7 * 7 + 1
    assert count_params(CBAM(c, r, kernel_size=3)) == se_overhead(c, r) + 2 * 3 * 3 + 1


def test_squeeze_excitation_follows_equations_2_to_4():
    torch.manual_seed(0)
    se = SqueezeExcitation(32, reduction=8)
    u = torch.randn(3, 32, 5, 7)
    w1, b1 = se.excitation[0].weight.flatten(1), se.excitation[0].bias
    w2, b2 = se.excitation[2].weight.flatten(1), se.excitation[2].bias
    z = u.mean(dim=(2, 3))                                       # squeeze
    s = torch.sigmoid(torch.relu(z @ w1.T + b1) @ w2.T + b2)     # excitation
    torch.testing.assert_close(se(u), u * s[:, :, None, None])   # scale
    assert w1.shape == (4, 32) and w2.shape == (32, 4)


def test_cbam_is_channel_then_spatial_attention_with_a_shared_mlp():
    torch.manual_seed(0)
    cbam = CBAM(24, reduction=4)
    f = torch.randn(2, 24, 6, 6)
    mlp = cbam.channel.mlp
    mc = torch.sigmoid(mlp(f.mean((2, 3), keepdim=True)) + mlp(f.amax((2, 3), keepdim=True)))
    f1 = f * mc
    pooled = torch.cat([f1.mean(1, keepdim=True), f1.amax(1, keepdim=True)], 1)
    ms = torch.sigmoid(cbam.spatial.conv(pooled))
    torch.testing.assert_close(cbam(f), f1 * ms)
    assert cbam.channel(f).shape == (2, 24, 1, 1) and cbam.spatial(f).shape == (2, 1, 6, 6)
    assert cbam.spatial.conv.kernel_size == (7, 7) and cbam.spatial.conv.in_channels == 2


def test_attention_maps_are_in_the_unit_interval_and_modules_keep_the_shape():
    x = torch.randn(2, 16, 9, 9) * 50
    for m in (SqueezeExcitation(16), CBAM(16)):
        assert m(x).shape == x.shape
    for gate in (SqueezeExcitation(16).excitation(x.mean((2, 3), keepdim=True)), ChannelAttention(16)(x),
                 SpatialAttention()(x)):
        assert ((gate >= 0) & (gate <= 1)).all()


def test_invalid_settings_are_clear_errors():
    with pytest.raises(ValueError, match="reduction ratio r must be an integer of at least 1"):
        SqueezeExcitation(16, reduction=0)
    with pytest.raises(ValueError, match="reduction ratio r must be an integer.*got 1.5"):
        SqueezeExcitation(16, 1.5)
    with pytest.raises(ValueError, match="reduction ratio r must be an integer.*got 2.0"):
        CBAM(16, reduction=2.0)
    with pytest.raises(ValueError, match="odd"):
        SpatialAttention(kernel_size=4)


# The papers' parameter counts (Woo et al. 2018, Table 4; Hu et al. 2018, Table 2), in millions.
PAPER_PARAMS = {"resnet18": (11.69, 11.78, 11.78), "resnet34": (21.80, 21.96, 21.96),
                "resnet50": (25.56, 28.09, 28.09), "resnet101": (44.55, 49.33, 49.33),
                "resnext50_32x4d": (25.03, 27.56, 27.56)}


@pytest.mark.parametrize("name", PAPER_PARAMS)
def test_imagenet_resnets_with_se_and_cbam_have_the_papers_parameter_counts(name):
    with torch.device("meta"):
        counts = [count_params(models.create(name, attention=a)) for a in (None, SqueezeExcitation, CBAM)]
    assert [round(c / 1e6, 2) for c in counts] == list(PAPER_PARAMS[name])


def test_drop_in_to_the_cifar_resnet_adds_one_module_per_block():
    plain = models.create("resnet_cifar", depth=20)
    se = models.create("resnet_cifar", depth=20, attention=partial(SqueezeExcitation, reduction=16))
    cbam = models.create("resnet_cifar", depth=20, attention=partial(CBAM, reduction=16))
    widths = [blk.residual[-1].excitation[0].in_channels for blk in se.blocks]
    assert widths == [16] * 3 + [32] * 3 + [64] * 3
    assert count_params(se) - count_params(plain) == sum(se_overhead(c, 16) for c in widths)
    assert count_params(cbam) - count_params(plain) == sum(se_overhead(c, 16) + 99 for c in widths)
    x = torch.randn(2, 3, 32, 32)
    for net in (se, cbam):
        assert isinstance(net.blocks[0].residual[-1], (SqueezeExcitation, CBAM))
        assert net(x).shape == (2, 10)
