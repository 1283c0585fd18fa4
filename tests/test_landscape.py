"""Correctness of cnnlib.landscape: directions, the two evaluation strategies, surfaces."""
import math
import re

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import cnnlib
from cnnlib import landscape as L
from cnnlib import models


def _small_resnet(seed=0, **kw):
    torch.manual_seed(seed)
    net = models.create("resnet_cifar", depth=8, width=4, in_channels=1, num_classes=10, **kw)
    L.recompute_bn(net, torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(seed)))
    return net.eval()


def _toy_data(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


# --------------------------------------------------------------------------------------------
# Directions
# --------------------------------------------------------------------------------------------


def test_filter_normalized_direction_has_the_weights_norm_filter_by_filter():
    net = _small_resnet()
    theta = L.weights(net)
    d = L.random_direction(net, norm="filter", bias_bn="zero", seed=3)
    assert d.keys() == theta.keys()
    checked = 0
    for k, w in theta.items():
        if w.ndim >= 2:  # conv kernels (out, in, k, k) and the linear layer (out, in)
            for j in range(w.shape[0]):
                torch.testing.assert_close(d[k][j].norm(), w[j].norm(), rtol=1e-5, atol=1e-7)
                checked += 1
        else:  # biases and BatchNorm's gamma/beta stay unperturbed
            assert torch.count_nonzero(d[k]) == 0
    assert checked > 50
    # the same seed gives the same direction; another seed another one
    torch.testing.assert_close(L.random_direction(net, seed=3), d)
    assert not torch.equal(L.random_direction(net, seed=4)["head.2.weight"], d["head.2.weight"])


def test_layer_normalization_and_including_biases():
    net = _small_resnet()
    theta = L.weights(net)
    d = L.random_direction(net, norm="layer", bias_bn="include", seed=1)
    for k, w in theta.items():
        torch.testing.assert_close(d[k].norm(), w.norm(), rtol=1e-5, atol=1e-6)
    raw = {k: torch.randn_like(w) for k, w in theta.items()}
    same = L.normalize_direction(raw, theta, norm="none", bias_bn="include")
    for k in raw:
        torch.testing.assert_close(same[k], raw[k])
    with pytest.raises(ValueError, match="norm must be one of"):
        L.normalize_direction(raw, theta, norm="batch")
    with pytest.raises(ValueError, match="bias_bn"):
        L.normalize_direction(raw, theta, bias_bn="ignore")


def test_plane_through_three_points_is_orthonormal_and_locates_them():
    a, b, c = (_small_resnet(s) for s in (0, 1, 2))
    pl = L.plane(a, b, c)
    u, v = pl.directions
    assert L.norm(u) == pytest.approx(1) and L.norm(v) == pytest.approx(1)
    assert abs(L.dot(u, v)) < 1e-6
    ab = L.norm(L.direction_between(a, b))
    np.testing.assert_allclose(pl.anchors[0], [0, 0], atol=1e-6)
    np.testing.assert_allclose(pl.anchors[1], [ab, 0], rtol=1e-6, atol=1e-6)
    for p in (a, b, c):
        assert pl.coordinates(p)[2] < 1e-4 * ab  # on the plane
    # a point off the plane: its distance is the length of the orthogonal component
    w = L.weights(a)
    g = torch.Generator().manual_seed(9)
    off = {k: torch.randn(t.shape, generator=g) for k, t in w.items()}
    off = {k: off[k] - L.dot(off, u) * u[k] - L.dot(off, v) * v[k] for k in off}
    point = L.combine(L.combine(w, [u, v], [0.3, -0.2]), [off], [1.0])
    x, y, dist = pl.coordinates(point)
    assert (x, y) == pytest.approx((0.3, -0.2), abs=1e-4)
    assert dist == pytest.approx(L.norm(off), rel=1e-4)
    raw = L.plane(a, b, c, orthonormal=False)
    np.testing.assert_allclose(raw.anchors, [[0, 0], [1, 0], [0, 1]], atol=1e-5)
    with pytest.raises(ValueError, match="one line"):
        L.plane(a, b, L.combine(L.weights(a), [L.direction_between(a, b)], [2.0]))


def test_pca_of_a_planar_trajectory_finds_its_plane():
    torch.manual_seed(0)
    center = {"w": torch.randn(30, 4), "b": torch.randn(30)}
    u = {k: torch.randn_like(t) for k, t in center.items()}
    v = {k: torch.randn_like(t) for k, t in center.items()}
    ts = np.linspace(0, 1, 12)
    path = [L.combine(center, [u, v], [3 * (1 - t), 2 * math.sin(5 * t)]) for t in ts]
    pca = L.pca_directions(path)
    assert pca.explained_variance.sum() == pytest.approx(1, abs=1e-6)
    assert pca.explained_variance[0] >= pca.explained_variance[1] > 0
    assert np.all(pca.off_plane < 1e-5 * pca.distance.max())
    assert pca.coords.shape == (12, 2) and np.allclose(pca.coords[-1], 0, atol=1e-6)
    # a wiggle out of the plane shows up as off-plane distance of that checkpoint
    noise = {k: 0.05 * torch.randn_like(t) for k, t in center.items()}
    path[5] = L.combine(path[5], [noise], [1.0])
    pca2 = L.pca_directions(path)
    assert pca2.off_plane.argmax() == 5
    assert 0.5 * L.norm(noise) < pca2.off_plane[5] <= L.norm(noise) + 1e-9
    x, y, dist = pca2.plane.coordinates(path[3])
    np.testing.assert_allclose([x, y], pca2.coords[3], atol=1e-4)


# --------------------------------------------------------------------------------------------
# BatchNorm statistics
# --------------------------------------------------------------------------------------------


def test_recompute_bn_gives_the_exact_statistics_and_restores_modes():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.Dropout(0.5), nn.ReLU())
    net.eval()
    x = torch.randn(70, 1, 6, 6)
    L.recompute_bn(net, x, batch_size=16)  # five batches, the last one smaller
    feats = net[0](x).detach()
    torch.testing.assert_close(net[1].running_mean, feats.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    batch_vars = torch.stack([feats[i:i + 16].var((0, 2, 3)) * min(16, 70 - i) / 70
                              for i in range(0, 70, 16)]).sum(0)
    torch.testing.assert_close(net[1].running_var, batch_vars, rtol=1e-4, atol=1e-5)
    assert not net.training and not net[1].training and not net[2].training
    assert net[1].momentum == 0.1


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def test_batched_vmap_evaluation_equals_the_per_point_loop_with_batchnorm():
    net = _small_resnet()
    data = _toy_data()
    d1, d2 = L.random_direction(net, seed=1), L.random_direction(net, seed=2)
    a = L.grid(1.0, 5)
    loop = L.surface(net, data, [d1, d2], a, a, strategy="loop", progress=False)
    # small chunks: several vmap calls, data in two batches
    vm = L.surface(net, data, [d1, d2], a, a, strategy="vmap", memory_budget=200_000,
                   batch_size=25, progress=False)
    assert loop.meta["strategy"] == "loop" and vm.meta["strategy"] == "vmap"
    np.testing.assert_allclose(vm.loss, loop.loss, rtol=1e-5)
    np.testing.assert_array_equal(vm.acc, loop.acc)
    # with BatchNorm statistics recomputed at every point
    bx = torch.randn(48, 1, 8, 8)
    loop_r = L.surface(net, data, [d1, d2], a[:3], a[:3], bn="recompute", bn_data=bx,
                       strategy="loop", progress=False)
    vm_r = L.surface(net, data, [d1, d2], a[:3], a[:3], bn="recompute", bn_data=bx,
                     strategy="vmap", progress=False)
    np.testing.assert_allclose(vm_r.loss, loop_r.loss, rtol=1e-5)
    assert not np.allclose(loop_r.loss, loop.loss[:3, :3])  # recomputing changes the numbers


def test_the_centre_of_a_surface_is_the_models_own_loss():
    net = _small_resnet()
    x, y = _toy_data()
    d = L.random_direction(net, seed=0)
    s = L.surface(net, (x, y), d, [-0.5, 0.0, 0.5], progress=False)
    with torch.no_grad():
        out = net(x)
    assert s.center_loss == pytest.approx(F.cross_entropy(out, y).item(), rel=1e-5)
    assert s.acc[1] == pytest.approx((out.argmax(1) == y).float().mean().item())
    assert net.training is False  # the model itself is untouched


class Quadratic(nn.Module):
    """f(W) = ½ (w − w₀)ᵀ A (w − w₀) with w = vec(W), returned for every sample of the batch."""

    def __init__(self, A, w0, shape):
        super().__init__()
        self.W = nn.Parameter(torch.randn(shape, dtype=torch.float64))
        self.register_buffer("A", A)
        self.register_buffer("w0", w0)

    def forward(self, x):
        r = self.W.flatten() - self.w0
        return (0.5 * r @ self.A @ r).expand(len(x))


def test_surface_of_an_analytic_quadratic_equals_the_formula():
    torch.manual_seed(0)
    n, shape = 12, (3, 4)
    M = torch.randn(n, n, dtype=torch.float64)
    A = M @ M.T + torch.eye(n, dtype=torch.float64)
    model = Quadratic(A, torch.randn(n, dtype=torch.float64), shape)
    data = (torch.zeros(5, 1, dtype=torch.float64), torch.zeros(5, dtype=torch.float64))
    mean = lambda out, target: out.mean()
    d1 = L.random_direction(model, norm="filter", seed=1)
    d2 = L.random_direction(model, norm="layer", seed=2)
    alphas, betas = L.grid(2.0, 7), np.linspace(-1, 1, 5)
    for strategy in ("loop", "vmap"):
        s = L.surface(model, data, [d1, d2], alphas, betas, loss_fn=mean, strategy=strategy,
                      progress=False)
        w = model.W.detach().flatten() - model.w0
        u, v = d1["W"].flatten(), d2["W"].flatten()
        for i, a in enumerate(alphas):
            for j, b in enumerate(betas):
                r = w + a * u + b * v
                assert s.loss[i, j] == pytest.approx(float(0.5 * r @ A @ r), rel=1e-9)
        assert np.isnan(s.acc).all()  # not a classifier: no accuracy
    # the curvature of the slice at the centre: u'Au + v'Av (exact for a quadratic)
    u, v = d1["W"].flatten(), d2["W"].flatten()
    assert s.curvature() == pytest.approx(float(u @ A @ u + v @ A @ v), rel=1e-6)
    line = L.surface(model, data, d1, [-0.5, 0.0, 0.25, 0.75], loss_fn=mean, progress=False)
    assert line.curvature() == pytest.approx(float(u @ A @ u), rel=1e-6)
    # along several random directions at once: d'Ad for each of them
    kappa = L.curvatures(model, data, n_directions=4, step=0.3, seed=7, loss_fn=mean)
    for k, value in enumerate(kappa):
        d = L.random_direction(model, seed=7 + k)["W"].flatten()
        assert value == pytest.approx(float(d @ A @ d), rel=1e-6)


def _relu_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def test_filter_normalization_removes_the_scale_invariance_artifact():
    """Multiplying a ReLU layer by c and its successor by 1/c computes the same function, but an
    unnormalized random direction sees a sharper or flatter minimum; a filter-normalized one
    sees exactly the same surface (Li et al. 2018, Sec. 4)."""
    net = _relu_net()
    scaled = _relu_net()
    with torch.no_grad():
        scaled[1].weight.mul_(10)
        scaled[1].bias.mul_(10)
        scaled[3].weight.div_(10)
    data = _toy_data(60, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(scaled(data[0]), net(data[0]), rtol=1e-5, atol=1e-5)
    a = L.grid(1.0, 9)
    surf = {}
    for norm in ("filter", "none"):
        for name, m in (("original", net), ("rescaled", scaled)):
            surf[norm, name] = L.surface(m, data, L.random_direction(m, norm=norm, seed=5), a,
                                         progress=False)
    np.testing.assert_allclose(surf["filter", "rescaled"].loss, surf["filter", "original"].loss,
                               rtol=1e-5)
    gap = np.abs(surf["none", "rescaled"].loss - surf["none", "original"].loss).max()
    assert gap > 0.1 * surf["none", "original"].loss.max()


def test_interpolating_two_models_with_their_statistics_reaches_both():
    a, b = _small_resnet(0), _small_resnet(1)
    x, y = _toy_data()
    d = L.direction_between(a, b, buffers=True)
    assert any("running_var" in k for k in d)
    s = L.surface(a, (x, y), d, [0.0, 0.5, 1.0], progress=False)
    for model, value in ((a, s.loss[0]), (b, s.loss[2])):
        assert value == pytest.approx(cnnlib.evaluate(model, (x, y))["loss"], rel=1e-5)


def test_estimate_counts_flops_and_fits_the_chunk_to_the_budget():
    net = _small_resnet()
    x, y = _toy_data()
    est = L.estimate(net, (x, y), 100, strategy="vmap", memory_budget=10 ** 9, time_it=False)
    assert est.flops_per_point == cnnlib.flops(net, (1, 1, 8, 8)) * len(x)
    assert est.chunk == 100
    small = L.estimate(net, (x, y), 100, strategy="vmap", memory_budget=3 * est.bytes_per_point)
    assert small.chunk == 3 and small.seconds > 0
    loop = L.estimate(net, (x, y), 100, strategy="loop")
    assert loop.chunk == 1 and "100 points × 40 images" in str(loop)
    assert L.estimate(net, (x, y), 4, strategy="auto", time_it=False).strategy == "loop"
    with pytest.raises(ValueError, match="strategy must be one of"):
        L.estimate(net, (x, y), 4, strategy="fast")


def test_data_on_another_device_or_mismatched_shapes_are_clear_errors():
    net = _small_resnet()
    x, y = _toy_data()
    with pytest.raises(ValueError, match="needs 2 direction"):
        L.surface(net, (x, y), [L.random_direction(net)], [0, 1], [0, 1])
    with pytest.raises(ValueError, match="bn must be"):
        L.surface(net, (x, y), L.random_direction(net), [0, 1], bn="freeze")
    bad = {"head.2.weight": torch.zeros(3, 3)}
    with pytest.raises(ValueError, match="shape"):
        L.surface(net, (x, y), bad, [0, 1])


# --------------------------------------------------------------------------------------------
# Results: save, load, plot, cache
# --------------------------------------------------------------------------------------------


def test_surface_saves_loads_and_plots(tmp_path):
    import matplotlib.pyplot as plt

    net = _small_resnet()
    data = _toy_data()
    d1, d2 = L.random_direction(net, seed=1), L.random_direction(net, seed=2)
    s2 = L.surface(net, data, [d1, d2], L.grid(1, 5), L.grid(0.5, 3), progress=False, label="r8")
    assert s2.loss.shape == (5, 3) and s2.ndim == 2
    back = L.Surface.load(s2.save(tmp_path / "s.pt"))
    np.testing.assert_array_equal(back.loss, s2.loss)
    np.testing.assert_array_equal(back.betas, s2.betas)
    assert back.meta["label"] == "r8" and back.meta["images"] == 40
    for kind in ("contour", "filled", "surface"):
        assert s2.plot(kind, log=True) is not None
    s1 = L.surface(net, data, d1, L.grid(1, 5), progress=False)
    assert s1.plot().get_xlabel() == "α"
    with pytest.raises(ValueError, match="can be drawn as"):
        s1.plot("contour")
    fig = L.plot_surfaces({"a": s2, "b": back}, kind="filled", log=True)
    assert len(fig.axes) == 3  # two panels and one shared colour bar
    plt.close("all")


def test_cached_surface_is_computed_once(monkeypatch):
    net = _small_resnet()
    data = _toy_data()
    d = L.random_direction(net, seed=11)
    first = L.surface(net, data, d, L.grid(1, 5), cache=True, progress=False)

    def fail(*args, **kwargs):
        raise AssertionError("recomputed a cached surface")

    monkeypatch.setattr(L, "evaluate_points", fail)
    again = L.surface(net, data, L.random_direction(net, seed=11), L.grid(1, 5), cache=True,
                      progress=False)
    np.testing.assert_array_equal(again.loss, first.loss)
    with pytest.raises(AssertionError, match="recomputed"):  # another direction is another key
        L.surface(net, data, L.random_direction(net, seed=12), L.grid(1, 5), cache=True,
                  progress=False)


def test_rescaling_convolutions_before_batchnorm_keeps_the_function_not_the_plot():
    net = _small_resnet()
    big = L.rescaled_copy(net, 10.0)
    x, y = _toy_data()
    with torch.no_grad():
        torch.testing.assert_close(big(x), net(x), rtol=1e-3, atol=1e-4)
    assert torch.allclose(big.stem[0].weight, 10 * net.stem[0].weight)
    same = [L.random_surface(m, (x, y), resolution=7, dims=1, seed=3) for m in (net, big)]
    np.testing.assert_allclose(same[1].loss, same[0].loss, rtol=1e-3)
    raw = [L.random_surface(m, (x, y), resolution=7, dims=1, seed=3, norm="none")
           for m in (net, big)]
    # an unnormalized unit step barely moves the 10x larger weights: a flatter-looking minimum
    assert (raw[1].loss - raw[1].center_loss).max() < 0.2 * (raw[0].loss - raw[0].center_loss).max()
    with pytest.raises(ValueError, match="positive"):
        L.rescaled_copy(net, -1.0)


def test_the_cache_refuses_custom_loss_functions_it_cannot_tell_apart():
    net = _small_resnet()
    data = _toy_data()
    d = L.random_direction(net, seed=21)
    g = L.grid(1, 5)
    ce = L.surface(net, data, d, g, cache=True, progress=False)
    with pytest.raises(ValueError, match="cache=True works with the default cross-entropy only"):
        L.surface(net, data, d, g, cache=True, progress=False,
                  loss_fn=lambda out, y: 2 * F.cross_entropy(out, y))
    double = L.surface(net, data, d, g, progress=False, loss_fn=lambda out, y: 2 * F.cross_entropy(out, y))
    np.testing.assert_allclose(double.loss, 2 * ce.loss, rtol=1e-6)


def test_surface_states_its_cost_before_a_run_and_nothing_for_a_cached_one(capsys):
    net = _small_resnet()
    data = _toy_data()
    d = L.random_direction(net, seed=22)
    L.surface(net, data, d, L.grid(1, 5), cache=True, progress=False, announce=True, label="r8")
    out = capsys.readouterr().out
    assert out.startswith("r8: 5 points × 40 images") and "GFLOP" in out
    assert re.search(r"≈ \d+\.\d s", out), out  # the estimated seconds, not only the FLOPs
    L.surface(net, data, d, L.grid(1, 5), cache=True, progress=False, announce=True, label="r8")
    assert capsys.readouterr().out == ""
    L.surface(net, data, d, L.grid(1, 3), progress=False)
    assert capsys.readouterr().out == ""  # announce follows progress by default


def test_wrong_inputs_are_clear_errors():
    net = _small_resnet()
    x, y = _toy_data()
    d = L.random_direction(net, seed=1)
    with pytest.raises(ValueError, match=r"\(inputs, targets\) pair or an ImageData"):
        L.surface(net, x, d, L.grid(1, 3))
    s = L.surface(net, (x, y), [d, L.random_direction(net, seed=2)], L.grid(1, 3), L.grid(1, 3),
                  progress=False)
    with pytest.raises(ValueError, match=r"metric must be one of \('loss', 'acc', 'error'\)"):
        s.plot(metric="accuracy")
    with pytest.raises(ValueError, match="all the same point"):
        L.pca_directions([net, net, net])


def test_colour_bar_ticks_fall_on_round_values():
    import matplotlib.pyplot as plt

    a = np.linspace(-1, 1, 7)
    A, B = np.meshgrid(a, a, indexing="ij")
    z = -0.955 + (2.1 + 0.955) * (A ** 2 + B ** 2) / 2  # log10 loss from -0.955 to 2.1
    s = L.Surface(a, a, 10 ** z, np.zeros_like(z))
    for kind in ("filled", "contour"):
        ax = s.plot(kind, log=True)
        ticks = ax.figure.axes[-1].get_yticks()  # the colour bar
        assert len(ticks) >= 3
        np.testing.assert_allclose(ticks, np.round(ticks, 2), atol=1e-9)
        step = np.diff(ticks)
        np.testing.assert_allclose(step, step[0])
    plt.close("all")
