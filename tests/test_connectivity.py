"""Mode connectivity: paths, the barrier, curves, (Auto)NEB and weight matching."""
import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
from scipy.optimize import root

import cnnlib
from cnnlib import connectivity as C
from cnnlib import landscape, models


def convnet(width=4, seed=0, bn=True):
    torch.manual_seed(seed)
    norm = (lambda c: [nn.BatchNorm2d(c)]) if bn else (lambda c: [])
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1, bias=not bn), *norm(width), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1, stride=2, bias=not bn), *norm(2 * width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, 10))


def randomize_bn(net):
    """Non-trivial BatchNorm parameters and statistics, so that a permutation error shows."""
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.normal_(m.weight)
            nn.init.normal_(m.bias)
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def load(net, point):
    out = copy.deepcopy(net)
    out.load_state_dict(point, strict=False)
    return out.eval()


@pytest.fixture(scope="module")
def digits():
    return cnnlib.load("digits", device="cpu")


@pytest.fixture(scope="module")
def two_minima(digits):
    """Two small BatchNorm networks trained from different seeds: two distinct minima."""
    nets = []
    for seed in (1, 2):
        net = convnet(4, seed)
        cnnlib.fit(net, digits, epochs=8, lr=0.1, batch_size=64, seed=seed, augment_data=False,
                   progress=False)
        nets.append(net.eval())
    return nets


# ------------------------------------------------------------------------------------------
# Paths
# ------------------------------------------------------------------------------------------


def _points(seed):
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(3, 4, generator=g), "b": torch.randn(3, generator=g)}


def test_bezier_ends_are_the_two_models_and_the_middle_follows_the_formula():
    a, b, c = _points(0), _points(1), _points(2)
    curve = C.bezier(a, b, c)
    for k in a:
        assert torch.equal(curve.point(0.0)[k], a[k])
        assert torch.equal(curve.point(1.0)[k], b[k])
        t = 0.3
        expected = (1 - t) ** 2 * a[k] + 2 * t * (1 - t) * c[k] + t ** 2 * b[k]
        torch.testing.assert_close(curve.point(t)[k], expected)
    np.testing.assert_allclose(C.bezier_coefficients([0, 0.5, 1]),
                               [[1, 0, 0], [0.25, 0.5, 0.25], [0, 0, 1]])


def test_bezier_ends_equal_the_models_as_networks():
    net_a, net_b, net_c = convnet(seed=0), convnet(seed=1), convnet(seed=2)
    curve = C.bezier(net_a, net_b, net_c)
    for k, v in landscape.weights(net_a, buffers=True).items():
        assert torch.equal(curve.point(0)[k], v)
    for k, v in landscape.weights(net_b, buffers=True).items():
        assert torch.equal(curve.point(1)[k], v)


@pytest.mark.parametrize("make", [
    lambda a, b, c: C.line(a, b),
    lambda a, b, c: C.bezier(a, b, c),
    lambda a, b, c: C.polychain(a, b, c),
    lambda a, b, c: C.chain([a, c, b, a], knots=[0, 0.2, 0.7, 1]),
])
def test_basis_reproduces_every_point(make):
    a, b, c = _points(0), _points(1), _points(2)
    path = make(a, b, c)
    ts = np.linspace(0, 1, 13)
    center, dirs, coords = path.basis(ts)
    np.testing.assert_allclose(path.coefficients(ts).sum(1), 1.0, atol=1e-12)
    for t, row in zip(ts, coords):
        got = landscape.combine(center, dirs, row)
        for k in a:
            torch.testing.assert_close(got[k], path.point(t)[k])


def test_interpolate_is_the_point_on_the_line():
    a, b = _points(0), _points(1)
    torch.testing.assert_close(C.interpolate(a, b, 0.25)["w"], 0.75 * a["w"] + 0.25 * b["w"])


def test_polychain_and_chain_pass_through_their_points():
    a, b, c = _points(0), _points(1), _points(2)
    torch.testing.assert_close(C.polychain(a, b, c).point(0.5)["w"], c["w"])
    ch = C.chain([a, c, b], knots=[0, 0.25, 1])
    torch.testing.assert_close(ch.point(0.25)["w"], c["w"])
    torch.testing.assert_close(ch.point(0.625)["w"], (c["w"] + b["w"]) / 2)
    knots = C.arc_length_knots([a, c, b])
    assert knots[0] == 0 and knots[-1] == 1 and 0 < knots[1] < 1


def test_invalid_paths_are_refused():
    a, b = _points(0), _points(1)
    with pytest.raises(ValueError, match="kind"):
        C.Path("spline", [a, b])
    with pytest.raises(ValueError, match="3 control points"):
        C.Path("bezier", [a, b])
    with pytest.raises(ValueError, match="same names"):
        C.line(a, {"w": a["w"]})
    with pytest.raises(ValueError, match="knots"):
        C.chain([a, b, a], knots=[0, 0.8, 0.5])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        C.line(a, b).point(1.5)


# ------------------------------------------------------------------------------------------
# The barrier
# ------------------------------------------------------------------------------------------


def test_barrier_is_the_rise_above_the_line_between_the_ends():
    assert C.barrier([1.0, 3.0, 2.0]) == pytest.approx(1.5)        # 3 − (1 + 2)/2
    assert C.barrier([0.0, 1.0, 4.0], t=[0, 0.25, 1]) == pytest.approx(0.0)  # on the line
    assert C.barrier([2.0, 1.0, 0.5, 2.0]) == 0.0                   # a valley: no barrier
    assert C.barrier([0.1, 0.9, 0.1]) == pytest.approx(0.8)
    # positions need not start at 0: they are rescaled to [0, 1]
    assert C.barrier([1.0, 3.0, 2.0], t=[2, 3, 4]) == pytest.approx(1.5)


def test_barrier_refuses_bad_input():
    with pytest.raises(ValueError, match="two or more"):
        C.barrier([1.0])
    with pytest.raises(ValueError, match="increase"):
        C.barrier([1.0, 2.0, 3.0], t=[0, 0.5, 0.5])
    with pytest.raises(ValueError, match="non-finite"):
        C.barrier([1.0, np.nan, 3.0])
    with pytest.raises(ValueError, match="positions"):
        C.barrier([1.0, 2.0], t=[0, 0.5, 1])


# ------------------------------------------------------------------------------------------
# Evaluating paths
# ------------------------------------------------------------------------------------------


def test_line_profile_ends_equal_the_networks(two_minima, digits):
    a, b = two_minima
    prof = C.evaluate_path(a, C.line(a, b), digits, 5, bn="keep")
    for net, i in ((a, 0), (b, -1)):
        for split in ("train", "test"):
            ref = cnnlib.evaluate(net, digits, split)
            assert prof.values("loss", split)[i] == pytest.approx(ref["loss"], rel=1e-4)
            assert prof.values("error", split)[i] == pytest.approx(1 - ref["acc"], abs=1e-9)


def test_vmap_evaluates_many_points_at_once_with_the_same_numbers(two_minima, digits):
    a, b = two_minima
    data = digits.subset(train=200, test=100)
    for bn in ("keep", "recompute"):
        loop = C.evaluate_path(a, C.line(a, b), data, 4, bn=bn, strategy="loop")
        vmap = C.evaluate_path(a, C.line(a, b), data, 4, bn=bn, strategy="vmap")
        np.testing.assert_allclose(loop.train_loss, vmap.train_loss, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(loop.test_error, vmap.test_error, atol=1e-9)


def test_recomputing_batchnorm_statistics_matters_between_two_networks(two_minima, digits):
    a, b = two_minima
    keep = C.evaluate_path(a, C.line(a, b), digits, 5, bn="keep", splits=("train",))
    fresh = C.evaluate_path(a, C.line(a, b), digits, 5, bn="recompute", splits=("train",))
    assert np.all(np.isnan(keep.test_loss)) and np.all(np.isfinite(keep.train_loss))
    # at the ends the stored statistics are (nearly) the recomputed ones; in the middle the
    # interpolated statistics describe no network, and the loss there is worse
    assert fresh.train_loss[0] == pytest.approx(keep.train_loss[0], rel=0.2)
    assert keep.train_loss[2] > fresh.train_loss[2]


def test_a_trained_curve_has_a_lower_barrier_than_the_line(two_minima, digits):
    a, b = two_minima
    line = C.evaluate_path(a, C.line(a, b), digits, 9, splits=("train",))
    assert line.barrier("loss") > 0.3, "the two minima should be separated by a barrier"
    curve = C.train_curve(a, a, b, digits, epochs=8, lr=0.1, batch_size=64, augment_data=False,
                          progress=False)
    for k, v in landscape.weights(a, buffers=True).items():  # the ends stay where they were
        assert torch.equal(curve.points[0][k], v)
    for k, v in landscape.weights(b, buffers=True).items():
        assert torch.equal(curve.points[-1][k], v)
    assert len(curve.meta["history"]) == 8
    bent = C.evaluate_path(a, curve, digits, 9, splits=("train",))
    assert bent.barrier("loss") < 0.5 * line.barrier("loss")
    again = C.train_curve(a, a, b, digits, epochs=8, lr=0.1, batch_size=64, augment_data=False,
                          progress=False)  # from the cache: the same bend
    assert all(torch.equal(again.points[1][k], curve.points[1][k]) for k in curve.points[1])


def test_curve_and_neb_take_an_x_y_pair_like_an_imagedata(two_minima, digits):
    a, b = two_minima
    pair = (digits.x_train, digits.y_train)
    opts = dict(epochs=1, lr=0.1, batch_size=64, seed=3, cache=False)
    from_pair = C.train_curve(a, a, b, pair, **opts)  # a pair is used as it is
    from_data = C.train_curve(a, a, b, digits, augment_data=False, **opts)
    for k, v in from_data.points[1].items():
        torch.testing.assert_close(from_pair.points[1][k], v)
    with pytest.raises(ValueError, match="augment_data=True needs an ImageData"):
        C.train_curve(a, a, b, pair, augment_data=True, **opts)
    neb = dict(pivots=1, cycles=1, steps=3, eval_size=64, interpolate=2, cache=False)
    chain = C.neb_path(a, a, b, pair, **neb)
    same = C.neb_path(a, a, b, digits, **neb)
    assert len(chain.points) == len(same.points)
    for p, q in zip(chain.points, same.points):
        for k in q:
            torch.testing.assert_close(p[k], q[k])


def test_a_path_needs_two_positions(two_minima, digits):
    a, b = two_minima
    for t in (0, 1):
        with pytest.raises(ValueError, match="2 or more evenly spaced positions"):
            C.evaluate_path(a, C.line(a, b), digits, t)
    with pytest.raises(ValueError, match="t must be a number of positions"):
        C.evaluate_path(a, C.line(a, b), digits, [])


def test_the_profile_legends_leave_the_curves_alone(two_minima, digits):
    import matplotlib.pyplot as plt

    a, b = two_minima
    prof = C.evaluate_path(a, C.line(a, b), digits.subset(train=100, test=100), 5)
    fig = C.plot_profiles({"line": prof, "again": prof})
    fig.canvas.draw()
    for ax in fig.axes:
        legend, box = ax.get_legend().get_window_extent(), ax.get_window_extent()
        assert legend.y1 <= box.y0  # below the axes, where no peak can hide behind it
    plt.close(fig)


def test_train_curve_refuses_a_line(two_minima, digits):
    a, b = two_minima
    with pytest.raises(ValueError, match="trainable curve"):
        C.train_curve(a, a, b, digits, kind="line")


def test_snapshot_matches_the_profile(two_minima, digits):
    a, b = two_minima
    path = C.line(a, b)
    prof = C.evaluate_path(a, path, digits, [0.5], splits=("test",))
    snap = C.snapshot(a, path, 0.5, digits, examples=5)
    assert snap.loss == pytest.approx(prof.test_loss[0], rel=1e-4)
    assert snap.acc == pytest.approx(1 - prof.test_error[0], abs=1e-9)
    assert snap.images.shape == (5, 1, 8, 8) and snap.predicted.shape == (5,)
    assert torch.all((snap.confidence > 0) & (snap.confidence <= 1))
    fig = C.plot_snapshot(snap, title="line")
    assert len(fig.axes) == 5
    fig = C.plot_snapshot(snap, digits.classes, title="line", profile=prof)
    assert len(fig.axes) == 6
    with pytest.raises(ValueError, match="t must be"):
        C.snapshot(a, path, 1.2, digits)


def test_curves_lie_in_the_plane_of_their_three_points(two_minima, digits):
    a, b = two_minima
    bend = convnet(4, seed=7)
    pa, pb, pc = (C.parameters(m, a) for m in (a, b, bend))
    plane = landscape.plane(pa, pb, pc)
    xy, dist = C.path_in_plane(C.bezier(pa, pb, pc), plane, 7)
    scale = landscape.norm({k: pb[k] - pa[k] for k in pa})
    assert np.all(dist < 1e-4 * scale)
    np.testing.assert_allclose(xy[0], plane.anchors[0], atol=1e-4 * scale)
    np.testing.assert_allclose(xy[-1], plane.anchors[1], atol=1e-4 * scale)
    surf = C.plane_surface(a, plane, digits.subset(train=100), resolution=3, bn="recompute")
    assert surf.loss.shape == (3, 3) and np.all(np.isfinite(surf.loss))
    assert surf.alphas[0] < plane.anchors[:, 0].min() and surf.alphas[-1] > plane.anchors[:, 0].max()


# ------------------------------------------------------------------------------------------
# Nudged elastic band
# ------------------------------------------------------------------------------------------

MB = C.energy_and_grad(C.muller_brown)


def _stationary(xy):
    sol = root(lambda p: MB(torch.tensor(p, dtype=torch.float64)[None])[1][0].numpy(), xy)
    assert sol.success
    return sol.x, float(C.muller_brown(torch.tensor(sol.x)))


def test_muller_brown_constants_are_its_stationary_points():
    for x, y, e in C.MULLER_BROWN_MINIMA + C.MULLER_BROWN_SADDLES:
        xy, energy = _stationary([x, y])
        np.testing.assert_allclose(xy, [x, y], atol=2e-3)
        assert energy == pytest.approx(e, abs=2e-3)


def _ends():
    a, b = C.MULLER_BROWN_MINIMA[0], C.MULLER_BROWN_MINIMA[1]
    return torch.tensor(a[:2], dtype=torch.float64), torch.tensor(b[:2], dtype=torch.float64)


def test_autoneb_finds_the_saddle_of_the_muller_brown_potential():
    start, end = _ends()
    line = C.muller_brown(torch.stack([(1 - s) * start + s * end for s in torch.linspace(0, 1, 101)]))
    saddle_xy, saddle_e = _stationary(C.MULLER_BROWN_SADDLES[0][:2])  # -40.665
    assert float(line.max()) > saddle_e + 40  # the straight line climbs well above it
    res = C.auto_neb(start, end, MB, pivots=3, cycles=6, steps=100, lr=1e-4, insert=2,
                     insert_threshold=0.02, max_step=0.02)
    assert res.points.shape[0] > 5, "AutoNEB should have inserted pivots"
    assert res.saddle_energy == pytest.approx(saddle_e, abs=0.5)
    np.testing.assert_allclose(res.saddle_point.numpy(), saddle_xy, atol=0.05)
    # the path dips into the third minimum and crosses the lower saddle on its way
    e = res.profile
    minima = e[1:-1][(e[1:-1] < e[:-2]) & (e[1:-1] < e[2:])]
    maxima = e[1:-1][(e[1:-1] > e[:-2]) & (e[1:-1] > e[2:])]
    assert np.min(np.abs(minima - C.MULLER_BROWN_MINIMA[2][2])) < 1.0
    assert np.min(np.abs(maxima - C.MULLER_BROWN_SADDLES[1][2])) < 1.0
    assert res.t[0] == 0 and res.t[-1] == 1 and np.all(np.diff(res.t) > 0)


def test_climbing_image_lands_on_the_saddle():
    start, end = _ends()
    saddle_xy, saddle_e = _stationary(C.MULLER_BROWN_SADDLES[0][:2])
    res = C.auto_neb(start, end, MB, pivots=3, cycles=6, steps=50, lr=1e-4, insert=2,
                     insert_threshold=0.05, max_step=0.02, climb=True)
    assert res.saddle_energy == pytest.approx(saddle_e, abs=0.01)
    np.testing.assert_allclose(res.saddle_point.numpy(), saddle_xy, atol=0.01)


def test_neb_force_is_perpendicular_to_the_path_plus_the_spring():
    g = torch.Generator().manual_seed(0)
    points = torch.randn(5, 3, generator=g, dtype=torch.float64)
    grads = torch.randn(5, 3, generator=g, dtype=torch.float64)
    energies = torch.tensor([0.0, 1.0, 3.0, 2.0, 0.5], dtype=torch.float64)
    tau = C.tangents(points, energies)
    torch.testing.assert_close(tau.norm(dim=1), torch.ones(3, dtype=torch.float64))
    free = C.neb_force(points, grads, tau)
    torch.testing.assert_close((free * tau).sum(1), torch.zeros(3, dtype=torch.float64))
    sprung = C.neb_force(points, grads, tau, spring=2.0)
    seg = (points[1:] - points[:-1]).norm(dim=1)
    torch.testing.assert_close((sprung * tau).sum(1), 2.0 * (seg[1:] - seg[:-1]))
    climb = C.neb_force(points, grads, tau, climb=2)  # pivot 2 climbs: −∇E with its
    along = (grads[2] * tau[1]).sum()                  # component along the path reversed
    torch.testing.assert_close(climb[1], -grads[2] + 2 * along * tau[1])
    with pytest.raises(ValueError, match="interior"):
        C.neb_force(points, grads, tau, climb=0)


def test_tangent_points_to_the_higher_neighbour():
    points = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    up = C.tangents(points, torch.tensor([0.0, 1.0, 2.0]))        # energy rises: forward
    torch.testing.assert_close(up[0], torch.tensor([0.0, 1.0]))
    down = C.tangents(points, torch.tensor([2.0, 1.0, 0.0]))      # energy falls: backward
    torch.testing.assert_close(down[0], torch.tensor([1.0, 0.0]))


def test_respace_spaces_pivots_evenly_along_the_polygon():
    points = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.2, 0.0], [1.0, 0.0], [1.0, 1.0]])
    out = C.respace(points)
    seg = (out[1:] - out[:-1]).norm(dim=1)
    torch.testing.assert_close(seg, torch.full((4,), 0.5))
    assert torch.equal(out[0], points[0]) and torch.equal(out[-1], points[-1])
    kept = C.respace(points, fixed=2)
    assert torch.equal(kept[2], points[2])


@pytest.mark.parametrize("make", [lambda: convnet(4, seed=3),
                                  lambda: models.create("resnet_cifar", depth=8, width=4, in_channels=1)])
def test_network_energy_is_the_same_one_pivot_at_a_time_and_batched(make, digits):
    net = make()
    flat = C._Flat(net)
    center = flat.vector(landscape.weights(net))
    g = torch.Generator().manual_seed(0)
    points = center + 0.05 * torch.randn(5, center.numel(), generator=g)
    out = {}
    for strategy in ("loop", "vmap"):
        energy_grad, energy, _ = C.network_energy(net, digits, batch_size=32, eval_size=64, seed=1,
                                                  strategy=strategy, chunk=2)
        out[strategy] = (*energy_grad(points), energy(points))
    for loop, vmap in zip(out["loop"], out["vmap"]):
        torch.testing.assert_close(vmap, loop, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="strategy"):
        C.network_energy(net, digits, strategy="parallel")


def test_neb_path_between_networks(two_minima, digits):
    a, b = two_minima
    path = C.neb_path(a, a, b, digits, pivots=2, cycles=2, steps=10, lr=0.05, eval_size=128,
                      interpolate=3)
    assert path.kind == "chain" and len(path.points) >= 4
    for k, v in landscape.weights(a, buffers=True).items():
        assert torch.equal(path.points[0][k], v)
    assert path.knots[0] == 0 and path.knots[-1] == 1
    prof = C.evaluate_path(a, path, digits.subset(train=300, test=100), 5)
    assert np.all(np.isfinite(prof.train_loss))
    assert "saddle_energy" in path.meta and len(path.meta["energies"]) == len(path.points)


def test_neb_path_loads_from_the_cache_the_second_time(two_minima, digits, tmp_path, monkeypatch):
    import warnings
    monkeypatch.setenv("CNNLIB_CACHE", str(tmp_path))
    calls = []
    real = C.auto_neb
    monkeypatch.setattr(C, "auto_neb", lambda *args, **kw: calls.append(1) or real(*args, **kw))
    a, b = two_minima
    opts = dict(pivots=1, cycles=2, steps=3, eval_size=64, interpolate=2)
    first = C.neb_path(a, a, b, digits, **opts)
    assert len(calls) == 1 and len(list(tmp_path.glob("neb-*.pt"))) == 1
    entry = torch.load(next(tmp_path.glob("neb-*.pt")), weights_only=True)   # what the cache reads
    assert set(entry["value"]) == {"points", "energies", "saddle_energy", "history"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # an unreadable entry warns "ignoring ... recomputing"
        again = C.neb_path(a, a, b, digits, **opts)
    assert len(calls) == 1                                  # loaded, not recomputed
    assert np.array_equal(again.knots, first.knots) and len(again.points) == len(first.points)
    for p, q in zip(again.points, first.points):
        assert all(torch.equal(p[k], q[k]) for k in q)
    np.testing.assert_array_equal(again.meta["energies"], first.meta["energies"])
    assert isinstance(again.meta["energies"], np.ndarray) and again.meta["energies"].dtype == np.float64
    assert again.meta["saddle_energy"] == first.meta["saddle_energy"]
    assert again.meta["history"] == first.meta["history"]


# ------------------------------------------------------------------------------------------
# Weight matching
# ------------------------------------------------------------------------------------------

NETWORKS = {
    "mlp": (lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 24), nn.ReLU(), nn.Linear(24, 16),
                                  nn.ReLU(), nn.Linear(16, 10)), (4, 1, 8, 8)),
    "cnn-flatten": (lambda: nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                                          nn.MaxPool2d(2), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
                                          nn.Flatten(), nn.Linear(8 * 16, 10)), (4, 1, 8, 8)),
    "vgg11-small-bn": (lambda: models.create("vgg11", num_classes=10, in_channels=3, small=True,
                                             batch_norm=True), (2, 3, 32, 32)),
    "resnet8-A": (lambda: models.create("resnet_cifar", depth=8, width=4, in_channels=3), (2, 3, 16, 16)),
    "resnet14-B": (lambda: models.create("resnet_cifar", depth=14, width=4, in_channels=3, shortcut="B"),
                   (2, 3, 16, 16)),
    "plain20": (lambda: models.create("plain20", width=4, in_channels=3), (2, 3, 16, 16)),
    "preact8": (lambda: models.create("preact_resnet_cifar", depth=8, width=4), (2, 3, 16, 16)),
}


@pytest.mark.parametrize("name", list(NETWORKS))
def test_permuted_network_computes_the_same_function_and_matching_undoes_it(name):
    make, shape = NETWORKS[name]
    torch.manual_seed(0)
    net = randomize_bn(make())
    x = torch.randn(*shape)
    spec = C.permutation_spec(net, x[:2])
    pa = landscape.weights(net, buffers=True)
    perms = C.random_permutation(spec, seed=1)
    pb = C.permute(pa, spec, perms)
    assert sum(not torch.equal(pa[k], pb[k]) for k in pa) >= len(pa) // 2, "the permutation moved little"
    with torch.no_grad():
        torch.testing.assert_close(load(net, pb)(x), net(x), atol=1e-5, rtol=1e-5)
    found = C.weight_matching(pa, pb, spec)
    back = C.permute(pb, spec, found)
    assert all(torch.equal(back[k], pa[k]) for k in pa), "weight matching did not recover the permutation"
    for g in spec.groups:  # found is the inverse of the random permutation
        assert torch.equal(perms[g.name][found[g.name]], torch.arange(g.size))


def test_residual_streams_share_one_permutation():
    net = models.create("resnet_cifar", depth=8, width=4, in_channels=3)
    spec = C.permutation_spec(net, torch.randn(2, 3, 16, 16))
    assert {g.name: g.size for g in spec.groups} == {
        "stem.0": 4, "blocks.0.residual.0": 4,            # stage 1: the stream, the inner layer
        "blocks.1.residual.0": 8, "blocks.1.residual.3": 4,  # stage 2: inner, new (padded) channels
        "blocks.2.residual.0": 16, "blocks.2.residual.3": 8}
    stream = spec["stem.0"]
    # the stream of stage 1 runs through every block: it is padded by 2 channels on each side
    # into stage 2 and by 4 more into stage 3, where it reaches the classifier at inputs 6..9
    for key in [("stem.0.weight", 0), ("blocks.0.residual.3.weight", 0), ("blocks.0.residual.0.weight", 1),
                ("blocks.1.residual.4.weight", 0), ("blocks.2.residual.0.weight", 1)]:
        assert key in stream.slots
    assert stream.slots[("head.2.weight", 1)].reshape(-1).tolist() == [6, 7, 8, 9]
    assert stream.slots[("blocks.1.residual.3.weight", 0)].reshape(-1).tolist() == [2, 3, 4, 5]
    assert ("head.2.weight", 0) not in stream.slots  # the output classes stay where they are


def test_flattened_channels_move_as_blocks():
    net = NETWORKS["cnn-flatten"][0]()
    spec = C.permutation_spec(net, torch.randn(2, 1, 8, 8))
    pos = spec["4"].slots[("7.weight", 1)]
    assert pos.shape == (8, 16) and pos[1].tolist() == list(range(16, 32))


@pytest.mark.parametrize("net, what", [
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.GroupNorm(2, 4), nn.Flatten(), nn.Linear(144, 2)), "GroupNorm"),
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3, groups=2), nn.Flatten(), nn.Linear(64, 2)),
     "grouped convolution"),
])
def test_unknown_operations_are_named(net, what):
    with pytest.raises(ValueError, match=what):
        C.permutation_spec(net, torch.randn(2, 1, 8, 8))


def test_match_units_solves_the_assignment():
    g = torch.Generator().manual_seed(0)
    wa = torch.randn(7, 5, generator=g)
    perm = torch.randperm(7, generator=g)
    wb = wa[perm] + 0.01 * torch.randn(7, 5, generator=g)
    p = C.match_units(wa, wb)
    assert torch.equal(perm[p], torch.arange(7))


def test_weight_matching_shrinks_the_distance_between_independent_networks():
    torch.manual_seed(0)
    a, b = NETWORKS["mlp"][0](), NETWORKS["mlp"][0]()
    spec = C.permutation_spec(a, torch.randn(2, 1, 8, 8))
    pa, pb = landscape.weights(a), landscape.weights(b)
    aligned, _ = C.align(a, pa, pb, torch.randn(2, 1, 8, 8))
    dist = lambda p: landscape.norm({k: p[k] - pa[k] for k in pa})  # noqa: E731
    assert dist(aligned) < dist(pb)
    assert set(aligned) == set(pb)
    with torch.no_grad():
        x = torch.randn(3, 1, 8, 8)
        torch.testing.assert_close(load(b, aligned)(x), b(x), atol=1e-5, rtol=1e-5)


def test_matching_networks_of_different_widths_names_the_difference():
    narrow, wide = convnet(4, 0), convnet(8, 1)
    example = torch.randn(2, 1, 8, 8)
    pa, pb = landscape.weights(narrow, buffers=True), landscape.weights(wide, buffers=True)
    spec = C.permutation_spec(narrow, example)
    with pytest.raises(ValueError, match=r"shapes differ: '0\.weight' is \(4, 1, 3, 3\) in A, "
                                         r"\(8, 1, 3, 3\) in B"):
        C.weight_matching(pa, pb, spec)
    with pytest.raises(ValueError, match=r"model's architecture \(the same widths\); shapes "
                                         r"differ: '0\.weight' is \(4, 1, 3, 3\) in the model, "
                                         r"\(8, 1, 3, 3\) in B"):
        C.align(narrow, pa, pb, example)
    with pytest.raises(ValueError, match="in the model, .* in A"):  # both wide, the model narrow
        C.align(narrow, pb, pb, example)
    fewer = {k: v for k, v in pa.items() if k != "3.weight"}
    with pytest.raises(ValueError, match="names differ: '3.weight' only in A"):
        C.weight_matching(pa, fewer, spec)
