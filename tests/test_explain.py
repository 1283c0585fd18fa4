"""Grad-CAM against the `grad-cam` package, and recording attention maps."""
from functools import partial

import matplotlib.pyplot as plt
import numpy as np
import pytest
import pytorch_grad_cam  # the dev dependency: a missing package must fail this file, not skip it
import torch
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from cnnlib import explain, models
from cnnlib.models.layers import CBAM, SqueezeExcitation


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    net = models.create("resnet_cifar", depth=8, num_classes=10, attention=partial(CBAM, reduction=4))
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval mode is not the identity
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def _images(n=6, size=32, seed=1):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("layer_index", [-1, 1])
@pytest.mark.parametrize("use_target", [False, True])
def test_grad_cam_equals_the_grad_cam_package(net, layer_index, use_target):
    x = _images()
    layer = net.blocks[layer_index]
    targets = [3, 7, 0, 9, 5, 3] if use_target else None
    ours, used = explain.grad_cam(net, layer, x, target=torch.tensor(targets) if targets else None,
                                  size=x.shape[-2:])
    with pytorch_grad_cam.GradCAM(model=net, target_layers=[layer]) as cam:
        theirs = cam(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets] if targets else None)
    if not use_target:
        assert used.tolist() == net(x).argmax(1).tolist()
    assert ours.shape == theirs.shape == (6, 32, 32)
    assert ours.std() > 0.1                                   # the maps are not degenerate
    np.testing.assert_allclose(ours.numpy(), theirs, atol=1e-4)


def test_raw_grad_cam_is_relu_of_gradient_weighted_activations(net):
    x = _images(3)
    maps, target = explain.grad_cam(net, net.blocks[-1], x, target=4)
    a = net.blocks(net.stem(x)).detach().requires_grad_(True)
    grads, = torch.autograd.grad(net.head(a)[:, 4].sum(), a)
    expected = torch.relu((grads.mean((2, 3), keepdim=True) * a).sum(1))
    torch.testing.assert_close(maps, expected.detach())
    assert maps.shape == (3, 8, 8) and target.tolist() == [4, 4, 4]


def test_grad_cam_restores_the_training_mode_and_rejects_a_foreign_layer(net):
    net.train()
    explain.grad_cam(net, net.blocks[0], _images(2))
    assert net.training
    net.eval()
    with pytest.raises(ValueError, match="did not run"):
        explain.grad_cam(net, torch.nn.Conv2d(3, 3, 1), _images(2))


@pytest.mark.parametrize("layer", ["head", "head[-1]"])
def test_grad_cam_on_a_layer_without_a_feature_map_is_a_clear_error(net, layer):
    with pytest.raises(ValueError, match="convolutional layer whose output is a feature map \\(N, C, H, W\\)"
                                         ".*outputs \\(3, 10\\)"):
        explain.grad_cam(net, eval(f"net.{layer}"), _images(3))


@pytest.mark.parametrize("target,message", [([1, 2], "one index per image \\(3 images\\); got shape \\(2,\\)"),
                                            (12, "must be in 0 … 9.*got 12"),
                                            (-1, "must be in 0 … 9.*got -1"),
                                            ([1, 10, 2], "must be in 0 … 9.*got \\[1, 10, 2\\]"),
                                            (2.0, "integer class indices")])
def test_grad_cam_rejects_targets_that_are_not_one_class_per_image(net, target, message):
    with pytest.raises(ValueError, match=message):
        explain.grad_cam(net, net.blocks[-1], _images(3), target=target)
    maps, used = explain.grad_cam(net, net.blocks[-1], _images(3), target=[1, 9, 0])
    assert maps.shape == (3, 8, 8) and used.tolist() == [1, 9, 0]


def test_capture_records_se_channel_weights_and_cbam_spatial_maps():
    torch.manual_seed(0)
    se_net = models.create("resnet_cifar", depth=8, attention=SqueezeExcitation).eval()
    cbam_net = models.create("resnet_cifar", depth=8, attention=CBAM).eval()
    x = _images(4)
    gates = explain.capture(se_net, x, {f"block{i}": b.residual[-1].excitation for i, b in enumerate(se_net.blocks)})
    assert [tuple(g.shape) for g in gates.values()] == [(4, 16, 1, 1), (4, 32, 1, 1), (4, 64, 1, 1)]
    f = se_net.blocks[0].residual[:-1](se_net.stem(x))
    torch.testing.assert_close(gates["block0"], se_net.blocks[0].residual[-1].excitation(f.mean((2, 3), keepdim=True)))
    maps = explain.capture(cbam_net, x, {"last": cbam_net.blocks[-1].residual[-1].spatial})
    assert maps["last"].shape == (4, 1, 8, 8) and ((maps["last"] > 0) & (maps["last"] < 1)).all()


def test_normalize_and_overlay():
    maps = torch.tensor([[[0.0, 2.0], [1.0, 4.0]]])
    n = explain.normalize_map(maps, (4, 4))
    assert n.shape == (1, 4, 4) and abs(n.min().item()) < 1e-6 and abs(n.max().item() - 1) < 1e-6
    image = torch.rand(3, 4, 4)
    assert np.allclose(explain.overlay(image, n[0], alpha=0.0), image.permute(1, 2, 0).numpy())
    blended = explain.overlay(image[:1], n[0], alpha=0.5)
    assert blended.shape == (4, 4, 3) and 0 <= blended.min() and blended.max() <= 1


def test_plot_overlays_takes_cbam_spatial_maps_with_their_channel_axis():
    images, maps = torch.rand(3, 1, 8, 8), torch.rand(3, 1, 4, 4)   # (B, 1, h, w), as capture records them
    with_channel = explain.plot_overlays(images, maps)
    without = explain.plot_overlays(images, maps[:, 0])
    for a, b in zip(with_channel, without):
        np.testing.assert_array_equal(a.images[0].get_array(), b.images[0].get_array())
    with pytest.raises(ValueError, match="maps must be \\(B, h, w\\) or \\(B, 1, h, w\\)"):
        explain.plot_overlays(images, torch.rand(3, 2, 4, 4))
    plt.close("all")
