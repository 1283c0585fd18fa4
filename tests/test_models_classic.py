"""Lecture 01's networks: exact parameter counts against the papers and torchvision, shapes, layers."""
import pytest
import torch
import torch.nn as nn
import torchvision

from cnnlib import count_params, models
from cnnlib.models.classic import AlexNet, ConvSpec
from cnnlib.models.layers import LocalResponseNorm


def _on_meta(build):
    with torch.device("meta"):
        return build()


@pytest.mark.parametrize("ours, theirs", [
    (dict(name="alexnet", variant="torchvision"), torchvision.models.alexnet),
    *[(dict(name=f"vgg{d}"), getattr(torchvision.models, f"vgg{d}")) for d in (11, 13, 16, 19)],
    *[(dict(name=f"vgg{d}", batch_norm=True), getattr(torchvision.models, f"vgg{d}_bn")) for d in (11, 16)],
], ids=["alexnet", "vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg16_bn"])
def test_parameter_count_equals_torchvision(ours, theirs):
    kwargs = dict(ours)
    mine = _on_meta(lambda: models.create(kwargs.pop("name"), **kwargs))
    reference = _on_meta(lambda: theirs(weights=None))
    assert count_params(mine) == count_params(reference)


@pytest.mark.parametrize("aux", [False, True])
def test_googlenet_torchvision_variant_equals_torchvision(aux):
    mine = _on_meta(lambda: models.create("googlenet", variant="torchvision", aux_logits=aux))
    reference = _on_meta(lambda: torchvision.models.googlenet(weights=None, aux_logits=aux, init_weights=False))
    assert count_params(mine) == count_params(reference) == (13_004_888 if aux else 6_624_904)


def test_paper_faithful_counts():
    # LeNet-5 with full C3 connections; AlexNet of Krizhevsky et al. (two GPUs, "60 million");
    # GoogLeNet of Table 1 without the auxiliary heads ("12x fewer than AlexNet", ~7M).
    assert count_params(models.create("lenet5")) == 61_706
    assert count_params(_on_meta(lambda: models.create("alexnet", variant="paper"))) == 60_965_224
    googlenet = _on_meta(lambda: models.create("googlenet", variant="paper", aux_logits=False))
    assert count_params(googlenet) == 6_998_552


def test_two_gpu_groups_halve_those_layers():
    paper = _on_meta(lambda: models.create("alexnet", variant="paper"))
    conv2 = [m for m in paper.features if isinstance(m, nn.Conv2d)][1]
    assert conv2.groups == 2 and conv2.weight.shape == (256, 48, 5, 5)


@pytest.mark.parametrize("name, kwargs, shape", [
    ("lenet5", dict(), (2, 1, 32, 32)),
    ("alexnet", dict(small=True), (2, 3, 32, 32)),
    ("zfnet", dict(small=True), (2, 3, 32, 32)),
    ("vgg11", dict(small=True), (2, 3, 32, 32)),
    ("vgg16", dict(small=True, batch_norm=True), (2, 1, 32, 32)),
    ("googlenet", dict(small=True), (2, 3, 32, 32)),
])
def test_small_variants_classify_32x32_images(name, kwargs, shape):
    net = models.create(name, num_classes=7, in_channels=shape[1], **kwargs).eval()
    assert net(torch.randn(shape)).shape == (2, 7)


def test_full_size_alexnet_and_googlenet_take_224_images():
    for net in (models.create("alexnet"), models.create("zfnet")):
        assert net.eval()(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


def test_googlenet_returns_auxiliary_logits_only_in_training():
    net = models.create("googlenet", variant="torchvision", num_classes=5)
    x = torch.randn(2, 3, 96, 96)
    out = net.train()(x)
    assert isinstance(out, tuple) and [o.shape for o in out] == [(2, 5)] * 3
    assert net.eval()(x).shape == (2, 5)


def test_lrn_matches_torch_with_alpha_times_n():
    a = torch.randn(2, 17, 5, 5) * 10
    ours = LocalResponseNorm(n=5, alpha=1e-4, beta=0.75, k=2.0)(a)
    reference = nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)(a)
    torch.testing.assert_close(ours, reference)
    # ... and by the paper's formula for one channel in the middle
    i = 8
    expected = a[:, i] / (2.0 + 1e-4 * (a[:, i - 2:i + 3] ** 2).sum(1)) ** 0.75
    torch.testing.assert_close(ours[:, i], expected)


@pytest.mark.parametrize("n", [5, 4])
def test_lrn_gradient_is_exact(n):
    """The closed-form backward equals autograd of the formula (odd and even windows)."""
    a = (torch.randn(2, 9, 3, 3, dtype=torch.double) * 10).requires_grad_()
    lrn = LocalResponseNorm(n=n, alpha=1e-2)
    assert torch.autograd.gradcheck(lrn, (a,))
    half = n // 2
    padded = nn.functional.pad(a * a, (0, 0, 0, 0, half, n - 1 - half))
    formula = a / (2.0 + 1e-2 * padded.unfold(1, n, 1).sum(-1)) ** 0.75
    g = torch.randn_like(a)
    torch.testing.assert_close(torch.autograd.grad(lrn(a), a, g)[0], torch.autograd.grad(formula, a, g)[0])


def test_lrn_works_under_torch_func():
    from torch.func import functional_call, grad, vmap

    net = nn.Sequential(nn.Conv2d(1, 6, 3), LocalResponseNorm(), nn.Flatten(), nn.Linear(6 * 4 * 4, 3))
    x, y = torch.randn(4, 1, 6, 6), torch.tensor([0, 1, 2, 0])
    params = dict(net.named_parameters())

    def loss(p, xb, yb):
        return nn.functional.cross_entropy(functional_call(net, p, (xb,)), yb)

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))(params, x.unsqueeze(1), y.unsqueeze(1))
    net.zero_grad()
    loss(params, x[:1], y[:1]).backward()
    torch.testing.assert_close(per_sample["0.weight"][0], net[0].weight.grad)


def test_bad_names_and_configurations_raise_clear_errors():
    with pytest.raises(ValueError, match="known models: .*vgg16"):
        models.create("vgg17")
    with pytest.raises(ValueError, match="variant"):
        models.create("alexnet", variant="caffe")
    with pytest.raises(ValueError, match="groups=2 must divide"):
        AlexNet([ConvSpec(5, 3, groups=2)])
    with pytest.raises(ValueError, match="VGG depth"):
        from cnnlib.models.classic import VGG
        VGG(depth=12)


def test_eval_mode_restores_the_mode_even_after_an_error():
    from cnnlib.models import eval_mode

    net = nn.Sequential(nn.Linear(2, 2), nn.Dropout())
    for training in (True, False):
        net.train(training)
        with pytest.raises(RuntimeError), eval_mode(net):
            assert not net.training and not net[1].training
            raise RuntimeError("inside")
        assert net.training == training and net[1].training == training
