"""Hessian tools (cnnlib/landscape/curvature.py) against what is known exactly: a quadratic whose
Hessian we choose, the dense Hessian of a small network (torch.autograd.functional.hessian), and
the peer package PyHessian on the same model and batch."""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import cnnlib
from cnnlib import landscape as L


class Quadratic(nn.Module):
    """Outputs its parameter p for every input; with ``loss_fn`` below the loss is ½ pᵀAp."""

    def __init__(self, n):
        super().__init__()
        self.p = nn.Parameter(torch.randn(n, dtype=torch.float64))

    def forward(self, x):
        return self.p.expand(len(x), -1)


SPECTRUM = np.array([9.0, 4.0, 2.5, 1.0, 0.5, 0.0, -0.3, -1.5])


@pytest.fixture(scope="module")
def quadratic():
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64))
    a = q @ torch.diag(torch.tensor(SPECTRUM)) @ q.T
    loss = lambda out, y: 0.5 * ((out @ a) * out).sum(1).mean()  # noqa: E731
    x, y = torch.zeros(6, 1, dtype=torch.float64), torch.zeros(6, dtype=torch.long)
    return L.hessian(Quadratic(8), (x, y), loss_fn=loss, batch_size=4), a


def test_the_product_is_the_chosen_matrix(quadratic):
    H, a = quadratic
    torch.testing.assert_close(H.dense(), a)  # two batches of 4 and 2, weighted to the mean
    p = H.model.p.detach()
    assert H.loss() == pytest.approx(float(0.5 * p @ a @ p))
    assert H.unflatten(H.theta)["p"].shape == (8,)


def test_lanczos_finds_both_ends_of_a_known_spectrum(quadratic):
    H, _ = quadratic
    np.testing.assert_allclose(L.eigenvalues(H, k=3), SPECTRUM[:3], atol=1e-8)
    np.testing.assert_allclose(L.eigenvalues(H, k=2, which="SA"), SPECTRUM[-2:], atol=1e-8)
    r = L.eigen_ratio(H, steps=8)  # 8 Lanczos steps span the space: exact
    assert r.max == pytest.approx(9.0) and r.min == pytest.approx(-1.5) and r.ratio == pytest.approx(1.5 / 9)


def test_power_iteration_with_deflation_finds_the_largest_magnitudes(quadratic):
    H, a = quadratic
    values, vectors = L.power_iteration(H, k=2, iterations=500, tol=1e-12)
    np.testing.assert_allclose(values, [9.0, 4.0], rtol=1e-6)
    for value, v in zip(values, vectors):
        torch.testing.assert_close(a @ v, value * v, atol=1e-5, rtol=0)


def test_hutchinson_is_unbiased_and_lanczos_quadrature_is_exact_on_a_small_space(quadratic):
    H, _ = quadratic
    mean, se = L.trace(H, samples=400, seed=1)
    assert abs(mean - SPECTRUM.sum()) < 3 * se and se < 1.0
    density = L.spectral_density(H, steps=8, vectors=3)  # 8 steps span the whole 8-D space
    for nodes, weights in zip(density.nodes, density.weights):
        np.testing.assert_allclose(np.sort(nodes), np.sort(SPECTRUM), atol=1e-8)
        assert weights.sum() == pytest.approx(1.0)
    grid = np.linspace(-5, 14, 4001)
    assert np.trapezoid(density.at(grid, sigma=0.1), grid) == pytest.approx(1.0, abs=1e-6)
    assert density.moment(1) * density.dim == pytest.approx(SPECTRUM.sum(), abs=1.5)  # SLQ's own trace


# -------------------------------------------------------------------- a real network

class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 * 4 * 4, 10)

    def forward(self, x):
        return self.fc(F.max_pool2d(F.relu(self.bn(self.conv(x))), 2).flatten(1))


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    data = cnnlib.load("digits")
    net = SmallNet()
    cnnlib.fit(net, data, epochs=2, lr=0.05, batch_size=64, progress=False, cache=False)
    net.zero_grad(set_to_none=True)
    x, y = data.x_train[:200], data.y_train[:200]
    net.eval()
    params = dict(net.named_parameters())
    names = list(params)
    sizes = [p.numel() for p in params.values()]

    def loss_of(flat):
        tensors = {n: t.view(params[n].shape) for n, t in zip(names, flat.split(sizes))}
        return F.cross_entropy(torch.func.functional_call(net, {**dict(net.named_buffers()), **tensors}, (x,)), y)

    flat = torch.cat([p.detach().reshape(-1) for p in params.values()])
    dense = torch.autograd.functional.hessian(loss_of, flat)
    return net, (x, y), dense


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_both_products_equal_the_dense_hessian(small, mode):
    net, data, dense = small
    H = L.hessian(net, data, batch_size=64, mode=mode)
    assert H.dim == dense.shape[0] == 3 * 9 + 3 + 3 + 3 + 48 * 10 + 10
    v = torch.randn(H.dim)
    torch.testing.assert_close(H(v), dense @ v, atol=1e-5, rtol=1e-4)


def test_a_network_hessian_equals_the_dense_one(small):
    net, data, dense = small
    H = L.hessian(net, data, batch_size=64)
    exact = np.linalg.eigvalsh(dense.double().numpy())[::-1]
    np.testing.assert_allclose(L.eigenvalues(H, k=3, tol=1e-6), exact[:3], rtol=1e-4)
    r = L.eigen_ratio(H, steps=60)
    assert r.max == pytest.approx(exact[0], rel=1e-6) and r.min == pytest.approx(exact[-1], rel=1e-3)
    short = L.eigen_ratio(H, steps=15)  # what the lecture uses: the ends converge first
    assert short.max == pytest.approx(exact[0], rel=1e-3) and short.min == pytest.approx(exact[-1], rel=0.1)
    mean, se = L.trace(H, samples=200)
    assert abs(mean - float(dense.trace())) < 3 * se
    assert net.training is False and all(p.grad is None for p in net.parameters())  # nothing left behind


def test_the_model_is_used_in_eval_mode_and_left_in_its_mode(small):
    net, data, dense = small
    net.train()
    H = L.hessian(net, data)
    v = torch.randn(H.dim)
    torch.testing.assert_close(H(v), dense @ v, atol=1e-5, rtol=1e-4)  # running statistics, not the batch's
    assert net.training
    net.eval()


@pytest.mark.filterwarnings(r"ignore:Using backward\(\) with create_graph=True")
def test_agrees_with_pyhessian_on_the_same_model_and_batch(small):
    pyhessian = pytest.importorskip("pyhessian")
    net, (x, y), dense = small
    theirs = pyhessian.hessian(net, nn.CrossEntropyLoss(), data=(x, y), cuda=False)
    top, _ = theirs.eigenvalues(top_n=2, maxIter=200, tol=1e-6)
    ours = L.eigenvalues(L.hessian(net, (x, y)), k=2, tol=1e-6)
    np.testing.assert_allclose(ours, top, rtol=2e-3)
    torch.manual_seed(0)
    their_trace = np.mean(theirs.trace(maxIter=200, tol=0.0))
    mean, se = L.trace(L.hessian(net, (x, y)), samples=200)
    assert abs(their_trace - mean) < 4 * se  # two unbiased estimates of the same trace
    net.zero_grad(set_to_none=True)


def test_bad_input_is_explained(small):
    net, data, _ = small
    H = L.hessian(net, data)
    with pytest.raises(ValueError, match="flat vector of 526 entries"):
        H(torch.zeros(5))
    with pytest.raises(ValueError, match="k must be between 1 and 525"):
        L.eigenvalues(H, k=0)
    with pytest.raises(ValueError, match="center has entries the model does not"):
        L.hessian(net, data, center={"nope": torch.zeros(1)})
    with pytest.raises(ValueError, match="mode must be one of"):
        L.hessian(net, data, mode="sideways")
    with pytest.raises(ValueError, match="an .inputs, targets. pair"):
        L.hessian(net, data[0])


def test_a_centre_moves_the_point(small):
    net, data, dense = small
    moved = {n: p.detach() * 1.0 for n, p in net.named_parameters()}
    torch.testing.assert_close(L.hessian(net, data, center=moved).dense(), dense, atol=1e-5, rtol=1e-4)
    moved["fc.weight"] = moved["fc.weight"] * 2
    assert not torch.allclose(L.hessian(net, data, center=moved).dense(), dense, atol=1e-3)


def test_the_ratio_map_of_a_quadratic_is_its_constant_ratio(quadratic):
    H, a = quadratic
    model, data = H.model, (H.x, H.y)
    directions = [{"p": torch.eye(8, dtype=torch.float64)[0]}, {"p": torch.eye(8, dtype=torch.float64)[1]}]
    m = L.eigen_ratio_map(model, data, directions, [-1.0, 0.0, 1.0], [-0.5, 0.5], loss_fn=H.loss_fn,
                          steps=8, progress=False)
    assert m.ratio.shape == (2, 3)
    np.testing.assert_allclose(m.ratio, 1.5 / 9, rtol=1e-6)
    np.testing.assert_allclose(m.max, 9.0, rtol=1e-6)


def test_the_ratio_map_moves_along_the_plane(small):
    net, data, dense = small
    dirs = [L.random_direction(net, "filter", "zero", seed) for seed in (0, 1)]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    m = L.eigen_ratio_map(net, data, dirs, [0.0, 0.5], [0.0], steps=60, progress=False)
    exact = np.linalg.eigvalsh(dense.double().numpy())
    assert m.max[0, 0] == pytest.approx(exact[-1], rel=1e-4) and m.min[0, 0] == pytest.approx(exact[0], rel=1e-3)
    assert m.max[0, 1] != pytest.approx(m.max[0, 0], rel=1e-2)  # another point, another Hessian
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # the network is not moved
